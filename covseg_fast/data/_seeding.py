"""Per-item random generators that depend only on (seed, epoch, index): reproducible for any
number of DataLoader workers and any iteration order."""
from __future__ import annotations

import hashlib

import torch


def item_generator(seed: int, epoch: int, index: int) -> torch.Generator:
    """A CPU ``torch.Generator`` seeded from (seed, epoch, index)."""
    digest = hashlib.sha256(f"{seed}:{epoch}:{index}".encode()).digest()
    g = torch.Generator()
    g.manual_seed(int.from_bytes(digest[:8], "little") & 0x7FFF_FFFF_FFFF_FFFF)
    return g

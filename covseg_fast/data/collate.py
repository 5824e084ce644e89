"""Collate dict items into a batch."""
from __future__ import annotations

from typing import Any, Sequence

import torch

__all__ = ["collate_slices"]


def collate_slices(items: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Stack dict items: tensors → (B, …) tensors, ``orig_size`` → (B, 2) int64, str/int/other → lists.

    Raises:
        ValueError: empty batch, differing keys, or tensors of different shapes (resize first).
    """
    if not items:
        raise ValueError("collate_slices: empty batch")
    keys = list(items[0])
    for it in items[1:]:
        if set(it) != set(keys):
            raise ValueError(f"collate_slices: items have different keys ({sorted(keys)} vs {sorted(it)})")
    batch: dict[str, Any] = {}
    for key in keys:
        values = [it[key] for it in items]
        if isinstance(values[0], torch.Tensor):
            shapes = {tuple(v.shape) for v in values}
            if len(shapes) > 1:
                ids = [it.get("id", "?") for it in items]
                raise ValueError(f"collate_slices: {key!r} tensors differ in shape {sorted(shapes)} "
                                 f"(items {ids}); add a Resize transform")
            batch[key] = torch.stack(values)
        elif key == "orig_size":
            batch[key] = torch.tensor([list(v) for v in values], dtype=torch.int64)
        else:
            batch[key] = list(values)
    return batch

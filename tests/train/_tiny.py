"""A tiny registered model, its criterion and a synthetic dict-yielding slice dataset for trainer tests."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import Dataset

from covseg_fast.models import ModelSpec, register_model

NAME = "tiny_seg_test"


class TinySeg(nn.Module):
    """conv-BN-ReLU-dropout-conv; train mode returns {"out": logits}, eval mode the logits."""

    def __init__(self, width: int = 4, out_channels: int = 1) -> None:
        super().__init__()
        self.body = nn.Sequential(nn.Conv2d(1, width, 3, padding=1), nn.BatchNorm2d(width), nn.ReLU(),
                                  nn.Dropout2d(0.2), nn.Conv2d(width, out_channels, 3, padding=1))

    def forward(self, x):
        logits = self.body(x)
        return {"out": logits} if self.training else logits


def tiny_criterion(pos_weight: float = 1.0):
    def criterion(outputs, batch):
        logits = outputs["out"].float()
        if logits.shape[1] == 1:
            loss = F.binary_cross_entropy_with_logits(logits, batch["mask"], pos_weight=torch.tensor(pos_weight))
        else:
            loss = F.cross_entropy(logits, batch["labels"])
        return loss, {"bce": float(loss.detach())}
    return criterion


register_model(ModelSpec(name=NAME, builder=TinySeg, criterion=tiny_criterion, in_channels=1,
                         input_size=(32, 32), normalization="unit", size_multiple=8,
                         description="trainer test model"))


class BlobDataset(Dataset):
    """``n`` synthetic (1, size, size) slices: a bright disc (the infection) on noise, with mask,
    labels and edge; a random horizontal flip drawn from torch's global RNG (so resume must restore it)."""

    def __init__(self, n: int = 6, size: int = 32, seed: int = 0, flip: bool = True) -> None:
        g = torch.Generator().manual_seed(seed)
        yy, xx = torch.meshgrid(torch.arange(size), torch.arange(size), indexing="ij")
        self.items = []
        for i in range(n):
            cy, cx = torch.randint(size // 4, 3 * size // 4, (2,), generator=g).tolist()
            r = size // 8 + i % 3
            mask = (((yy - cy) ** 2 + (xx - cx) ** 2) <= r * r).float()[None]
            image = (0.2 + 0.6 * mask + 0.1 * torch.rand(1, size, size, generator=g)).clamp(0, 1)
            self.items.append((image, mask))
        self.flip = flip

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i: int) -> dict:
        image, mask = self.items[i]
        if self.flip and torch.rand(()) < 0.5:
            image, mask = image.flip(-1), mask.flip(-1)
        edge = (F.max_pool2d(mask[None], 3, 1, 1) - mask[None])[0]
        return {"image": image, "mask": mask, "labels": mask[0].long(), "edge": edge, "id": str(i)}


def tiny_overrides(**extra) -> dict:
    base = dict(epochs=2, batch_size=2, input_size=32, amp=False, channels_last=False, num_workers=0)
    base.update(extra)
    return base

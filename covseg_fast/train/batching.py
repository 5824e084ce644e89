"""Batches for training: deterministic epoch order, device transfer, multi-scale rescaling.

A batch is the default-collated dict of a slice dataset: ``"image"`` (B, 1, H, W) grey in [0, 1],
``"mask"`` (B, 1, H, W) float, optional ``"labels"`` (B, H, W) int64, ``"edge"`` (B, 1, H, W), ``"id"``.
"""
from __future__ import annotations

from typing import Any, Iterator, Optional, Sequence

import torch
import torch.nn.functional as F
from torch.utils.data import ConcatDataset, DataLoader, Dataset, Sampler, Subset


class EpochSampler(Sampler[int]):
    """Indices of one rank's share of an epoch, reproducible from (seed, epoch) alone.

    Shuffled with ``torch.Generator().manual_seed(seed + epoch)`` (the same permutation on every
    rank), then rank ``r`` takes positions ``r, r + world, ...`` of it. Without ``pad`` the last
    ranks may get one index fewer (validation); with ``pad`` the permutation is wrapped so every rank
    gets the same count (training under DDP, as DistributedSampler does).
    """

    def __init__(self, length: int, seed: int = 0, shuffle: bool = True, rank: int = 0, world_size: int = 1,
                 pad: bool = False) -> None:
        if length < 1:
            raise ValueError("EpochSampler: empty dataset")
        self.length, self.seed, self.shuffle = length, seed, shuffle
        self.rank, self.world_size, self.pad = rank, world_size, pad
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def _indices(self) -> list[int]:
        if self.shuffle:
            g = torch.Generator().manual_seed(self.seed + self.epoch)
            order = torch.randperm(self.length, generator=g).tolist()
        else:
            order = list(range(self.length))
        if self.pad and self.length % self.world_size:
            extra = self.world_size - self.length % self.world_size
            order += (order * (extra // self.length + 1))[:extra]
        return order[self.rank::self.world_size]

    def __iter__(self) -> Iterator[int]:
        return iter(self._indices())

    def __len__(self) -> int:
        return len(self._indices())


def set_dataset_epoch(dataset: Dataset, epoch: int) -> None:
    """Tell a dataset (through Subset/ConcatDataset wrappers) which epoch it serves, so seeded random
    transforms draw new values every epoch and the same ones again on resume."""
    if hasattr(dataset, "set_epoch"):
        dataset.set_epoch(epoch)
    elif isinstance(dataset, Subset):
        set_dataset_epoch(dataset.dataset, epoch)
    elif isinstance(dataset, ConcatDataset):
        for part in dataset.datasets:
            set_dataset_epoch(part, epoch)


def make_loader(dataset: Dataset, batch_size: int, sampler: EpochSampler, epoch: int, num_workers: int = 0,
                pin_memory: bool = False, drop_last: bool = False) -> DataLoader:
    """DataLoader for ``epoch``: the sampler is set to it and the worker base seed comes from a
    generator seeded with (seed, epoch, rank), so random transforms in workers repeat on resume."""
    sampler.set_epoch(epoch)
    set_dataset_epoch(dataset, epoch)
    g = torch.Generator().manual_seed((sampler.seed * 1_000_003 + epoch) * 257 + sampler.rank)
    return DataLoader(dataset, batch_size=batch_size, sampler=sampler, num_workers=num_workers,
                      pin_memory=pin_memory, drop_last=drop_last, generator=g,
                      persistent_workers=False)


def to_device(batch: dict[str, Any], device: torch.device) -> dict[str, Any]:
    """Move every tensor of ``batch`` to ``device`` (non-blocking); other values are kept."""
    return {k: (v.to(device, non_blocking=True) if torch.is_tensor(v) else v) for k, v in batch.items()}


def describe_targets(batch: dict[str, Any]) -> dict[str, Any]:
    """``batch`` plus facts about its targets, computed while they are on the host (there they cost nothing;
    on a GPU each would be a device-to-host sync in every step): ``mask_is_binary`` (every mask value is 0
    or 1: the criterion's hard-target path) and ``labels_range`` ((min, max) of ``labels``). Tensors already
    on a GPU are left undescribed (the criterion then checks on the device)."""
    out = dict(batch)
    mask, labels = batch.get("mask"), batch.get("labels")
    if torch.is_tensor(mask) and mask.device.type == "cpu":
        out["mask_is_binary"] = bool(((mask == 0) | (mask == 1)).all())
    if torch.is_tensor(labels) and labels.device.type == "cpu" and labels.numel():
        out["labels_range"] = (int(labels.min()), int(labels.max()))
    return out


def check_batch(batch: dict[str, Any]) -> None:
    """Raises ValueError naming the problem when ``batch`` lacks image/mask or has wrong shapes."""
    for key in ("image", "mask"):
        if key not in batch:
            raise ValueError(f"training batch has no {key!r} (keys: {sorted(batch)})")
    image, mask = batch["image"], batch["mask"]
    if image.dim() != 4 or image.shape[1] != 1:
        raise ValueError(f"batch['image'] must be (B, 1, H, W) grey, got {tuple(image.shape)}")
    if mask.shape != image.shape:
        raise ValueError(f"batch['mask'] must match image {tuple(image.shape)}, got {tuple(mask.shape)}")


def scaled_size(size: int, rate: float, multiple: int = 32) -> int:
    """Inf-Net's multi-scale size: ``int(round(size·rate / multiple)·multiple)`` (352 → 256, 352, 448)."""
    return int(round(size * rate / multiple) * multiple)


def rescale_batch(batch: dict[str, Any], size: Sequence[int]) -> dict[str, Any]:
    """``batch`` resized to ``size`` (H, W): image, mask and edge bilinear with align_corners=True (the
    mask becomes soft at borders and is not re-binarised, as in Inf-Net), labels nearest."""
    size = (int(size[0]), int(size[1]))
    if tuple(batch["image"].shape[-2:]) == size:
        return batch
    out = dict(batch)
    out.pop("mask_is_binary", None)  # a resized mask is soft at the borders: let the criterion look
    for key in ("image", "mask", "edge"):
        if key in batch and torch.is_tensor(batch[key]):
            out[key] = F.interpolate(batch[key].float(), size=size, mode="bilinear", align_corners=True)
    if "labels" in batch and torch.is_tensor(batch["labels"]):
        lab = batch["labels"][:, None].float()
        out["labels"] = F.interpolate(lab, size=size, mode="nearest")[:, 0].to(batch["labels"].dtype)
    return out


def multiscale_sizes(hw: Sequence[int], scales: Sequence[float], multiple: int) -> list[tuple[int, int]]:
    """The (H, W) of each rate for a batch of size ``hw``; rate 1 keeps the batch as it is (Inf-Net
    rescales only when rate != 1)."""
    return [(int(hw[0]), int(hw[1])) if s == 1 else (scaled_size(hw[0], s, multiple), scaled_size(hw[1], s, multiple))
            for s in scales]


def seed_everything(seed: int, rank: Optional[int] = None) -> None:
    """Seed python, numpy and torch (CPU and every CUDA device) with ``seed`` (+ rank when given)."""
    import random

    import numpy as np

    s = seed + (rank or 0)
    random.seed(s)
    np.random.seed(s % 2**32)
    torch.manual_seed(s)

"""Shared helpers of the model tests (importable as `model_harness`, like `op_harness`): parameter counts,
fused-vs-reference comparison, a real-data loader."""
from __future__ import annotations

import os

import torch


def n_params(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def outputs_and_grads(model: torch.nn.Module, x: torch.Tensor, criterion, batch: dict):
    """Train-mode outputs (flattened), loss, and parameter gradients of one forward/backward."""
    model.train()
    model.zero_grad(set_to_none=True)
    out = model(x)
    loss, _ = criterion(out, batch)
    loss.backward()
    flat = [out["out"], *out["aux"]]
    grads = {n: p.grad.detach().clone() for n, p in model.named_parameters() if p.grad is not None}
    return [t.detach() for t in flat], loss.detach(), grads


def load_real_slices(shared_data: str, count: int = 4, size: int = 64):
    """``count`` COVID-SemiSeg training slices as (grey (B,1,S,S) in [0,1], mask (B,1,S,S) {0,1})."""
    from PIL import Image

    root = os.path.join(shared_data, "covid-semiseg", "train")
    names = sorted(os.listdir(os.path.join(root, "Imgs")), key=lambda n: int(os.path.splitext(n)[0]))[:count]
    greys, masks = [], []
    for name in names:
        stem = os.path.splitext(name)[0]
        img = Image.open(os.path.join(root, "Imgs", name)).convert("L").resize((size, size), Image.BILINEAR)
        gt = Image.open(os.path.join(root, "GT", stem + ".png")).convert("L").resize((size, size), Image.NEAREST)
        greys.append(torch.frombuffer(bytearray(img.tobytes()), dtype=torch.uint8).view(size, size))
        masks.append(torch.frombuffer(bytearray(gt.tobytes()), dtype=torch.uint8).view(size, size))
    grey = torch.stack(greys)[:, None].float() / 255.0
    mask = (torch.stack(masks)[:, None].float() / 255.0 >= 0.5).float()
    return grey, mask

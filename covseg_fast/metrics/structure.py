"""S-measure S_α and MAE on continuous maps (MODELS.md §7.1, §7.4), in torch (any device).

Computed in float64. The centroid is rounded half away from zero (MATLAB ``round``) by default;
``matlab_rounding=False`` rounds half to even like the Python port (py_sod_metrics).
"""
from __future__ import annotations

import math

import torch

__all__ = ["s_measure", "mae"]

EPS = 2.220446049250313e-16  # MATLAB eps


def _check(pred: torch.Tensor, gt: torch.Tensor, name: str) -> tuple[torch.Tensor, torch.Tensor]:
    if pred.dim() != 2 or pred.shape != gt.shape:
        raise ValueError(f"{name}: expected (H, W) map and GT of the same shape, got "
                         f"{tuple(pred.shape)} and {tuple(gt.shape)}")
    return pred.double(), gt.bool()


def _s_object(x: torch.Tensor) -> torch.Tensor:
    mean = x.mean()
    std = x.std(correction=1) if x.numel() > 1 else torch.zeros((), dtype=x.dtype, device=x.device)
    return 2 * mean / (mean * mean + 1 + std + EPS)


def _ssim(p: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
    n = p.numel()
    g = g.double()
    if n == 0:
        # empty quadrant: MATLAB gives NaN·0 weight; the Python port's weight is 0 too
        return torch.zeros((), dtype=torch.float64, device=p.device)
    x, y = p.mean(), g.mean()
    dx, dy = p - x, g - y
    sx = (dx * dx).sum() / (n - 1 + EPS)
    sy = (dy * dy).sum() / (n - 1 + EPS)
    sxy = (dx * dy).sum() / (n - 1 + EPS)
    a = 4 * x * y * sxy
    b = (x * x + y * y) * (sx + sy)
    one = torch.ones((), dtype=torch.float64, device=p.device)
    return torch.where(a != 0, a / (b + EPS), torch.where(b == 0, one, 0 * one))


def _round(v: float, matlab: bool) -> int:
    if matlab:
        return int(math.floor(abs(v) + 0.5)) * (1 if v >= 0 else -1)
    return int(round(v))  # Python/numpy: half to even


def s_measure(pred: torch.Tensor, gt: torch.Tensor, alpha: float = 0.5, matlab_rounding: bool = True) -> torch.Tensor:
    """Structure measure S_α of a continuous map against a binary GT.

    Args:
        pred: (H, W) float in [0, 1] (the normalised map).
        gt: (H, W) bool.
        alpha: weight of the object part (0.5 in the toolbox).
        matlab_rounding: centroid rounded half away from zero (MATLAB) or half to even (numpy).
    Returns:
        float64 scalar tensor.
    Raises:
        ValueError: shapes differ or are not 2-D.
    """
    p, g = _check(pred, gt, "s_measure")
    y = g.double().mean()
    if y == 0:
        return 1 - p.mean()
    if y == 1:
        return p.mean()
    s_obj = y * _s_object(p[g]) + (1 - y) * _s_object((1 - p)[~g])
    h, w = g.shape
    ys, xs = torch.nonzero(g, as_tuple=True)
    cy = _round(ys.double().mean().item(), matlab_rounding) + 1
    cx = _round(xs.double().mean().item(), matlab_rounding) + 1
    area = h * w
    w_lt = cx * cy / area
    w_rt = cy * (w - cx) / area
    w_lb = (h - cy) * cx / area
    w_rb = 1 - w_lt - w_rt - w_lb
    s_reg = (w_lt * _ssim(p[:cy, :cx], g[:cy, :cx]) + w_rt * _ssim(p[:cy, cx:], g[:cy, cx:])
             + w_lb * _ssim(p[cy:, :cx], g[cy:, :cx]) + w_rb * _ssim(p[cy:, cx:], g[cy:, cx:]))
    return torch.clamp(alpha * s_obj + (1 - alpha) * s_reg, min=0)


def mae(pred: torch.Tensor, gt: torch.Tensor) -> torch.Tensor:
    """Mean absolute error mean(|G − P|) of one (H, W) map; float64 scalar tensor."""
    p, g = _check(pred, gt, "mae")
    return (g.double() - p).abs().mean()

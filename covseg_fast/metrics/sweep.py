"""The 256-threshold sweep of the Inf-Net toolbox (MODELS.md §7.2–7.3), vectorised.

Thresholds T ∈ {1, 254/255, …, 0} (descending, index j ↔ T = (255 − j)/255); a pixel is
foreground when P ≥ T. Per image, 256-bin histograms of the fg / bg GT pixels with bin index
k(v) = floor(255·v + 1e-9) and reverse cumulative sums give TP(T), FP(T) for all thresholds at
once (so v ≥ t/255 ⇔ k ≥ t). Runs on any device (``torch.bincount``).
"""
from __future__ import annotations

import torch

__all__ = ["NUM_THRESHOLDS", "thresholds", "sweep_counts", "sweep_scores", "emeasure_from_counts",
           "adaptive_emeasure", "F_BETA2"]

NUM_THRESHOLDS = 256
EPS = 2.220446049250313e-16  # MATLAB eps
F_BETA2 = 0.3  # β² of the F-measure (salient-object convention, as in the toolbox)


def thresholds(device: torch.device | str | None = None) -> torch.Tensor:
    """(256,) float64 thresholds in descending order 1, 254/255, …, 0."""
    return torch.arange(255, -1, -1, device=device, dtype=torch.float64) / 255.0


def sweep_counts(prob: torch.Tensor, gt: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """TP(T) and NumRec(T) (predicted-foreground count) for the 256 thresholds.

    Args:
        prob: (B, H, W) or (H, W) float in [0, 1].
        gt: same shape, bool.
    Returns:
        ``tp`` (B, 256), ``num_rec`` (B, 256) int64 (descending thresholds), ``n_fg`` (B,), ``n_pix`` (B,).
    Raises:
        ValueError: shape mismatch or values outside [0, 1].
    """
    if prob.shape != gt.shape:
        raise ValueError(f"sweep_counts: map {tuple(prob.shape)} and GT {tuple(gt.shape)} differ")
    if prob.dim() == 2:
        prob, gt = prob[None], gt[None]
    b = prob.shape[0]
    p = prob.reshape(b, -1).double()
    if p.numel() and (p.min() < 0 or p.max() > 1):
        raise ValueError("sweep_counts: map values must lie in [0, 1]")
    g = gt.reshape(b, -1).bool()
    k = torch.floor(255.0 * p + 1e-9).long().clamp_(0, 255)
    # one bincount for all images and both GT classes: bin = k + 256·(2·b + g)
    offset = (torch.arange(b, device=p.device)[:, None] * 2 + g.long()) * 256
    hist = torch.bincount((k + offset).reshape(-1), minlength=b * 512).reshape(b, 2, 256)
    # descending thresholds t = 255..0: count of bins ≥ t = reverse cumsum
    cum = hist.flip(-1).cumsum(-1)
    tp = cum[:, 1]
    num_rec = cum[:, 0] + cum[:, 1]
    n_fg = g.sum(1)
    n_pix = torch.full((b,), g.shape[1], dtype=torch.int64, device=p.device)
    return tp, num_rec, n_fg, n_pix


def emeasure_from_counts(tp: torch.Tensor, num_rec: torch.Tensor, n_fg: torch.Tensor,
                         n_pix: torch.Tensor) -> torch.Tensor:
    """E-measure of binary maps from counts (closed form over the 4 pixel classes, §7.2).

    Shapes broadcast: ``tp``, ``num_rec`` (..., T); ``n_fg``, ``n_pix`` (...,). Returns float64 (..., T).
    """
    tp, num_rec = tp.double(), num_rec.double()
    n_fg = n_fg.double()[..., None]
    n_pix = n_pix.double()[..., None]
    fp = num_rec - tp
    fn = n_fg - tp
    tn = n_pix - num_rec - fn
    mu_f = num_rec / n_pix
    mu_g = n_fg / n_pix

    def phi(a_f: torch.Tensor, a_g: torch.Tensor) -> torch.Tensor:
        xi = 2 * a_f * a_g / (a_f * a_f + a_g * a_g + EPS)
        return (xi + 1) ** 2 / 4

    total = (tp * phi(1 - mu_f, 1 - mu_g) + fp * phi(1 - mu_f, -mu_g)
             + fn * phi(-mu_f, 1 - mu_g) + tn * phi(-mu_f, -mu_g))
    total = torch.where(n_fg == 0, n_pix - num_rec, total)
    total = torch.where(n_fg == n_pix, num_rec, total)
    return total / (n_pix - 1 + EPS)


def sweep_scores(tp: torch.Tensor, num_rec: torch.Tensor, n_fg: torch.Tensor,
                 n_pix: torch.Tensor) -> dict[str, torch.Tensor]:
    """Per-threshold scores with the toolbox's TP = 0 rule (Pre = Rec = Spec = Dice = 0).

    Args: as returned by :func:`sweep_counts`.
    Returns:
        dict of float64 (B, 256): ``precision``, ``recall`` (= ``sensitivity``), ``specificity``,
        ``dice``, ``fmeasure`` (β² = 0.3, 0 where Pre + Rec = 0) and ``emeasure``.
    """
    tpd, nr = tp.double(), num_rec.double()
    nf = n_fg.double()[..., None]
    npx = n_pix.double()[..., None]
    fn = nf - tpd
    fp = nr - tpd
    tn = (npx - nr) - fn
    ok = tp > 0
    zero = torch.zeros_like(tpd)
    pre = torch.where(ok, tpd / nr.clamp_min(1), zero)
    rec = torch.where(ok, tpd / nf.clamp_min(1), zero)
    spe = torch.where(ok, tn / (tn + fp).clamp_min(1), zero)
    dice = torch.where(ok, 2 * tpd / (nf + nr).clamp_min(1), zero)
    fden = F_BETA2 * pre + rec
    fm = torch.where(fden > 0, (1 + F_BETA2) * pre * rec / torch.where(fden > 0, fden, 1.0), zero)
    em = emeasure_from_counts(tp, num_rec, n_fg, n_pix)
    return {"precision": pre, "recall": rec, "sensitivity": rec, "specificity": spe, "dice": dice,
            "fmeasure": fm, "emeasure": em}


def adaptive_emeasure(prob: torch.Tensor, gt: torch.Tensor) -> torch.Tensor:
    """E-measure at the adaptive threshold T = min(2·mean(P), 1) (binarise P ≥ T).

    Args: ``prob`` (H, W) float in [0, 1]; ``gt`` (H, W) bool. Returns a float64 scalar tensor.
    """
    t = torch.clamp(2 * prob.double().mean(), max=1.0)
    fm = prob.double() >= t
    g = gt.bool()
    tp = (fm & g).sum()
    return emeasure_from_counts(tp[None], fm.sum()[None], g.sum(), torch.tensor(g.numel(), device=g.device))[0]

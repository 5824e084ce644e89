"""MSA-UNet losses (MODELS.md §3.4, §5.3, §11 A5): main BCE / CE plus Σ_k KL(CPP_{s_k}(labels) ‖ softmax(aux_k)).

    L = L_main + aux_weight · Σ_{k} KL_k,   KL_k = (1/(B·h_k·w_k)) Σ t·(log t − log q)   (0·log 0 := 0)

The divisor is ``kl_reduction``: "pixel_mean" (B·h_k·w_k, the §11 A5 choice: the four scales weigh alike),
"batchmean" (B, PyTorch's ``kl_div`` reduction: a 128² map then weighs 64× a 16² one) or "sum" (1).

L_main is mean BCE-with-logits over B·H·W (binary, soft targets allowed) or mean cross-entropy
(K classes). The aux terms use the fused ops (``fused=True``) or the unfused composition CPP pooling →
log_softmax → KL (``fused=False``); both give the same value. Fused, the targets of all scales come
either from one ``covseg::class_prob_pool`` call (``targets="pooled"``: every nested scale in one pass
over the labels, by the C++ kernel on CPU and the CUDA kernel on a GPU) followed by the KL of each
scale, or from ``covseg::cpp_kl_loss`` once per scale (``targets="per_scale"``: pooling, log-softmax
and KL in one Triton kernel). ``"auto"`` takes ``pooled`` on CPU (6–8× faster there, forward and
backward at 16×256², one thread: benchmarks/results/cpp_kl_aux_cpu_1thread.json) and ``per_scale`` on a
GPU until benchmarks/bench_cpp_kl_aux.py has run there.
"""
from __future__ import annotations

from typing import Mapping, Optional, Sequence, Union

import torch
import torch.nn.functional as F

from ..ops.class_prob_pool import class_prob_pool
from ..ops.cpp_kl_loss import cpp_kl_loss
from ..ops.reference.class_prob_pool import class_prob_pool as cpp_reference
from ..ops.reference.cpp_kl_loss import cpp_kl_from_probs

KL_REDUCTIONS = ("pixel_mean", "batchmean", "sum")
TARGET_MODES = ("auto", "pooled", "per_scale")


def resolve_targets(targets: str, device: torch.device) -> str:
    """``pooled`` or ``per_scale`` for aux maps on ``device`` (``auto``: pooled on CPU, see the module docstring)."""
    if targets not in TARGET_MODES:
        raise ValueError(f"targets must be one of {TARGET_MODES}, got {targets!r}")
    if targets == "auto":
        return "pooled" if device.type == "cpu" else "per_scale"
    return targets


def _check_reduction(kl_reduction: str, where: str) -> None:
    if kl_reduction not in KL_REDUCTIONS:
        raise ValueError(f"{where}: kl_reduction must be one of {KL_REDUCTIONS}, got {kl_reduction!r}")


def _rescale(term: torch.Tensor, z: torch.Tensor, kl_reduction: str) -> torch.Tensor:
    """A per-pixel-mean term (÷ B·h·w, what the fused op and the composition return) → ``kl_reduction``."""
    b, _, h, w = z.shape
    factor = {"pixel_mean": 1, "batchmean": h * w, "sum": b * h * w}[kl_reduction]
    return term if factor == 1 else term * factor


def _pad_to(x: torch.Tensor, h: int, w: int, value: float = 0) -> torch.Tensor:
    """Pad the last two dims of ``x`` bottom/right up to (h, w) (background / 0); never crops."""
    ph, pw = max(0, h - x.shape[-2]), max(0, w - x.shape[-1])
    if ph == 0 and pw == 0:
        return x
    return F.pad(x, (0, pw, 0, ph), value=value)


def soft_binary_targets(mask: torch.Tensor, scale: int) -> torch.Tensor:
    """CPP of a soft binary mask (B, 1, H, W) in [0, 1]: [1 − avgpool_s(g), avgpool_s(g)] → (B, 2, H/s, W/s)."""
    fg = F.avg_pool2d(mask.float(), kernel_size=scale, stride=scale)
    return torch.cat([1 - fg, fg], dim=1)


def cpp_kl_aux_loss(aux_logits: Sequence[torch.Tensor], labels: Optional[torch.Tensor] = None,
                    mask: Optional[torch.Tensor] = None, scales: Optional[Sequence[int]] = None,
                    ignore_index: Optional[int] = None, fused: bool = True,
                    kl_reduction: str = "pixel_mean", check_labels: bool = True,
                    targets: str = "auto") -> list[torch.Tensor]:
    """One KL term per aux map.

    Args:
        aux_logits: maps (B, K, H/s_k, W/s_k).
        labels: (B, H, W) integer class map (hard targets; fused path when ``fused``).
        mask: (B, 1, H, W) soft binary mask in [0, 1], used when ``labels`` is None (K must be 2;
            unfused composition, since the fused op takes integer labels).
        scales: s_k per map; default 2, 4, 8, ... (one per map). Labels/masks smaller than
            h_k·s_k (padded model input) are padded bottom/right with background.
        ignore_index: label value that counts for no class.
        fused: use ``covseg::cpp_kl_loss``; False runs CPP → log_softmax → KL in plain PyTorch.
        kl_reduction: "pixel_mean" (÷ B·h·w, default), "batchmean" (÷ B) or "sum".
        check_labels: verify once that every label is in [0, K) or ``ignore_index`` (a device sync on a
            GPU); pass False when the caller knows (unchecked invalid labels count for no class). The
            ``pooled`` targets are always checked (by the kernel: free on CPU, one sync on a GPU).
        targets: fused labels' targets from one ``class_prob_pool`` call (``pooled``), the fused KL op per
            scale (``per_scale``) or by device (``auto``, see the module docstring).
    Returns:
        list of 0-dim float32 tensors.
    Raises:
        ValueError: neither labels nor mask, a mask with K ≠ 2, sizes that do not fit, or an unknown kl_reduction.
    """
    _check_reduction(kl_reduction, "cpp_kl_aux_loss")
    scales = list(scales) if scales is not None else [2 ** (i + 1) for i in range(len(aux_logits))]
    if len(scales) != len(aux_logits):
        raise ValueError(f"cpp_kl_aux_loss: {len(aux_logits)} aux maps but {len(scales)} scales")
    if labels is None and mask is None:
        raise ValueError("cpp_kl_aux_loss: give labels (B, H, W) or a binary mask (B, 1, H, W)")
    terms = []
    checked = not check_labels
    pooled = None
    if labels is not None and fused and len({z.shape[1] for z in aux_logits}) == 1 \
            and resolve_targets(targets, aux_logits[0].device) == "pooled":
        h_max = max(z.shape[-2] * s for z, s in zip(aux_logits, scales))
        w_max = max(z.shape[-1] * s for z, s in zip(aux_logits, scales))
        pooled = class_prob_pool(_pad_to(labels, h_max, w_max), aux_logits[0].shape[1], scales, ignore_index)
    for i, (z, s) in enumerate(zip(aux_logits, scales)):
        h, w = z.shape[-2] * s, z.shape[-1] * s
        if labels is not None:
            lab = _pad_to(labels, h, w)
            if pooled is not None:  # scale s of the padded map: its first h×w windows are this map's
                terms.append(cpp_kl_from_probs(z, pooled[i][..., :z.shape[-2], :z.shape[-1]]))
            elif fused:
                terms.append(cpp_kl_loss(z, lab, s, ignore_index, check_labels=not checked))
                checked = True
            else:
                t = cpp_reference(lab[:, :h, :w], z.shape[1], [s], ignore_index)[0]
                terms.append(cpp_kl_from_probs(z, t))
        else:
            if z.shape[1] != 2:
                raise ValueError(f"cpp_kl_aux_loss: a binary mask needs 2-class aux maps, got K = {z.shape[1]}")
            t = soft_binary_targets(_pad_to(mask, h, w)[..., :h, :w], s)
            terms.append(cpp_kl_from_probs(z, t))
        terms[-1] = _rescale(terms[-1], z, kl_reduction)
    return terms


def _is_hard(mask: torch.Tensor) -> bool:
    """Every value 0 or 1 (one device sync on a GPU; batches prepared by the Trainer carry the answer)."""
    return bool(((mask == 0) | (mask == 1)).all())


def _labels_known_valid(batch: Mapping, num_classes: int) -> bool:
    """True when the host-side ``labels_range`` of the batch (train/batching.py) shows labels in [0, K)."""
    lo_hi = batch.get("labels_range")
    return lo_hi is not None and lo_hi[0] >= 0 and lo_hi[1] < num_classes


class MSAUNetLoss:
    """criterion(outputs, batch) -> (loss, parts) for MSA-UNet / U-Net (registry contract).

    Args:
        num_classes: 1 (binary: BCE on ``batch["mask"]``) or K ≥ 2 (CE on ``batch["labels"]``).
        aux_weight: weight of Σ KL_k (1 in the paper).
        scales: CPP scale of each aux map (default 2, 4, 8, 16).
        fused: fused CPP-KL op (hard labels) vs the unfused composition.
        ignore_index: label value excluded from CE and counted for no class in CPP.
        kl_reduction: divisor of each KL_k: "pixel_mean" (B·h_k·w_k, default), "batchmean" (B) or "sum".
        targets: how the fused path builds the hard targets: "auto" (default), "pooled" or "per_scale"
            (see the module docstring).
    ``outputs``: logits tensor or dict with "out" (B, C, H, W) and optional "aux" list. Binary with a
    hard {0,1} mask uses labels = mask (fused path); a soft mask uses the soft CPP composition.
    ``parts``: {"main", "aux", "aux1".., "total"} as detached 0-dim tensors (a float() of each would stop
    a GPU once per part and step: convert when logging).
    Host-side facts of the batch (``train/batching.py`` ``describe_targets``), when present, spare the
    device syncs of checking them here: ``mask_is_binary`` (hard or soft mask) and ``labels_range`` (labels
    in [0, K): no per-batch label check; otherwise the labels are checked on the device).
    """

    def __init__(self, num_classes: int = 1, aux_weight: float = 1.0, scales: Optional[Sequence[int]] = None,
                 fused: bool = True, ignore_index: Optional[int] = None, kl_reduction: str = "pixel_mean",
                 targets: str = "auto"):
        if num_classes < 1:
            raise ValueError(f"MSAUNetLoss: num_classes must be ≥ 1, got {num_classes}")
        _check_reduction(kl_reduction, "MSAUNetLoss")
        resolve_targets(targets, torch.device("cpu"))  # validates the name
        self.targets = targets
        self.kl_reduction = kl_reduction
        self.num_classes, self.aux_weight, self.fused = num_classes, float(aux_weight), fused
        self.scales = list(scales) if scales is not None else None
        self.ignore_index = ignore_index

    def main_loss(self, out: torch.Tensor, batch: Mapping[str, torch.Tensor]) -> torch.Tensor:
        if self.num_classes == 1:
            mask = batch["mask"]
            if mask.shape != out.shape:
                raise ValueError(f"MSAUNetLoss: mask {tuple(mask.shape)} does not match output {tuple(out.shape)}")
            return F.binary_cross_entropy_with_logits(out.float(), mask.float())
        labels = batch["labels"]
        ignore = -100 if self.ignore_index is None else self.ignore_index
        return F.cross_entropy(out.float(), labels.long(), ignore_index=ignore)

    def __call__(self, outputs: Union[torch.Tensor, Mapping], batch: Mapping[str, torch.Tensor]):
        out = outputs if isinstance(outputs, torch.Tensor) else outputs["out"]
        aux = [] if isinstance(outputs, torch.Tensor) else list(outputs.get("aux") or [])
        main = self.main_loss(out, batch)
        parts = {"main": main.detach()}
        total = main
        if aux and self.aux_weight != 0:
            labels, mask = (batch["labels"] if self.num_classes > 1 else None), None
            check = self.num_classes > 1 and not _labels_known_valid(batch, self.num_classes)
            if self.num_classes == 1:  # binary: the aux targets come from the mask (K_aux = 2)
                m = batch["mask"]
                hard = batch.get("mask_is_binary")
                if hard if hard is not None else _is_hard(m):
                    labels = m[:, 0].to(torch.uint8)  # {0, 1}: valid by construction, nothing to check
                else:
                    mask = m
            terms = cpp_kl_aux_loss(aux, labels=labels, mask=mask, scales=self.scales,
                                    ignore_index=self.ignore_index, fused=self.fused,
                                    kl_reduction=self.kl_reduction, check_labels=check, targets=self.targets)
            aux_sum = torch.stack(terms).sum()
            total = total + self.aux_weight * aux_sum
            parts["aux"] = aux_sum.detach()
            parts.update({f"aux{i + 1}": t.detach() for i, t in enumerate(terms)})
        parts["total"] = total.detach()
        return total, parts

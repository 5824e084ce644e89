"""Spec of DANet/PFNet position and channel attention (MODELS.md §2.2–2.3).

Position attention (PAM / PFNet SA), q, k: (B, Cq, N), v: (B, C, N):
    out[b, :, i] = Σ_j softmax_j(scale · q_i·k_j) v[b, :, j]          (scale = 1: unscaled)

Channel attention (CAM / PFNet CA), x: (B, C, N), energy E = X Xᵀ:
    variant "pfnet": A = softmax(E)           variant "danet": A = softmax(rowmax(E) − E) = softmax(−E)
    out = A X                                  with a 1-element γ: out = γ·A X + x (the module's residual)

Energies and softmax run in fp32 (float64 for float64 inputs): they overflow fp16. The ``*_lse``
variants also return the log-sum-exp of the energies, which the fused kernels save for their backward;
the ops use them as their reference backend. Both compute ``out`` the same way (an exported graph keeps
the Softmax node that TensorRT fuses into attention).
"""
from __future__ import annotations

from typing import Optional

import torch

CHANNEL_VARIANTS = ("pfnet", "danet")


def _compute_dtype(dtype: torch.dtype) -> torch.dtype:
    return torch.float64 if dtype == torch.float64 else torch.float32


def position_attention_lse(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                           scale: float = 1.0) -> tuple[torch.Tensor, torch.Tensor]:
    """(B, Cq, N), (B, Cq, N), (B, C, N) → (out (B, C, N) in v's dtype, lse (B, N) fp32/fp64)."""
    energy = _position_energy(q, k, scale)
    return _position_out(energy, v), torch.logsumexp(energy, dim=-1)


def position_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, scale: float = 1.0) -> torch.Tensor:
    """(B, Cq, N), (B, Cq, N), (B, C, N) → (B, C, N); softmax over keys."""
    return _position_out(_position_energy(q, k, scale), v)


def _position_energy(q: torch.Tensor, k: torch.Tensor, scale: float) -> torch.Tensor:
    ct = _compute_dtype(q.dtype)
    return torch.bmm(q.transpose(1, 2).to(ct), k.to(ct)) * scale  # (B, N, N)


def _position_out(energy: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    attn = torch.softmax(energy, dim=-1)
    return torch.bmm(v.to(energy.dtype), attn.transpose(1, 2)).to(v.dtype)


def channel_attention_lse(x: torch.Tensor, variant: str = "pfnet",
                          gamma: Optional[torch.Tensor] = None) -> tuple[torch.Tensor, torch.Tensor]:
    """(B, C, N) → (out (B, C, N) in x's dtype, lse (B, C) of the signed energies)."""
    xf, energy = _channel_energy(x, variant)
    return _channel_out(energy, xf, gamma).to(x.dtype), torch.logsumexp(energy, dim=-1)


def channel_attention(x: torch.Tensor, variant: str = "pfnet", gamma: Optional[torch.Tensor] = None) -> torch.Tensor:
    """(B, C, N) → (B, C, N) = softmax(±X Xᵀ) X, or γ·softmax(±X Xᵀ) X + x with γ (rounded once to x's dtype)."""
    xf, energy = _channel_energy(x, variant)
    return _channel_out(energy, xf, gamma).to(x.dtype)


def _channel_out(energy: torch.Tensor, xf: torch.Tensor, gamma: Optional[torch.Tensor]) -> torch.Tensor:
    out = torch.bmm(torch.softmax(energy, dim=-1), xf)
    return out if gamma is None else gamma.to(out.dtype).reshape(()) * out + xf


def _channel_energy(x: torch.Tensor, variant: str) -> tuple[torch.Tensor, torch.Tensor]:
    if variant not in CHANNEL_VARIANTS:
        raise ValueError(f"channel_attention: variant must be 'pfnet' or 'danet', got {variant!r}")
    xf = x.to(_compute_dtype(x.dtype))
    energy = torch.bmm(xf, xf.transpose(1, 2))  # (B, C, C)
    # danet: softmax(rowmax(E) − E) = softmax(−E), the shift cancels
    return xf, (-energy if variant == "danet" else energy)

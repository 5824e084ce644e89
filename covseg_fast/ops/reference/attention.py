"""Spec of DANet/PFNet position and channel attention (MODELS.md §2.2–2.3).

Position attention (PAM / PFNet SA), q, k: (B, Cq, N), v: (B, C, N):
    out[b, :, i] = Σ_j softmax_j(scale · q_i·k_j) v[b, :, j]          (scale = 1: unscaled)

Channel attention (CAM / PFNet CA), x: (B, C, N), energy E = X Xᵀ (fp32):
    variant "pfnet": A = softmax(E)           variant "danet": A = softmax(rowmax(E) − E) = softmax(−E)
    out = A X
"""
from __future__ import annotations

import torch


def position_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, scale: float = 1.0) -> torch.Tensor:
    """(B, Cq, N), (B, Cq, N), (B, C, N) → (B, C, N); softmax over keys in fp32."""
    energy = torch.bmm(q.transpose(1, 2).float(), k.float()) * scale  # (B, N, N)
    attn = torch.softmax(energy, dim=-1)
    return torch.bmm(v.float(), attn.transpose(1, 2)).to(v.dtype)


def channel_attention(x: torch.Tensor, variant: str = "pfnet") -> torch.Tensor:
    """(B, C, N) → (B, C, N) = softmax(±X Xᵀ) X, energies and softmax in fp32."""
    xf = x.float()
    energy = torch.bmm(xf, xf.transpose(1, 2))  # (B, C, C)
    if variant == "danet":
        energy = energy.amax(dim=-1, keepdim=True) - energy
    elif variant != "pfnet":
        raise ValueError(f"channel_attention: variant must be 'pfnet' or 'danet', got {variant!r}")
    attn = torch.softmax(energy, dim=-1)
    return torch.bmm(attn, xf).to(x.dtype)

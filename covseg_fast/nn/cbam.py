"""CBAM (Woo et al. 2018) as in Jongchan/attention-module (MODELS.md §2.6).

Channel gate: σ(MLP(avgpool x) + MLP(maxpool x)) ⊙ x, MLP = Linear(C→C/r) → ReLU → Linear(C/r→C), biased.
Spatial gate: σ(BN(conv7×7([max_c, mean_c]))) ⊙ x′ with a bias-free conv and BN(1, momentum 0.01).
The fused path (``fused=True``) runs ops.cbam.cbam: the module's own BatchNorm in training, the BatchNorm
folded into the conv in eval.
"""
from __future__ import annotations

import torch
from torch import nn

from ..ops.cbam import cbam as _cbam_fused


class ChannelGate(nn.Module):
    def __init__(self, channels: int, reduction: int = 16):
        super().__init__()
        hidden = max(1, channels // reduction)
        self.mlp = nn.Sequential(nn.Linear(channels, hidden), nn.ReLU(inplace=True), nn.Linear(hidden, channels))

    def gate_logits(self, x: torch.Tensor) -> torch.Tensor:
        """(B, C, H, W) → (B, C) pre-sigmoid channel gate."""
        return self.mlp(x.mean(dim=(2, 3))) + self.mlp(x.amax(dim=(2, 3)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * torch.sigmoid(self.gate_logits(x))[:, :, None, None]


class SpatialGate(nn.Module):
    def __init__(self, kernel_size: int = 7):
        super().__init__()
        self.conv = nn.Conv2d(2, 1, kernel_size, padding=kernel_size // 2, bias=False)
        self.bn = nn.BatchNorm2d(1, eps=1e-5, momentum=0.01)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pooled = torch.cat([x.amax(dim=1, keepdim=True), x.mean(dim=1, keepdim=True)], dim=1)  # [max, mean]
        return x * torch.sigmoid(self.bn(self.conv(pooled)))


class CBAM(nn.Module):
    """Channel gate then spatial gate. (B, C, H, W) → (B, C, H, W).

    Args:
        channels: C.
        reduction: MLP reduction r (hidden = max(1, C // r)).
        spatial_kernel: k of the k×k spatial conv.
        zero_spatial_bn: init the spatial BN weight to 0 (the reference ResNet's init: gate starts at 0.5).
        fused: use the fused op when one serves (False forces the reference composition). In eval the fused
            path folds the spatial BatchNorm's running statistics, γ and β into the 7×7 conv (weight and bias),
            so it runs no BatchNorm; in training it calls the BatchNorm2d module itself.
    """

    def __init__(self, channels: int, reduction: int = 16, spatial_kernel: int = 7,
                 zero_spatial_bn: bool = True, fused: bool = True):
        super().__init__()
        self.channel_gate = ChannelGate(channels, reduction)
        self.spatial_gate = SpatialGate(spatial_kernel)
        self.fused = fused
        self._fold_cache = None  # eval, no grad: the spatial BatchNorm folded into the conv (_folded_conv)
        for m in self.channel_gate.mlp:
            if isinstance(m, nn.Linear):
                nn.init.zeros_(m.bias)
        nn.init.kaiming_normal_(self.spatial_gate.conv.weight, mode="fan_out")
        if zero_spatial_bn:
            nn.init.zeros_(self.spatial_gate.bn.weight)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.fused:
            return self.spatial_gate(self.channel_gate(x))
        fc1, fc2 = self.channel_gate.mlp[0], self.channel_gate.mlp[2]
        sg = self.spatial_gate
        if sg.bn.training or sg.bn.running_mean is None or sg.bn.running_var is None:  # BN uses batch statistics
            # Fused ops for the three passes over x; the MLP, 7×7 conv and this very BatchNorm2d module stay
            # in PyTorch, so batch statistics and running-statistic updates are nn.BatchNorm2d's own.
            return _cbam_fused(x, fc1.weight, fc1.bias, fc2.weight, fc2.bias, sg.conv.weight, sg.bn)
        weight, bias = self._folded_conv()
        return _cbam_fused(x, fc1.weight, fc1.bias, fc2.weight, fc2.bias, weight, None, conv_bias=bias)

    def train(self, mode: bool = True) -> "CBAM":
        self._fold_cache = None  # the folded conv is rebuilt at the next inference call
        return super().train(mode)

    def __getstate__(self):
        # copies (deepcopy, pickle) start without the fold: its key names this module's storages
        state = super().__getstate__()
        return {**state, "_fold_cache": None}

    def _folded_conv(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Eval: BatchNorm folded into the conv, BN(conv(p, w)) = conv(p, w·s) + (β − μ·s), s = γ/√(σ² + ε).

        Computed in fp32, rounded once to the conv weight's dtype. With grad enabled (or under torch.compile)
        the fold is rebuilt on every call, so gradients reach the conv weight, γ and β as through the
        BatchNorm. Without grad (inference) it is cached until ``train()`` is called or any of the conv weight,
        γ, β, running stats or num_batches_tracked changes: in place (version counter; a BatchNorm training
        step bumps num_batches_tracked) or by a new storage, dtype or device (``module.to``, ``.half()``).
        Edits through ``tensor.data`` bypass version counters: call ``train()``/``eval()`` after those.
        """
        conv, bn = self.spatial_gate.conv, self.spatial_gate.bn
        deps = [t for t in (conv.weight, bn.weight, bn.bias, bn.running_mean, bn.running_var,
                            bn.num_batches_tracked) if t is not None]
        cacheable = not torch.is_grad_enabled() and not torch.compiler.is_compiling()
        if cacheable:
            cached = getattr(self, "_fold_cache", None)
            key = [(t._version, t.data_ptr(), t.dtype, t.device) for t in deps] + [bn.eps]
            if cached is not None and cached[0] == key:
                return cached[2], cached[3]
        w = conv.weight
        scale = torch.rsqrt(bn.running_var.float() + bn.eps)
        if bn.weight is not None:
            scale = scale * bn.weight.float()
        bias = -bn.running_mean.float() * scale
        if bn.bias is not None:
            bias = bias + bn.bias.float()
        weight, bias = (w.float() * scale.view(-1, 1, 1, 1)).to(w.dtype), bias.to(w.dtype)
        if cacheable:
            # the detached aliases keep the old storages alive, so a new tensor cannot reuse their addresses
            self._fold_cache = (key, [t.detach() for t in deps], weight, bias)
        return weight, bias

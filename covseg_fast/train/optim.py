"""Optimiser, per-epoch lr schedule and gradient clipping from a :class:`TrainConfig`."""
from __future__ import annotations

from typing import Iterable

import torch

from .presets import TrainConfig


def build_optimizer(params: Iterable[torch.nn.Parameter], cfg: TrainConfig) -> torch.optim.Optimizer:
    """The optimiser named by ``cfg.optimizer`` with the config's hyper-parameters (PyTorch semantics:
    RMSprop/Adam/SGD weight decay is coupled L2, AdamW decoupled)."""
    params = [p for p in params if p.requires_grad]
    if cfg.optimizer == "rmsprop":
        return torch.optim.RMSprop(params, lr=cfg.lr, alpha=cfg.alpha, eps=cfg.eps,
                                   weight_decay=cfg.weight_decay, momentum=cfg.momentum)
    if cfg.optimizer == "adam":
        return torch.optim.Adam(params, lr=cfg.lr, betas=cfg.betas, eps=cfg.eps, weight_decay=cfg.weight_decay)
    if cfg.optimizer == "adamw":
        return torch.optim.AdamW(params, lr=cfg.lr, betas=cfg.betas, eps=cfg.eps, weight_decay=cfg.weight_decay)
    if cfg.optimizer == "sgd":
        return torch.optim.SGD(params, lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)
    raise ValueError(f"unknown optimizer {cfg.optimizer!r}")


class EpochLRFactor:
    """lr multiplier for 0-based epoch ``i`` (a callable object, so LambdaLR saves it in its state_dict).

    With ``e = i + 1`` (Inf-Net counts epochs from 1) and ``d = decay_epoch``:
    - constant: 1;
    - infnet_compounding: ``rate ** sum_{k=1..e} (k // d)`` (Inf-Net's ``adjust_lr`` multiplies the
      *current* lr by ``rate**(k // d)`` at the start of every epoch k: 1e-4 until epoch 49, then
      1e-5, 1e-6, ... from epoch 50);
    - step50: ``rate`` from epoch ``d`` on (one step), 1 before.
    """

    def __init__(self, schedule: str, decay_epoch: int = 50, decay_rate: float = 0.1) -> None:
        self.schedule = schedule
        self.decay_epoch = int(decay_epoch)
        self.decay_rate = float(decay_rate)

    def __call__(self, i: int) -> float:
        e, d = i + 1, self.decay_epoch
        if self.schedule == "constant":
            return 1.0
        if self.schedule == "step50":
            return self.decay_rate if e >= d else 1.0
        if self.schedule == "infnet_compounding":
            # sum_{k=1..e} floor(k/d) in closed form: q full blocks of d plus a partial block
            q, r = divmod(e, d)
            exponent = d * q * (q - 1) // 2 + q * (r + 1)
            return self.decay_rate ** exponent
        raise ValueError(f"unknown lr_schedule {self.schedule!r}")


def build_scheduler(optimizer: torch.optim.Optimizer, cfg: TrainConfig) -> torch.optim.lr_scheduler.LambdaLR:
    """Per-epoch LambdaLR (call ``step()`` once after each epoch); lr of epoch i = cfg.lr · factor(i)."""
    return torch.optim.lr_scheduler.LambdaLR(
        optimizer, EpochLRFactor(cfg.lr_schedule, cfg.decay_epoch, cfg.decay_rate))


def clip_gradients(params: Iterable[torch.nn.Parameter], clip: float | None, mode: str = "value") -> None:
    """Clip gradients in place: "value" clamps each element to [-clip, clip] (Inf-Net ``clip_gradient``),
    "norm" rescales so the global L2 norm is at most ``clip``; None does nothing."""
    if clip is None:
        return
    params = [p for p in params if p.grad is not None]
    if mode == "value":
        torch.nn.utils.clip_grad_value_(params, clip)
    elif mode == "norm":
        torch.nn.utils.clip_grad_norm_(params, clip)
    else:
        raise ValueError(f"unknown clip mode {mode!r}")

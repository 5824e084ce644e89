"""Fused ops exposed as ``torch.ops.covseg.*`` custom ops, each with a pure-PyTorch reference.

Importing this package registers every op. The public functions validate
their inputs and dispatch to the best backend (see ``_dispatch``).
"""
from ._dispatch import REGISTRY, BackendError, forced_backend, use_backend
from .channel_attention import channel_attention
from .class_prob_pool import class_prob_pool
from .position_attention import position_attention

__all__ = [
    "REGISTRY", "BackendError", "forced_backend", "use_backend",
    "channel_attention", "class_prob_pool", "position_attention",
]

"""Fused ops exposed as ``torch.ops.covseg.*`` custom ops, each with a pure-PyTorch reference.

Importing this package registers every op. The public functions validate
their inputs and dispatch to the best backend (see ``_dispatch``).
"""
from ._dispatch import REGISTRY, BackendError, forced_backend, use_backend
from .class_prob_pool import class_prob_pool
from .cpp_kl_loss import cpp_kl_loss

__all__ = ["REGISTRY", "BackendError", "forced_backend", "use_backend", "class_prob_pool", "cpp_kl_loss"]

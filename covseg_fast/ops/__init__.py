"""Fused ops exposed as ``torch.ops.covseg.*`` custom ops, each with a pure-PyTorch reference.

Importing this package registers every op. The public functions validate
their inputs and dispatch to the best backend (see ``_dispatch``).
"""
from .. import _ext  # noqa: F401  (loads covseg_fast._C once, or records why not; before any op registers)
from ._dispatch import REGISTRY, BackendError, forced_backend, use_backend
from .cbam import cbam_apply, cbam_channel_stats, cbam_spatial_pool
from .channel_attention import channel_attention
from .class_prob_pool import class_prob_pool
from .cpp_kl_loss import cpp_kl_loss
from .position_attention import position_attention
from .strip_conv import strip_conv
from .structure_loss import structure_loss

__all__ = ["REGISTRY", "BackendError", "forced_backend", "use_backend", "cbam_apply", "cbam_channel_stats",
           "cbam_spatial_pool", "channel_attention", "class_prob_pool", "cpp_kl_loss", "position_attention", "strip_conv",
           "structure_loss"]

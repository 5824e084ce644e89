"""Modules built on the fused ops; each takes ``fused=False`` to run the pure-PyTorch reference."""
from .attention import APM, ChannelAttention, PositionAttention
from .cbam import CBAM
from .msa import MSA, StripConv

__all__ = ["APM", "CBAM", "ChannelAttention", "MSA", "PositionAttention", "StripConv"]

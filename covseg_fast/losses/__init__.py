"""Training losses (MODELS.md §3.4, §5)."""
from .cpp_kl import MSAUNetLoss, cpp_kl_aux_loss, soft_binary_targets  # noqa: F401
from .structure import RefNetLoss, edge_from_mask, edge_loss, structure_loss  # noqa: F401

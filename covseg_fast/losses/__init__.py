from .structure import RefNetLoss, edge_from_mask, edge_loss, structure_loss  # noqa: F401

"""Model families; importing this package registers them (``get_model``, ``load_model``)."""
from .registry import (MODELS, CheckpointError, ModelSpec, get_criterion, get_model, get_spec, load_model,
                       prepare_input, register_model, save_checkpoint)

__all__ = ["MODELS", "CheckpointError", "ModelSpec", "get_criterion", "get_model", "get_spec", "load_model",
           "prepare_input", "register_model", "save_checkpoint"]
from . import refnet  # noqa: F401,E402  (registers "refnet")

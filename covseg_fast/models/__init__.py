"""Model families; importing this package registers them (``get_model``, ``load_model``)."""
from .registry import (MODELS, CheckpointError, ModelSpec, get_criterion, get_model, get_spec, load_model,
                       prepare_input, register_model, save_checkpoint)

__all__ = ["MODELS", "CheckpointError", "ModelSpec", "get_criterion", "get_model", "get_spec", "load_model",
           "prepare_input", "register_model", "save_checkpoint"]

# Importing the families registers them.
from . import msa_unet, refnet, unet  # noqa: E402,F401
from .msa_unet import MSAUNet  # noqa: E402
from .unet import UNet  # noqa: E402

__all__ += ["MSAUNet", "UNet"]

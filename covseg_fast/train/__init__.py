"""Training: presets of the papers, a Trainer (AMP, channels_last, torch.compile, exact resume, DDP)
and Semi-Inf-Net style semi-supervised training."""
from .presets import PRESETS, TrainConfig, preset_for_model, resolve_config
from .semi import train_semi_supervised
from .trainer import Trainer

__all__ = ["PRESETS", "TrainConfig", "Trainer", "preset_for_model", "resolve_config", "train_semi_supervised"]

"""Training presets: the papers' optimisers and schedules (MODELS.md §3.5, §4.4, §6, §11 A6/A16).

A preset is a :class:`TrainConfig`; every field can be overridden by name
(``resolve_config("refnet", {"batch_size": 8})``).

- ``msa_unet``: RMSprop(lr 1e-3, weight_decay 1e-4, alpha 0.99, eps 1e-8, momentum 0), batch 8,
  70 epochs, 256×256, constant lr, no clipping (§3.5 and A6: momentum, batch, schedule are choices).
- ``refnet``: Adam(lr 1e-4), batch 2, 100 epochs, 352×352 multi-scale {0.75, 1, 1.25} (one optimiser
  step per rate), elementwise gradient clamp to [-0.5, 0.5] (Inf-Net ``clip_gradient``), lr schedule
  ``infnet_compounding`` (reproduction, A16; ``step50`` is the clean alternative); GT and edge maps
  resized bilinear and left soft (§4.4).
- ``infnet``: as ``refnet`` with Inf-Net's own defaults: batch 24 and ``range(1, 100)`` = 99 epochs (§6).
"""
from __future__ import annotations

import dataclasses
from typing import Any, Mapping, Optional

SCHEDULES = ("constant", "infnet_compounding", "step50")
OPTIMIZERS = ("rmsprop", "adam", "adamw", "sgd")
CLIP_MODES = ("value", "norm")
MASK_RESIZES = ("nearest", "bilinear")
AUGMENTATIONS = ("none", "flip", "flip_rot90", "flip_rotate")
PSEUDO_INTENSITIES = ("as_is", "match")
# validation metrics that can choose the best checkpoint (train/validate.py computes them all)
VAL_METRICS = ("dice", "iou", "infnet_dice", "sen", "spec", "e_phi", "s_alpha", "mae", "precision", "recall",
               "specificity", "miou")


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    """Everything that decides how a model is trained (the model and data are given separately).

    ``scales``: multi-scale rates; each rate is a separate zero_grad → forward → backward → clip → step
    on the batch rescaled to ``round(H·rate / size_multiple)·size_multiple`` (bilinear, align_corners=True).
    ``clip``: gradient clip threshold (None: off); ``clip_mode`` "value" clamps every gradient element
    to [-clip, clip] (Inf-Net), "norm" clips the global L2 norm.
    ``lr_schedule``: "constant"; "infnet_compounding" (from the ``decay_epoch``-th epoch, counted from 1,
    the lr is multiplied by ``decay_rate**(epoch // decay_epoch)`` again every epoch, as Inf-Net's
    ``adjust_lr``); "step50" (one step ×``decay_rate`` from that same epoch on).
    ``amp``: bf16 autocast (None: on for CUDA, off on CPU); ``channels_last`` (None: on for CUDA).
    ``mask_resize``: how GT and edge maps reach ``input_size``: "nearest" keeps them binary (MSA-UNet,
    §3.5); "bilinear" leaves them soft at borders, not re-binarised (Inf-Net/Ref-Net, §4.4).
    ``val_metric``: the validation metric whose best value picks ``best.pt`` (lowest for "mae", highest
    otherwise): "dice"/"iou" at ``val_threshold``; "infnet_dice", "sen", "spec", "e_phi", "s_alpha", "mae"
    (Inf-Net protocol); "precision", "recall", "specificity", "miou" at 0.5.
    ``augment``: random transforms of the training items, drawn from (seed, epoch, index): "none" (both
    papers), "flip" (horizontal), "flip_rot90" (and k·90° rotations), "flip_rotate" (and ±15°).
    ``pseudo_intensity``: the pseudo-label stage's images "as_is", or "match": each pseudo-labelled
    volume's grey levels mapped linearly so its lung and soft-tissue landmarks match the labelled
    images' (:mod:`covseg_fast.data.intensity`; their windows differ, docs/intensity_window.md).
    """

    optimizer: str = "adam"
    lr: float = 1e-4
    weight_decay: float = 0.0
    momentum: float = 0.0
    alpha: float = 0.99
    eps: float = 1e-8
    betas: tuple[float, float] = (0.9, 0.999)
    batch_size: int = 2
    epochs: int = 100
    input_size: int = 352
    scales: tuple[float, ...] = (1.0,)
    clip: Optional[float] = None
    clip_mode: str = "value"
    lr_schedule: str = "constant"
    decay_epoch: int = 50
    decay_rate: float = 0.1
    amp: Optional[bool] = None
    channels_last: Optional[bool] = None
    compile: bool = False
    seed: int = 0
    num_workers: int = 0
    val_threshold: float = 0.5
    val_metric: str = "dice"
    mask_resize: str = "nearest"
    augment: str = "none"
    pseudo_intensity: str = "as_is"

    def __post_init__(self) -> None:
        for name, allowed in (("optimizer", OPTIMIZERS), ("lr_schedule", SCHEDULES), ("clip_mode", CLIP_MODES),
                              ("val_metric", VAL_METRICS), ("mask_resize", MASK_RESIZES),
                              ("augment", AUGMENTATIONS), ("pseudo_intensity", PSEUDO_INTENSITIES)):
            if getattr(self, name) not in allowed:
                raise ValueError(f"{name} must be one of {allowed}, got {getattr(self, name)!r}")
        if self.batch_size < 1 or self.epochs < 1 or self.input_size < 1:
            raise ValueError(f"batch_size, epochs and input_size must be >= 1, got "
                             f"{self.batch_size}, {self.epochs}, {self.input_size}")
        if self.lr <= 0:
            raise ValueError(f"lr must be > 0, got {self.lr}")
        if not self.scales or any(s <= 0 for s in self.scales):
            raise ValueError(f"scales must be positive rates, got {self.scales}")
        if self.clip is not None and self.clip <= 0:
            raise ValueError(f"clip must be > 0 or None, got {self.clip}")
        if self.decay_epoch < 1:
            raise ValueError(f"decay_epoch must be >= 1, got {self.decay_epoch}")

    def to_dict(self) -> dict[str, Any]:
        """Plain dict (tuples as lists) for checkpoints and logs."""
        return {k: (list(v) if isinstance(v, tuple) else v) for k, v in dataclasses.asdict(self).items()}


PRESETS: dict[str, TrainConfig] = {
    "msa_unet": TrainConfig(optimizer="rmsprop", lr=1e-3, weight_decay=1e-4, momentum=0.0, batch_size=8,
                            epochs=70, input_size=256, scales=(1.0,), clip=None, lr_schedule="constant"),
    "refnet": TrainConfig(optimizer="adam", lr=1e-4, batch_size=2, epochs=100, input_size=352,
                          scales=(0.75, 1.0, 1.25), clip=0.5, clip_mode="value",
                          lr_schedule="infnet_compounding", decay_epoch=50, decay_rate=0.1,
                          mask_resize="bilinear"),
    "infnet": TrainConfig(optimizer="adam", lr=1e-4, batch_size=24, epochs=99, input_size=352,
                          scales=(0.75, 1.0, 1.25), clip=0.5, clip_mode="value",
                          lr_schedule="infnet_compounding", decay_epoch=50, decay_rate=0.1,
                          mask_resize="bilinear"),
}

# model family -> its paper's preset
MODEL_PRESETS = {"msa_unet": "msa_unet", "unet": "msa_unet", "refnet": "refnet", "infnet": "infnet"}

_FIELDS = {f.name: f for f in dataclasses.fields(TrainConfig)}


def preset_for_model(model_name: str) -> str:
    """The preset of a model family's paper; raises KeyError naming the presets when there is none."""
    if model_name not in MODEL_PRESETS:
        raise KeyError(f"no default preset for model {model_name!r}; choose one of {sorted(PRESETS)}")
    return MODEL_PRESETS[model_name]


def resolve_config(preset: str | TrainConfig, overrides: Optional[Mapping[str, Any]] = None) -> TrainConfig:
    """Preset (name or config) with ``overrides`` applied; None values in overrides are ignored.

    Raises:
        KeyError: unknown preset name.
        ValueError: an override names no field, or gives an invalid value.
    """
    if isinstance(preset, TrainConfig):
        base = preset
    elif preset in PRESETS:
        base = PRESETS[preset]
    else:
        raise KeyError(f"unknown preset {preset!r}; known presets: {sorted(PRESETS)}")
    changes: dict[str, Any] = {}
    for key, value in (overrides or {}).items():
        if value is None:
            continue
        if key not in _FIELDS:
            raise ValueError(f"unknown training setting {key!r}; known settings: {sorted(_FIELDS)}")
        if key in ("scales", "betas"):
            value = tuple(float(v) for v in (value if isinstance(value, (list, tuple)) else [value]))
        changes[key] = value
    return dataclasses.replace(base, **changes)

"""Semi-supervised training as Semi-Inf-Net: train on pseudo-labelled slices, then fine-tune on the
doctor-labelled ones starting from those weights (MODELS.md §6; Inf-Net README §2.2)."""
from __future__ import annotations

import logging
import os
from typing import Any, Mapping, Optional

import torch
from torch.utils.data import Dataset

from . import distributed as D
from .presets import TrainConfig
from .trainer import LAST, Trainer

log = logging.getLogger(__name__)


def train_semi_supervised(model_name: str, pseudo_dataset: Dataset, labelled_dataset: Dataset,
                          out_dir: str, model_config: Optional[Mapping[str, Any]] = None,
                          preset: str | TrainConfig | None = None, overrides: Optional[Mapping[str, Any]] = None,
                          pseudo_overrides: Optional[Mapping[str, Any]] = None,
                          val_dataset: Optional[Dataset] = None, device: str | torch.device | None = None,
                          criterion_config: Optional[Mapping[str, Any]] = None, progress: bool = True,
                          resume_stage: Optional[str] = None,
                          input_info: Optional[Mapping[str, Any]] = None) -> dict[str, Any]:
    """Stage 1 on ``pseudo_dataset`` (soft masks) into ``out_dir/pseudo``, then stage 2 on
    ``labelled_dataset`` into ``out_dir/finetune`` initialised from stage 1's last weights (fresh
    optimiser, schedule and epoch count).

    ``overrides`` apply to both stages, ``pseudo_overrides`` on top of them to stage 1 only (e.g.
    Semi-Inf-Net's pseudo loop used lr 3e-4, batch 16). ``resume_stage`` = path of a stage's
    last.pt to continue that stage (stage 1's finished checkpoint skips to stage 2).
    Returns {"pseudo": summary, "finetune": summary}.
    """
    common = dict(model_name=model_name, model_config=model_config, preset=preset, val_dataset=val_dataset,
                  device=device, criterion_config=criterion_config, progress=progress,
                  input_info=dict(input_info) if input_info is not None else None)
    stage1_dir, stage2_dir = os.path.join(out_dir, "pseudo"), os.path.join(out_dir, "finetune")
    stage1_last = os.path.join(stage1_dir, LAST)
    summaries: dict[str, Any] = {}
    resume_in_2 = resume_stage is not None and os.path.abspath(os.path.dirname(resume_stage)) == \
        os.path.abspath(stage2_dir)
    if not resume_in_2:
        stage1 = Trainer(train_dataset=pseudo_dataset, out_dir=stage1_dir,
                         overrides={**dict(overrides or {}), **dict(pseudo_overrides or {})}, **common)
        if resume_stage is not None:
            stage1.resume(resume_stage)
        log.info("semi-supervised stage 1: %d pseudo-labelled slices", len(pseudo_dataset))
        summaries["pseudo"] = stage1.fit()
        D.barrier()
    stage2 = Trainer(train_dataset=labelled_dataset, out_dir=stage2_dir, overrides=overrides,
                     init_from=None if resume_in_2 else stage1_last, **common)
    if resume_in_2:
        stage2.resume(resume_stage)
    log.info("semi-supervised stage 2: fine-tune on %d labelled slices", len(labelled_dataset))
    summaries["finetune"] = stage2.fit()
    return summaries

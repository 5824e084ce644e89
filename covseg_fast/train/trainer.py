"""Trainer: one model, one training set, optional validation set, checkpoints that resume exactly.

>>> trainer = Trainer("refnet", {}, "refnet", {"epochs": 10}, train_ds, val_ds, "runs/refnet")
>>> summary = trainer.fit()          # writes runs/refnet/last.pt, best.pt, history.json
>>> Trainer(..., out_dir="runs/refnet").resume("runs/refnet/last.pt").fit()   # continues exactly

Each step: grey batch → ``prepare_input`` (channels, normalisation) → optional channels_last → bf16
autocast forward in train mode → ``criterion(outputs, batch)`` → backward → clip → step; with several
``scales`` the batch is rescaled and stepped once per rate (Inf-Net). The lr schedule steps per epoch.
Validation each epoch scores every metric of both papers (``validate.VAL_KEYS``); the best checkpoint is
the one with the best ``val_metric`` (validation Dice at ``val_threshold`` by default; the lowest training
loss when there is no validation set).
"""
from __future__ import annotations

import inspect
import json
import logging
import math
import os
import time
from typing import Any, Mapping, Optional

import torch
from torch.utils.data import Dataset
from tqdm.auto import tqdm

from ..atomic import atomic_write
from ..models.registry import (CheckpointError, get_criterion, get_model, get_spec, prepare_input,
                               read_checkpoint, save_checkpoint)
from . import distributed as D
from .batching import EpochSampler, check_batch, describe_targets, make_loader, multiscale_sizes, rescale_batch, \
    seed_everything, to_device
from .optim import build_optimizer, build_scheduler, clip_gradients
from .presets import TrainConfig, preset_for_model, resolve_config
from .state import capture_rng, restore_rng
from .validate import VAL_KEYS, validation_metric_sums

log = logging.getLogger(__name__)

LAST, BEST, HISTORY = "last.pt", "best.pt", "history.json"
PROGRESS_NOTE_S = 60.0  # how often an epoch without a progress bar logs how far it is


def default_device() -> torch.device:
    """cuda:LOCAL_RANK when CUDA is available, else cpu."""
    if torch.cuda.is_available():
        return torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
    return torch.device("cpu")


class Trainer:
    """Train model ``model_name`` (from the registry) with a preset and overrides.

    Args:
        model_name, model_config: what ``get_model(model_name, **model_config)`` builds.
        preset: preset name or TrainConfig; None picks the model family's paper preset.
        overrides: TrainConfig fields to change (None values ignored).
        train_dataset: map-style dataset of dicts (see ``batching``); val_dataset likewise, optional.
        out_dir: where last.pt, best.pt and history.json go (rank 0 only).
        device: torch device (default cuda:LOCAL_RANK or cpu).
        criterion_config: keyword arguments of the model's criterion.
        init_from: checkpoint whose weights initialise the model (e.g. stage 1 of semi-supervised
            training); optimiser and epoch start fresh.
        progress: show a tqdm bar (rank 0 only).
        find_unused_parameters: passed to DDP.
        input_info: how the training images were made from the data, e.g. ``{"source": "volumes",
            "window": [-1250, 250]}``; stored as ``input`` in checkpoints so that evaluate and screen
            window CT the way the model was trained.
    Raises:
        KeyError: unknown model or preset; ValueError: bad override.
    """

    def __init__(self, model_name: str, model_config: Optional[Mapping[str, Any]] = None,
                 preset: str | TrainConfig | None = None, overrides: Optional[Mapping[str, Any]] = None,
                 train_dataset: Optional[Dataset] = None, val_dataset: Optional[Dataset] = None,
                 out_dir: str = "runs/train", device: str | torch.device | None = None,
                 criterion_config: Optional[Mapping[str, Any]] = None, init_from: Optional[str] = None,
                 progress: bool = True, find_unused_parameters: bool = False,
                 input_info: Optional[Mapping[str, Any]] = None) -> None:
        self.model_name = model_name
        self.input_info = dict(input_info) if input_info is not None else None
        self.spec = get_spec(model_name)
        self.cfg = resolve_config(preset if preset is not None else preset_for_model(model_name), overrides)
        self.dist = D.dist_info()
        self.device = torch.device(device) if device is not None else default_device()
        if self.device.type == "cuda" and self.device.index is None:
            self.device = torch.device("cuda", torch.cuda.current_device())
        self.amp = self.cfg.amp if self.cfg.amp is not None else self.device.type == "cuda"
        self.channels_last = (self.cfg.channels_last if self.cfg.channels_last is not None
                              else self.device.type == "cuda")
        self.train_dataset, self.val_dataset = train_dataset, val_dataset
        self.out_dir = out_dir
        self.progress = progress
        self.criterion_config = dict(criterion_config or {})
        classes = dict(model_config or {}).get("num_classes")
        if classes is not None and "num_classes" in inspect.signature(self.spec.criterion).parameters:
            # the loss must score as many classes as the model predicts
            self.criterion_config.setdefault("num_classes", classes)

        seed_everything(self.cfg.seed)
        self.model = get_model(model_name, **dict(model_config or {})).to(self.device)
        if init_from is not None:
            self._load_weights(init_from)
        if self.channels_last:
            self.model = self.model.to(memory_format=torch.channels_last)
        self.criterion = get_criterion(model_name, **self.criterion_config)
        if isinstance(self.criterion, torch.nn.Module):
            self.criterion = self.criterion.to(self.device)
        self.optimizer = build_optimizer(self.model.parameters(), self.cfg)
        self.scheduler = build_scheduler(self.optimizer, self.cfg)
        self.train_model: torch.nn.Module = self.model
        if self.dist.enabled:
            self.train_model = D.wrap_ddp(self.model, self.device, find_unused_parameters)
        if self.cfg.compile:
            self.train_model = torch.compile(self.train_model)

        self.epoch = 0                      # completed epochs
        self.best_score = -math.inf
        self.best_epoch: Optional[int] = None
        self.global_step = 0
        self.history: list[dict[str, Any]] = []

    # ------------------------------------------------------------------ weights and checkpoints
    def _load_weights(self, path: str) -> None:
        payload = read_checkpoint(path)
        if payload["model"] != self.model_name:
            raise CheckpointError(f"{path}: holds model {payload['model']!r}, not {self.model_name!r}")
        try:
            self.model.load_state_dict(payload["state_dict"], strict=True)
        except RuntimeError as exc:
            raise CheckpointError(f"{path}: weights do not fit model {self.model_name!r}: {exc}") from exc

    def training_state(self) -> dict[str, Any]:
        """Everything besides the weights that resuming needs (stored under "train" in checkpoints)."""
        return {"epoch": self.epoch, "best_score": self.best_score, "best_epoch": self.best_epoch,
                "global_step": self.global_step, "history": self.history, "config": self.cfg.to_dict(),
                "criterion_config": self.criterion_config, "optimizer": self.optimizer.state_dict(),
                "scheduler": self.scheduler.state_dict(), "rng": capture_rng(),
                "world_size": self.dist.world_size}

    def save(self, path: str) -> None:
        """Write model, config and training state to ``path`` atomically (rank 0 only; others no-op)."""
        if self.dist.is_main:
            extra = {"train": self.training_state()}
            if self.input_info is not None:
                extra["input"] = self.input_info
            save_checkpoint(path, self.model, extra)

    def resume(self, path: str) -> "Trainer":
        """Load weights, optimiser, scheduler, RNG states, epoch, best score and history from ``path``
        (a checkpoint written by :meth:`save`); :meth:`fit` then continues with the next epoch.

        Raises:
            CheckpointError: missing/corrupt file, another model, or no training state.
        """
        payload = read_checkpoint(path, map_location="cpu")
        if payload["model"] != self.model_name:
            raise CheckpointError(f"{path}: holds model {payload['model']!r}, not {self.model_name!r}")
        state = payload.get("train")
        if not isinstance(state, dict):
            raise CheckpointError(f"{path}: has weights but no training state; use it with init_from instead")
        if payload.get("config", {}) != getattr(self.model, "covseg_config", {}):
            log.warning("%s: model config %s differs from this trainer's %s", path, payload.get("config"),
                        self.model.covseg_config)
        saved = {k: v for k, v in state.get("config", {}).items() if k != "epochs"}
        mine = {k: v for k, v in self.cfg.to_dict().items() if k != "epochs"}
        if saved != mine:
            changed = sorted(k for k in mine if saved.get(k) != mine[k])
            log.warning("resuming %s with changed training settings: %s", path, changed)
        try:
            self.model.load_state_dict(payload["state_dict"], strict=True)
        except RuntimeError as exc:
            raise CheckpointError(f"{path}: weights do not fit model {self.model_name!r}: {exc}") from exc
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        restore_rng(state["rng"])
        self.epoch = int(state["epoch"])
        self.best_score = float(state["best_score"])
        self.best_epoch = state.get("best_epoch")
        self.global_step = int(state.get("global_step", 0))
        self.history = list(state.get("history", []))
        if self.input_info is None and payload.get("input") is not None:
            self.input_info = dict(payload["input"])
        elif payload.get("input") not in (None, self.input_info):
            log.warning("resuming %s with other input settings: %s there, %s now", path, payload["input"],
                        self.input_info)
        log.info("resumed %s at epoch %d (best %.4f)", path, self.epoch, self.best_score)
        return self

    # ------------------------------------------------------------------ one optimiser step
    def _inputs(self, grey: torch.Tensor) -> torch.Tensor:
        x = prepare_input(grey.float(), self.spec)
        return x.contiguous(memory_format=torch.channels_last) if self.channels_last else x

    def _autocast(self):
        return torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.amp)

    def prepare_batch(self, batch: dict[str, Any]) -> dict[str, Any]:
        """Check a loader batch, note the facts about its targets while they are on the host (so the criterion
        needs no device sync for them), and move it to the training device."""
        check_batch(batch)
        return to_device(describe_targets(batch), self.device)

    def _step(self, batch: dict[str, Any]) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """One optimiser step; returns the loss and the criterion's parts, detached, on the device (no sync)."""
        multiple = self.spec.size_multiple
        h, w = batch["image"].shape[-2:]
        if h % multiple or w % multiple:
            raise ValueError(f"batch size {h}x{w} is not a multiple of {multiple} as model "
                             f"{self.model_name!r} needs")
        x = self._inputs(batch["image"])
        self.optimizer.zero_grad(set_to_none=True)
        with self._autocast():
            outputs = self.train_model(x)
            loss, parts = self.criterion(outputs, batch)
        loss.backward()
        clip_gradients(self.model.parameters(), self.cfg.clip, self.cfg.clip_mode)
        self.optimizer.step()
        self.global_step += 1
        return loss.detach().float(), {k: torch.as_tensor(v, device=self.device).detach().float()
                                       for k, v in parts.items()}

    # ------------------------------------------------------------------ epochs
    def _train_sampler(self) -> EpochSampler:
        return EpochSampler(len(self.train_dataset), seed=self.cfg.seed, shuffle=True, rank=self.dist.rank,
                            world_size=self.dist.world_size, pad=self.dist.enabled)

    def train_epoch(self, epoch: int) -> dict[str, Any]:
        """One pass over this rank's share of the training set; returns mean loss, images, images/s and the
        mean of each criterion part ("parts"; summed on the device, converted once at the end)."""
        sampler = self._train_sampler()
        n_local = len(sampler)
        # a last batch of one sample breaks BatchNorm in train mode: drop it (logged)
        drop_last = self.cfg.batch_size > 1 and n_local % self.cfg.batch_size == 1 and n_local > 1
        if drop_last and epoch == self.epoch:
            log.info("dropping the last batch of 1 sample each epoch (BatchNorm needs 2)")
        loader = make_loader(self.train_dataset, self.cfg.batch_size, sampler, epoch, self.cfg.num_workers,
                             pin_memory=self.device.type == "cuda", drop_last=drop_last)
        self.train_model.train()
        loss_sum = torch.zeros((), device=self.device)
        part_sums: dict[str, torch.Tensor] = {}  # on the device until the epoch's one all-reduce
        steps, images, t0 = 0, 0, time.perf_counter()
        bar = tqdm(loader, desc=f"epoch {epoch + 1}/{self.cfg.epochs}", unit="batch", leave=False,
                   disable=not (self.progress and self.dist.is_main), dynamic_ncols=True)
        # without a bar (crossval, --no-progress, logs) a long epoch still says how far it is
        next_note = t0 + PROGRESS_NOTE_S if bar.disable and self.dist.is_main else math.inf
        for i, batch in enumerate(bar):
            batch = self.prepare_batch(batch)
            for size in multiscale_sizes(batch["image"].shape[-2:], self.cfg.scales, self.spec.size_multiple):
                loss, parts = self._step(rescale_batch(batch, size))
                loss_sum += loss
                for key, value in parts.items():
                    part_sums[key] = part_sums[key] + value if key in part_sums else value.clone()
                steps += 1
            images += batch["image"].shape[0]
            if i % 10 == 0 or i == len(loader) - 1:
                mean = loss_sum.item() / steps
                if not math.isfinite(mean):
                    raise FloatingPointError(f"training loss became {mean} at epoch {epoch + 1}, step "
                                             f"{self.global_step}")
                rate = images * self.dist.world_size / max(time.perf_counter() - t0, 1e-9)
                bar.set_postfix(loss=f"{mean:.4f}", img_s=f"{rate:.1f}")
            if time.perf_counter() >= next_note and i < len(loader) - 1:
                self._note_progress(epoch, i + 1, len(loader), loss_sum.item() / steps, time.perf_counter() - t0)
                next_note = time.perf_counter() + PROGRESS_NOTE_S
        bar.close()
        D.broadcast_buffers(self.model)
        if steps == 0:
            raise ValueError("training set gave no batch (is it smaller than the batch size?)")
        names = sorted(part_sums)
        values = torch.stack([loss_sum.double(), *(part_sums[k].double() for k in names)]).cpu()  # one sync
        totals = D.all_reduce_sum(torch.cat([values, torch.tensor([float(steps), float(images)], dtype=torch.float64)]),
                                  self.device).tolist()
        steps_all, images_all = totals[-2], totals[-1]
        seconds = time.perf_counter() - t0
        return {"loss": totals[0] / steps_all, "images": int(images_all),
                "images_per_s": images_all / max(seconds, 1e-9), "seconds": seconds,
                "parts": {k: totals[1 + i] / steps_all for i, k in enumerate(names)}}

    def _note_progress(self, epoch: int, done: int, total: int, loss: float, seconds: float) -> None:
        left = seconds / done * (total - done)
        log.info("epoch %d/%d: %d/%d batches, loss %.4f, %.1f img/s, about %.0f min left in this epoch",
                 epoch + 1, self.cfg.epochs, done, total, loss,
                 done * self.cfg.batch_size * self.dist.world_size / max(seconds, 1e-9), left / 60)

    @torch.no_grad()
    def validate(self) -> dict[str, float]:
        """Every ``VAL_KEYS`` metric, averaged over the validation images (sharded over ranks, all-reduced)."""
        if self.val_dataset is None:
            raise ValueError("validate: no validation dataset")
        sampler = EpochSampler(len(self.val_dataset), shuffle=False, rank=self.dist.rank,
                               world_size=self.dist.world_size, pad=False)
        loader = make_loader(self.val_dataset, self.cfg.batch_size, sampler, 0, self.cfg.num_workers,
                             pin_memory=self.device.type == "cuda")
        was_training = self.model.training
        self.model.eval()

        def forward(batch: dict) -> torch.Tensor:
            with self._autocast():
                return self.model(self._inputs(batch["image"].to(self.device, non_blocking=True)))

        try:
            sums = validation_metric_sums(forward, loader, self.cfg.val_threshold)
        finally:
            self.model.train(was_training)
        sums = D.all_reduce_sum(sums, self.device)
        count = max(sums[-1].item(), 1.0)
        return {k: sums[i].item() / count for i, k in enumerate(VAL_KEYS)}

    def _score(self, val: dict[str, float]) -> tuple[str, float]:
        """(name, value) of the checkpoint-selection score; higher is better, so MAE enters negated."""
        key = self.cfg.val_metric
        return (f"-val_{key}", -val[key]) if key == "mae" else (f"val_{key}", val[key])

    def fit(self) -> dict[str, Any]:
        """Train from the current epoch to ``cfg.epochs``, validating and checkpointing every epoch.

        Returns a summary: epochs, best_score, best_epoch, score ("val_dice" or "-train_loss"),
        last / best checkpoint paths, mean images/s.
        """
        if self.train_dataset is None:
            raise ValueError("fit: no training dataset")
        score_name = self._score(dict.fromkeys(VAL_KEYS, 0.0))[0] if self.val_dataset is not None else "-train_loss"
        last, best = os.path.join(self.out_dir, LAST), os.path.join(self.out_dir, BEST)
        rates = []
        for epoch in range(self.epoch, self.cfg.epochs):
            lr = self.optimizer.param_groups[0]["lr"]
            stats = self.train_epoch(epoch)
            record: dict[str, Any] = {"epoch": epoch + 1, "lr": lr, **stats}
            if self.val_dataset is not None:
                val = self.validate()
                record.update({f"val_{k}": v for k, v in val.items()})
                score = self._score(val)[1]
            else:
                score = -stats["loss"]
            self.scheduler.step()
            self.epoch = epoch + 1
            improved = score > self.best_score
            if improved:
                self.best_score, self.best_epoch = score, self.epoch
            record["best"] = improved
            self.history.append(record)
            rates.append(stats["images_per_s"])
            self.save(last)
            if improved:
                self.save(best)
            self._write_history()
            if self.dist.is_main:
                log.info("epoch %d/%d loss %.4f%s lr %.2e %.1f img/s", self.epoch, self.cfg.epochs, stats["loss"],
                         f" val dice {record['val_dice']:.4f} iou {record['val_iou']:.4f} S_α {record['val_s_alpha']:.4f}"
                         f" MAE {record['val_mae']:.4f}"
                         if "val_dice" in record else "", lr, stats["images_per_s"])
        D.barrier()
        return {"epochs": self.epoch, "best_score": self.best_score, "best_epoch": self.best_epoch,
                "score": score_name, "last": last, "best": best,
                "images_per_s": sum(rates) / len(rates) if rates else None}

    def _write_history(self) -> None:
        if self.dist.is_main:
            with atomic_write(os.path.join(self.out_dir, HISTORY), "w") as fh:
                json.dump(self.history, fh, indent=1)

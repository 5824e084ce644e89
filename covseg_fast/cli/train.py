"""`covseg train`: train a registered model on slice folders or CT volumes (parsing only; logic in covseg_fast.train).

Exit codes: 0 trained, 1 training failed (data module missing, bad checkpoint, diverged, interrupted),
2 usage error (unknown model / preset / setting, missing folder, bad key=value).
Under torchrun every rank runs this command; rank 0 writes checkpoints and prints the summary.
"""
from __future__ import annotations

import argparse
import ast
import logging
import os
import sys

from ..devices import check_device
from .data_source import VOLUME_LAYOUTS, add_source_options, volume_window
from .input_options import add_device_option

log = logging.getLogger("covseg.train")


def _key_values(items: list[str] | None, flag: str) -> dict:
    """["a=1", "b=x"] → {"a": 1, "b": "x"}; values are Python literals when they parse, else strings."""
    out = {}
    for item in items or []:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise ValueError(f"{flag} expects key=value, got {item!r}")
        try:
            out[key.replace("-", "_")] = ast.literal_eval(value)
        except (ValueError, SyntaxError):
            out[key.replace("-", "_")] = value
    return out


def add_parser(sub) -> None:
    p = sub.add_parser("train", help="train a model on slice folders or CT volumes (presets of the papers, resume, DDP)",
                       description="Train a registered model. Launch with torchrun for several GPUs.")
    p.add_argument("--model", help="registered model name, e.g. msa_unet or refnet (taken from --resume if omitted)")
    p.add_argument("--config", nargs="+", metavar="KEY=VALUE", help="model configuration entries")
    p.add_argument("--loss-config", nargs="+", metavar="KEY=VALUE", help="criterion configuration entries")
    add_source_options(p, data_help="training slice folder (Imgs/, GT/, optional Edge/ and GT-multiclass/)",
                       volumes_help=f"folder of labelled CT volumes (NIfTI) in a public layout: {VOLUME_LAYOUTS}; "
                                    "split by volume, never by slice",
                       drop_empty_help="--volumes: train and validate only on slices with infection (MSA-UNet "
                                       "paper's option)")
    p.add_argument("--split", metavar="FILE", help="train/val split JSON: used when it exists, else written from "
                                                   "--val-fraction (default OUT/split.json)")
    p.add_argument("--multiclass", nargs="?", const="GT-multiclass", metavar="SUBDIR",
                   help="--data: train on class-index maps (default sub-folder GT-multiclass: 0 background, 1 GGO, "
                        "2 consolidation); needs a model built with --config num_classes=3")
    p.add_argument("--slice-plane", choices=["radiological", "transposed"], default=None,
                   help="--data: how the slice images' rows and columns run, recorded for screening: radiological "
                        "(rows anterior→posterior, columns patient right→left, the display convention) or transposed "
                        "(rows right→left, columns anterior→posterior, as COVID-SemiSeg stores them); default: "
                        "radiological")
    val = p.add_mutually_exclusive_group()
    val.add_argument("--val-data", help="validation slice folder")
    val.add_argument("--val-fraction", type=float, help="hold out this fraction of --data (seeded) for validation")
    p.add_argument("--pseudo-data", help="pseudo-labelled slice folder: train on it first, then fine-tune on "
                                         "--data (Semi-Inf-Net)")
    p.add_argument("--pseudo-epochs", type=int, help="epochs of the pseudo-label stage (default: --epochs)")
    p.add_argument("--out", required=True,
                   help="output folder: last.pt, best.pt, history.json (and split.json with --val-fraction); with "
                        "--pseudo-data the pseudo-label stage writes them to OUT/pseudo/ and the fine-tune stage to "
                        "OUT/finetune/ (the model to use is OUT/finetune/best.pt or last.pt)")
    p.add_argument("--preset", help="msa_unet, refnet or infnet (default: the model's paper preset)")
    p.add_argument("--epochs", type=int, help="training epochs (default: the preset's)")
    p.add_argument("--batch-size", type=int, help="slices per batch (default: the preset's)")
    p.add_argument("--lr", type=float, help="learning rate (default: the preset's)")
    p.add_argument("--lr-schedule", choices=["constant", "infnet_compounding", "step50"],
                   help="learning-rate schedule (default: the preset's)")
    p.add_argument("--val-metric", choices=["dice", "iou", "infnet_dice", "sen", "spec", "e_phi", "s_alpha", "mae",
                                            "precision", "recall", "specificity", "miou"],
                   help="validation metric that picks best.pt (default dice at 0.5; mae is minimised); every "
                        "one of them is logged in history.json each epoch")
    p.add_argument("--augment", choices=["none", "flip", "flip_rot90", "flip_rotate"],
                   help="seeded random flips/rotations of the training slices (default none, as both papers)")
    p.add_argument("--mask-resize", choices=["nearest", "bilinear"],
                   help="GT/edge resize to the input size (default: the preset's; nearest for msa_unet, "
                        "bilinear and left soft for refnet/infnet as Inf-Net does)")
    p.add_argument("--set", nargs="+", metavar="KEY=VALUE", dest="settings",
                   help="any other training setting, e.g. clip=1.0 scales=[1.0] weight_decay=0")
    add_device_option(p)
    p.add_argument("--amp", action=argparse.BooleanOptionalAction, default=None,
                   help="bf16 autocast (default: on for CUDA)")
    p.add_argument("--compile", action="store_true", default=None, help="torch.compile the model")
    p.add_argument("--channels-last", action=argparse.BooleanOptionalAction, default=None,
                   help="channels_last memory format (default: on for CUDA)")
    p.add_argument("--seed", type=int, help="random seed (default: the preset's)")
    p.add_argument("--resume", metavar="PATH", help="continue exactly from a last.pt written by covseg train")
    p.add_argument("--workers", type=int, help="DataLoader worker processes")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(run=run)


def _summary(out: dict, label: str = "") -> str:
    """One line: epochs, which epoch best.pt holds and why, and the checkpoint paths."""
    name, score = out["score"], out["best_score"]
    if name == "-train_loss":       # no validation data: best.pt is the epoch of lowest training loss
        why = f"lowest training loss {-score:.4f}"
    elif name.startswith("-"):      # a minimised validation metric (MAE) enters the score negated
        why = f"lowest {name[1:]} {-score:.4f}"
    else:
        why = f"best {name} {score:.4f}"
    return (f"{label}{out['epochs']} epochs; best.pt: epoch {out['best_epoch']} ({why}); "
            f"checkpoints: {out['best']} (best), {out['last']} (last)")


def _input_info(args) -> dict | None:
    """What the checkpoint records about the input (evaluate --volumes and screen apply it): CT volumes always
    (the window they were trained with), slice images the HU window they show (--window) and how their rows
    and columns run (--slice-plane)."""
    if args.volumes is not None:
        return {"source": "volumes", "window": list(volume_window(args)), "drop_empty": args.drop_empty}
    info: dict = {"source": "slices"}
    if args.window is not None:
        info["window"] = [float(v) for v in args.window]
    if args.slice_plane is not None:
        info["plane"] = args.slice_plane
    return info if len(info) > 1 else None


def _datasets(args, cfg, model_config: dict) -> tuple:
    """(train, val, pseudo) for the run; the train/val split is written to --split (default OUT/split.json).

    Raises:
        ValueError (bad options or data), FileNotFoundError, DataModuleMissing.
    """
    from ..data.splits import save_split
    from ..train.datasets import load_slice_datasets, load_volume_datasets, split_of

    classes = int(model_config.get("num_classes", 1))
    if args.multiclass and classes < 2:
        raise ValueError("--multiclass trains on class-index maps: build the model with --config num_classes=3")
    if classes > 1 and not args.multiclass:
        raise ValueError(f"--config num_classes={classes} needs class-index maps: add --multiclass [SUBDIR]")
    split_path = args.split or os.path.join(args.out, "split.json")
    if args.volumes is not None:
        for flag, value in (("--val-data", args.val_data), ("--pseudo-data", args.pseudo_data),
                            ("--multiclass", args.multiclass)):
            if value:
                raise ValueError(f"{flag} applies to slice folders (--data), not to --volumes")
        train, val, split = load_volume_datasets(args.volumes, cfg.input_size, args.val_fraction, split_path,
                                                 cfg.seed, volume_window(args), args.drop_empty, cfg.mask_resize,
                                                 cfg.augment)
        log.info("volumes: %d train / %d val slices; split by volume in %s", len(train),
                 len(val) if val is not None else 0, split_path)
        return train, val, None
    if args.drop_empty:
        raise ValueError("--drop-empty applies to --volumes")
    if (args.resume and args.split is None and not (args.val_data or args.val_fraction)
            and os.path.exists(split_path)):
        # resuming: the run's own saved split keeps the validation slices (and best.pt's choice) as they were
        log.info("--resume: validating on the split saved in %s", split_path)
        args.split = split_path
    if args.split and os.path.exists(args.split):   # a saved slice split: exactly those train/val ids
        return _slices_from_split(args, cfg, classes)
    train, val, pseudo = load_slice_datasets(args.data, cfg.input_size, args.val_data, args.val_fraction,
                                             args.pseudo_data, cfg.seed, cfg.mask_resize, cfg.augment,
                                             args.multiclass, max(classes, 2), cfg.pseudo_intensity)
    if args.val_fraction:
        save_split(split_of(train, val, cfg.seed), split_path)
    return train, val, pseudo


def _slices_from_split(args, cfg, classes: int) -> tuple:
    from ..data.splits import load_split
    from ..train.datasets import open_pseudo_folder, open_slice_folder

    if args.val_data or args.val_fraction:
        raise ValueError(f"--split {args.split} exists and fixes the validation slices: drop --val-data/--val-fraction")
    parts = load_split(args.split)["parts"]
    if "train" not in parts:
        raise ValueError(f"--split {args.split}: no 'train' part (parts: {sorted(parts)})")
    labelled = dict(seed=cfg.seed, multiclass=args.multiclass, num_classes=max(classes, 2))
    train = open_slice_folder(args.data, cfg.input_size, ids=parts["train"], mask_resize=cfg.mask_resize,
                              augment=cfg.augment, **labelled)
    val = (open_slice_folder(args.data, cfg.input_size, ids=parts["val"], mask_resize=cfg.mask_resize, **labelled)
           if parts.get("val") else None)
    pseudo = (open_pseudo_folder(args.pseudo_data, cfg.input_size, cfg.seed, cfg.augment, cfg.pseudo_intensity,
                                 labelled=args.data) if args.pseudo_data else None)
    return train, val, pseudo


def run(args) -> int:
    from ..models import get_spec
    from ..models.registry import CheckpointError
    from ..train import Trainer, train_semi_supervised
    from ..train import distributed as D
    from ..train.datasets import DataModuleMissing, settings_from_checkpoint
    from ..train.presets import preset_for_model, resolve_config

    try:
        model_config = _key_values(args.config, "--config")
        loss_config = _key_values(args.loss_config, "--loss-config")
        overrides = _key_values(args.settings, "--set")
        check_device(args.device)
    except ValueError as exc:
        log.error("%s", exc)
        return 2
    overrides.update({k: v for k, v in dict(epochs=args.epochs, batch_size=args.batch_size, lr=args.lr,
                                            lr_schedule=args.lr_schedule, amp=args.amp, compile=args.compile,
                                            channels_last=args.channels_last, seed=args.seed,
                                            num_workers=args.workers, augment=args.augment, val_metric=args.val_metric,
                                            mask_resize=args.mask_resize).items() if v is not None})
    try:
        saved = settings_from_checkpoint(args.resume) if args.resume else None
        model = args.model or (saved and saved["model"])
        if not model:
            log.error("--model is required (or --resume a checkpoint that names it)")
            return 2
        if saved and saved["model"] != model:
            log.error("--resume %s holds model %r, not %r", args.resume, saved["model"], model)
            return 2
        get_spec(model)
        if saved and not args.config:
            model_config = saved["model_config"]
        if saved and not args.loss_config:
            loss_config = saved["criterion_config"]
        base = args.preset or (saved and saved["train_config"]) or preset_for_model(model)
        cfg = resolve_config(base, overrides)
    except CheckpointError as exc:
        log.error("%s", exc)
        return 1
    except (KeyError, ValueError) as exc:
        log.error("%s", exc.args[0] if exc.args else exc)
        return 2
    try:
        train, val, pseudo = _datasets(args, cfg, model_config)
    except DataModuleMissing as exc:
        log.error("%s", exc)
        return 1
    except (FileNotFoundError, ValueError) as exc:
        log.error("%s", exc)
        return 2

    info = D.init_distributed()
    # auto: the trainer's own choice (cuda:LOCAL_RANK if available, else cpu)
    common = dict(model_config=model_config, preset=cfg, device=None if args.device == "auto" else args.device,
                  criterion_config=loss_config,
                  progress=not args.no_progress, input_info=_input_info(args))
    try:
        if pseudo is not None:
            out = train_semi_supervised(model, pseudo, train, args.out, val_dataset=val,
                                        pseudo_overrides={"epochs": args.pseudo_epochs}, resume_stage=args.resume,
                                        **common)
            lines = [_summary(out["pseudo"], "pseudo-label stage: ") if "pseudo" in out else None,
                     _summary(out["finetune"], "fine-tune stage: ")]
        else:
            trainer = Trainer(model, train_dataset=train, val_dataset=val, out_dir=args.out, **common)
            if args.resume:
                trainer.resume(args.resume)
            lines = [_summary(trainer.fit(), f"{model}: ")]
    except CheckpointError as exc:
        log.error("%s", exc)
        return 1
    except FileNotFoundError as exc:        # e.g. --config pretrained_backbone=PATH that is not there
        log.error("%s", exc)
        return 2
    except TypeError as exc:
        if "unexpected keyword argument" not in str(exc):
            raise
        log.error("--config: %s (see the model's options in the README)", exc)
        return 2
    except KeyboardInterrupt:
        log.error("interrupted; continue with --resume %s/last.pt", args.out)
        return 1
    except (FloatingPointError, RuntimeError, ValueError) as exc:
        log.error("training failed: %s", exc, exc_info=log.isEnabledFor(logging.DEBUG))
        return 1
    finally:
        D.cleanup()
    if info.is_main:
        for line in lines:
            if line:
                sys.stdout.write(line + "\n")
    return 0

"""`covseg crossval`: repeated k-fold cross-validation of several models, and its results table
(parsing and report writing; the study itself is covseg_fast.experiments.crossval).

Exit codes: 0 every fold trained and scored, 1 some fold failed (recorded in the table), 2 usage error.
"""
from __future__ import annotations

import datetime
import json
import logging
import os

from ..atomic import atomic_write
from ..devices import check_device
from .data_source import VOLUME_LAYOUTS, add_source_options, volume_window
from .input_options import add_device_option
from .train import _key_values

log = logging.getLogger("covseg.crossval")

DEFAULT_MODELS = ["msa_unet", "unet", "refnet"]


def add_parser(sub) -> None:
    p = sub.add_parser("crossval", help="k-fold cross-validation of models over seeds, with a results table",
                       description="Train and score every model on k folds of a labelled slice folder, or of "
                                   "labelled CT volumes split by patient, for each seed; writes OUT/results.json "
                                   "and OUT/results.md. Re-running continues an interrupted study (finished folds "
                                   "are skipped).")
    add_source_options(p, data_help="labelled slice folder (Imgs/, GT/, optional Edge/): folds split slices",
                       volumes_help=f"folder of labelled CT volumes (NIfTI) in a public layout: {VOLUME_LAYOUTS}; "
                                    "folds split volumes, a patient's volumes together, and every axial slice of "
                                    "a held-out volume is scored",
                       drop_empty_help="--volumes: train and score only slices with infection (MSA-UNet paper's "
                                       "option)")
    p.add_argument("--out", required=True, help="study folder (splits, runs, results)")
    p.add_argument("--models", nargs="+", default=DEFAULT_MODELS, metavar="MODEL",
                   help=f"registered models to compare (default: {' '.join(DEFAULT_MODELS)})")
    p.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2], help="seeds (default 0 1 2)")
    p.add_argument("--folds", type=int, default=5, help="k (default 5)")
    p.add_argument("--only-folds", nargs="+", type=int, metavar="F",
                   help="run only these folds now (spread a long study over several calls)")
    p.add_argument("--config", nargs="+", action="extend", metavar="MODEL:KEY=VALUE",
                   help="model configuration of one model, e.g. msa_unet:base=16")
    p.add_argument("--set", nargs="+", action="extend", dest="settings", metavar="KEY=VALUE",
                   help="training setting for every model, e.g. epochs=20 input_size=128")
    p.add_argument("--set-for", nargs="+", action="extend", metavar="MODEL:KEY=VALUE",
                   help="training setting for one model, e.g. refnet:batch_size=4")
    p.add_argument("--preset", nargs="+", action="extend", metavar="[MODEL:]PRESET",
                   help="training preset for every model, or for one (default: each model's paper preset)")
    p.add_argument("--epochs", type=int, help="shorthand for --set epochs=N")
    p.add_argument("--pseudo-data", help="pseudo-labelled slice folder: every model trains on it first, then "
                                         "fine-tunes on the training folds (Semi-Inf-Net)")
    p.add_argument("--pseudo-epochs", type=int, help="epochs of the pseudo-label stage (default: --epochs)")
    add_device_option(p)
    p.add_argument("--protocol", choices=["infnet", "threshold"], default="infnet",
                   help="scoring protocol, as covseg evaluate --protocol")
    p.add_argument("--table", metavar="PATH", help="also write the Markdown table here (e.g. docs/results.md)")
    p.add_argument("--report-only", action="store_true", help="rebuild the table from finished folds; train nothing")
    p.add_argument("--progress", action="store_true", help="training progress bars")
    p.set_defaults(run=run)


def _per_model(items: list[str] | None, flag: str, models: list[str]) -> dict[str, dict]:
    """["msa_unet:base=16"] → {"msa_unet": {"base": 16}}; raises ValueError on a bad item or unknown model."""
    out: dict[str, list[str]] = {m: [] for m in models}
    for item in items or []:
        model, sep, kv = item.partition(":")
        if not sep:
            raise ValueError(f"{flag} expects MODEL:KEY=VALUE, got {item!r}")
        if model not in out:
            raise ValueError(f"{flag} {item!r}: {model!r} is not one of --models {models}")
        out[model].append(kv)
    return {m: _key_values(kvs, flag) for m, kvs in out.items()}


def _presets(items: list[str] | None, models: list[str]) -> dict[str, str]:
    """["refnet"] → every model; ["unet:msa_unet"] → that model. Unknown names fail later, in Arm."""
    out: dict[str, str] = {}
    for item in items or []:
        model, sep, name = item.rpartition(":")
        if not sep:
            out.update({m: name for m in models})
        elif model in models:
            out[model] = name
        else:
            raise ValueError(f"--preset {item!r}: {model!r} is not one of --models {models}")
    return out


def _device_name(device: str) -> str:
    import platform

    import torch

    if device.startswith("cuda"):
        return torch.cuda.get_device_name(torch.device(device))
    n = torch.get_num_threads()
    return f"CPU ({platform.processor() or platform.machine()}, {n} thread{'s' if n != 1 else ''})"


def write_report(study, args) -> dict:
    """Aggregate the study's finished folds into OUT/results.json, OUT/results.md (and --table)."""
    from ..experiments.crossval import code_commit, command_line
    from ..experiments.results_table import aggregate, format_markdown
    from ..info import versions

    command = command_line()
    previous = os.path.join(args.out, "results.json")
    if args.report_only and os.path.exists(previous):
        # the table should name the command that trained the models, not the one that rebuilt it
        with open(previous) as fh:
            command = json.load(fh).get("command", command)
    # the table shows what OUT/runs holds, as its folds recorded it, whatever this call's options
    results = study.collect()
    recorded_folds = {r["folds"] for r in results if "folds" in r}
    folds = recorded_folds.pop() if len(recorded_folds) == 1 else study.folds
    seeds = sorted({r["seed"] for r in results} | (set() if args.report_only else set(study.seeds)))
    meta = {"date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
            "command": command, "commit": code_commit(), "versions": versions(),
            "device": _device_name(study.device), **study.source.describe(), "seeds": seeds,
            "protocol": study.protocol}
    report = aggregate(results, study.report_arms(results, include_untrained=not args.report_only), folds, meta)
    text = format_markdown(report)
    os.makedirs(args.out, exist_ok=True)
    with atomic_write(os.path.join(args.out, "results.json"), "w") as fh:
        json.dump(report, fh, indent=1)
        fh.write("\n")
    md = os.path.join(args.out, "results.md")
    with atomic_write(md, "w") as fh:
        fh.write(text)
    if args.table:
        os.makedirs(os.path.dirname(os.path.abspath(args.table)), exist_ok=True)
        with atomic_write(args.table, "w") as fh:
            fh.write(text)
    return report


def run(args) -> int:
    from ..experiments.crossval import Arm, CrossValidation
    from ..experiments.sources import SliceFolderSource, VolumeFolderSource

    try:
        if args.volumes is None and args.drop_empty:
            raise ValueError("--drop-empty applies to --volumes")
        source = (VolumeFolderSource(args.volumes, volume_window(args), args.drop_empty) if args.volumes is not None
                  else SliceFolderSource(args.data, window=args.window))
        configs = _per_model(args.config, "--config", args.models)
        per_model = _per_model(args.set_for, "--set-for", args.models)
        common = _key_values(args.settings, "--set")
        if args.epochs is not None:
            common["epochs"] = args.epochs
        check_device(args.device)
        if len(set(args.models)) != len(args.models):
            raise ValueError(f"--models lists a model twice: {args.models}")
        presets = _presets(args.preset, args.models)
        arms = [Arm(label=m, model=m, model_config=configs[m], overrides={**common, **per_model[m]},
                    preset=presets.get(m), pseudo_data=args.pseudo_data, pseudo_epochs=args.pseudo_epochs)
                for m in args.models]
        holder: dict = {}
        study = CrossValidation(source, args.out, arms, args.seeds, args.folds, args.only_folds,
                                device=None if args.device == "auto" else args.device, protocol=args.protocol,
                                progress=args.progress,
                                on_fold_done=lambda: write_report(holder["study"], args))
        holder["study"] = study
    except (KeyError, ValueError, FileNotFoundError) as exc:
        log.error("%s", exc.args[0] if exc.args else exc)
        return 2
    if not args.report_only:
        try:
            study.run()
        except KeyboardInterrupt:
            log.error("interrupted; run the same command again to continue")
            write_report(study, args)
            return 1
        except ValueError as exc:   # finished folds or a saved split that this call's settings contradict
            log.error("%s", exc)
            return 2
    report = write_report(study, args)
    failed = sum(len(a["failures"]) for a in report["arms"])
    for arm in report["arms"]:
        s = arm["summary"]
        log.info("%s: %d complete seed(s)%s", arm["label"], arm["n_complete_seeds"],
                 f", Dice {s['Dice']['mean']:.4f} ± {s['Dice']['std']:.4f}" if s else "")
    log.info("results: %s%s", os.path.join(args.out, "results.md"), f" and {args.table}" if args.table else "")
    if failed:
        log.error("%d fold(s) failed; see the table", failed)
    return 1 if failed else 0

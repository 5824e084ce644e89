"""`covseg screen`: batch screening of CT volumes (NIfTI files, DICOM series, folders, globs, lists).

Exit codes: 0 every case screened (status ok or warning), 1 some cases failed (see failures.csv), 2 usage
error (nothing screened: bad options, missing inputs, a bad checkpoint, an output folder refused, full or in
use; or decoding worker processes that die as soon as they start: rerun with --workers 0), 3 the batch
reports could not be written (disk full, I/O error; the previous reports are kept), 130
interrupted (Ctrl-C; rerun with --resume).
"""
from __future__ import annotations

import logging
import os
import re

from .input_options import add_input_size_option, add_tta_option

log = logging.getLogger("covseg.screen")

ASSETS = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "assets")
DEMO_VOLUME = os.path.join(ASSETS, "demo_ct.nii.gz")
DEMO_CHECKPOINT = os.path.join(ASSETS, "demo_checkpoint.pt")
DEFAULT_DECODE_TIMEOUT_S = 600.0  # = covseg_fast.inference.decoding.DEFAULT_TIMEOUT_S (not imported: --help stays fast)
DEVICES = re.compile(r"auto|cpu|cuda(:\d+)?")
BACKEND_CHOICES = ("auto", "torch", "compile", "onnxruntime", "tensorrt")  # = inference.backends.CHOICES
CPU_BATCH, CUDA_BATCH = 8, 16  # --batch-size defaults
BACKEND_ENV = "COVSEG_SCREEN_BACKEND"  # the --backend default when set (e.g. a site that wants eager torch)


def add_parser(sub) -> None:
    p = sub.add_parser("screen", help="segment lung infection in many CT volumes; masks, burden, reports",
                       description="Screen CT volumes: NIfTI files, DICOM series folders, directories "
                       "(recursive), globs or text files listing paths.")
    p.add_argument("inputs", nargs="*", help="NIfTI files, DICOM folders, directories, globs, or .txt lists")
    p.add_argument("-o", "--output", default=None, help="output directory (default: covseg_screen_out)")
    p.add_argument("--checkpoint", help="checkpoint written by covseg train (save_checkpoint)")
    p.add_argument("--model", help="expected model name in the checkpoint (checked)")
    default_backend = os.environ.get(BACKEND_ENV) or "auto"
    if default_backend not in BACKEND_CHOICES:
        default_backend = "auto"  # a bad value must not break --help; argparse checks what the user types
    p.add_argument("--backend", choices=BACKEND_CHOICES, default=default_backend,
                   help=f"how the model runs (default {default_backend}; ${BACKEND_ENV} sets it): auto (onnxruntime "
                   "on a CPU when installed, else eager torch; on CUDA TensorRT, else torch.compile, else torch), "
                   "eager torch (fused ops), torch.compile, onnxruntime or TensorRT (exported once into "
                   "OUTPUT/.covseg_cache, reused for the same checkpoint)")
    p.add_argument("--threads", type=int, default=None, help="CPU threads of the model (torch and onnxruntime "
                   "intra-op threads; default: every CPU this process may use); decoding workers and writers run "
                   "one compute thread each")
    p.add_argument("--device", default="auto", help="auto (cuda if available), cpu, cuda or cuda:N")
    p.add_argument("--batch-size", type=int, default=None, help="slices per model batch, across volumes (default "
                   f"{CPU_BATCH} on a CPU, the fastest there and half the memory of 16: "
                   f"benchmarks/results/cpu_layout_batch_1thread.json; {CUDA_BATCH} on CUDA)")
    p.add_argument("--workers", type=int, default=2, help="decoding worker processes (0: in the main process)")
    p.add_argument("--decode-timeout", type=float, default=None, metavar="SECONDS",
                   help="fail a case whose decoding (reading + anatomy) takes longer, stop its stuck worker "
                   f"and go on (default {DEFAULT_DECODE_TIMEOUT_S:g}; 0: no limit; needs --workers ≥ 1: with --workers 0 "
                   "a case decodes in the main process, which nothing can stop)")
    p.add_argument("--writers", type=int, default=None,
                   help="writer threads (masks, probabilities, montages, JSON; gzip and PNG encoding run in "
                   "parallel); default min(4, CPUs)")
    p.add_argument("--window", default=None,
                   help="HU window mapped to [0, 1]; write it with '=' as the low end is negative: --window=-1250,250 "
                   "(default: the window the checkpoint was trained with on CT volumes, else -1250,250, the lung "
                   "window)")
    p.add_argument("--threshold", type=float, default=0.5, help="probability threshold of the mask (one-channel "
                   "models; a multi-class model gives each voxel its most probable class)")
    add_input_size_option(p)
    add_tta_option(p)
    p.add_argument("--shard", default=None, help="K/N: process every N-th case from K (0-based); default from "
                   "torchrun's RANK/WORLD_SIZE")
    p.add_argument("--resume", action="store_true", help="skip cases whose outputs are complete, redo the rest")
    p.add_argument("--overwrite", action="store_true", help="replace existing outputs")
    p.add_argument("--save-probabilities", action="store_true", help="also write <case>_probabilities.nii.gz (the "
                   "model's infection probability everywhere, not restricted to the lungs)")
    p.add_argument("--save-unrestricted-mask", action="store_true", help="also write "
                   "<case>_infection_unrestricted.nii.gz: the model's mask before it is restricted to the lungs")
    p.add_argument("--save-lung-mask", action="store_true", help="also write <case>_lungmask.nii.gz (1 right lung, "
                   "2 left lung)")
    p.add_argument("--save-label-map", action="store_true", help="also write <case>_labelmap.nii.gz (0 background, "
                   "1 right lung, 2 left lung, 3 infection; a multi-class model: 2 + class, 3 GGO, 4 consolidation)")
    p.add_argument("--no-masks", action="store_true", help="do not write <case>_infection.nii.gz (the infection "
                   "within the lungs and a 5 mm margin)")
    p.add_argument("--no-montage", action="store_true", help="do not write the PNG overlay montage")
    p.add_argument("--report-format", choices=["json", "csv", "both"], default="both",
                   help="batch summary format (per-case JSON and failures.csv are always written)")
    p.add_argument("--allow-output-in-input", action="store_true", help="allow --output inside an input folder")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument("--merge-shards", metavar="DIR", default=None,
                   help="merge summary_shardKofN.csv/.json and failures_shardKofN.csv of all N shards in DIR into "
                   "summary.csv/.json and failures.csv (run once every shard has finished); nothing is screened")
    p.add_argument("--demo", action="store_true", help="screen the demo CT volume shipped in the package "
                   "with the shipped demo checkpoint")
    p.set_defaults(run=run)


def _parse_window(text: str) -> tuple[float, float]:
    from ..inference.errors import UsageError

    try:
        lo, hi = (float(v) for v in text.split(","))
    except ValueError:
        raise UsageError(f"--window expects LOW,HIGH in HU (e.g. -1250,250), got {text!r}") from None
    if not hi > lo:
        raise UsageError(f"--window {text}: HIGH must be greater than LOW")
    return lo, hi


def _model_input(args, payload: dict, checkpoint: str):
    """Input size and HU window: --input-size/--window, else what the checkpoint recorded (models.model_input)."""
    from ..inference.errors import UsageError
    from ..models.model_input import resolve_input
    from ..models.registry import CheckpointError
    from .input_options import input_size_arg

    try:
        return resolve_input(payload, checkpoint, size=input_size_arg(args),
                             window=None if args.window is None else _parse_window(args.window))
    except (CheckpointError, ValueError) as exc:
        raise UsageError(str(exc)) from None


def _device(text: str) -> str:
    import torch

    from ..inference.errors import UsageError

    local = os.environ.get("LOCAL_RANK", "")
    if not DEVICES.fullmatch(text):
        raise UsageError(f"--device {text!r}: expected auto, cpu, cuda or cuda:N (e.g. cuda:1)")
    if text == "auto":
        if not torch.cuda.is_available():
            return "cpu"
        text = "cuda"
    try:
        dev = torch.device(text)
    except RuntimeError as exc:
        raise UsageError(f"--device {text!r}: {exc}") from None
    if dev.type != "cuda":
        return text
    if not torch.cuda.is_available():
        raise UsageError(f"--device {text}: CUDA is not available on this machine")
    # plain "cuda" under torchrun: one GPU per local rank (an explicit cuda:N is taken as given)
    try:
        index = dev.index if dev.index is not None else int(local or 0)
    except ValueError:
        raise UsageError(f"--device {text}: LOCAL_RANK={local!r} is not a GPU index") from None
    if index >= torch.cuda.device_count():
        raise UsageError(f"--device {text}{f' (LOCAL_RANK={local})' if dev.index is None and local else ''}: "
                         f"GPU {index} does not exist; this machine has {torch.cuda.device_count()}")
    return f"cuda:{index}"


def run(args) -> int:
    from ..io import DiscoveryError
    from ..inference.errors import (EXIT_INTERRUPTED, EXIT_OUTPUT, EXIT_USAGE, ReportWriteError, ScreenInterrupted,
                                    UsageError, WorkersUnavailable)

    try:
        return _run(args)
    except (UsageError, DiscoveryError, WorkersUnavailable) as exc:
        log.error("%s", exc)
        return EXIT_USAGE
    except ReportWriteError as exc:
        log.error("%s", exc)
        return EXIT_OUTPUT
    except ScreenInterrupted as exc:
        log.error("%s", exc)
        return EXIT_INTERRUPTED
    except KeyboardInterrupt:  # before or after the screening loop (which reports how far it got itself)
        log.error("interrupted; rerun with --resume (complete cases are kept)")
        return EXIT_INTERRUPTED


def _run(args) -> int:
    from ..inference.errors import UsageError

    inputs, checkpoint = list(args.inputs), args.checkpoint
    if args.merge_shards is not None:
        return _merge(args)
    if args.demo:
        if not os.path.isfile(DEMO_VOLUME):
            raise UsageError(f"--demo: the demo volume {DEMO_VOLUME} is missing from this installation")
        if checkpoint is None:
            if not os.path.isfile(DEMO_CHECKPOINT):
                raise UsageError(f"--demo: the demo checkpoint {DEMO_CHECKPOINT} is not shipped in this build "
                                 "(it is trained with `covseg train`); pass --checkpoint PATH to use your own")
            checkpoint = DEMO_CHECKPOINT
        inputs = inputs or [DEMO_VOLUME]
    if not inputs:
        raise UsageError("no inputs: give NIfTI files, DICOM folders, directories, globs or a list file "
                         "(or --demo)")
    if checkpoint is None:
        raise UsageError("--checkpoint is required (a model without trained weights cannot screen)")
    if ((args.batch_size is not None and args.batch_size < 1) or args.workers < 0
            or (args.writers is not None and args.writers < 1)):
        raise UsageError("--batch-size must be ≥ 1, --workers ≥ 0 and --writers ≥ 1")
    decode_timeout = DEFAULT_DECODE_TIMEOUT_S if args.decode_timeout is None else args.decode_timeout
    if not decode_timeout >= 0:
        raise UsageError(f"--decode-timeout must be ≥ 0 seconds (0: no limit), got {args.decode_timeout}")
    if args.decode_timeout and args.workers == 0:
        log.warning("--decode-timeout does not apply with --workers 0 (decoding in the main process cannot be "
                    "stopped): a stuck decoder would stop the batch; use --workers 1 or more")
    if not 0.0 < args.threshold < 1.0:
        raise UsageError(f"--threshold must be in (0, 1), got {args.threshold}")
    if args.threads is not None and args.threads < 1:
        raise UsageError(f"--threads must be ≥ 1, got {args.threads}")
    # the checks above need no torch: a usage error answers at once
    from .. import __version__
    from ..inference.batch import screen_batch
    from ..inference.backends import resolve_backend
    from ..inference.cpu_runtime import apply_threads, inference_threads, tune_allocator
    from ..inference.model_info import model_record
    from ..inference.screener import ScreenConfig, Screener, default_writers
    from ..models.registry import MODELS, CheckpointError, get_spec, model_from_checkpoint, read_checkpoint
    from ..models.model_input import plane_adapter
    from ..models.tta import with_tta

    if args.model is not None and args.model not in MODELS:
        raise UsageError(f"--model {args.model!r}: unknown model; known models: {', '.join(sorted(MODELS))}")
    try:
        payload = read_checkpoint(checkpoint)
    except CheckpointError as exc:
        raise UsageError(str(exc)) from None
    model_input = _model_input(args, payload, checkpoint)
    log.info("input %d×%d px (%s); HU window %g … %g (%s); %s slices", *model_input.size,
             model_input.size_source, *model_input.window, model_input.window_source, model_input.plane)
    device = _device(args.device)
    batch_size = args.batch_size or (CPU_BATCH if device == "cpu" else CUDA_BATCH)
    out_dir = args.output or ("covseg_demo_out" if args.demo else "covseg_screen_out")
    cfg = ScreenConfig(out_dir=out_dir, window=model_input.window, input_size=model_input.size,
                       threshold=args.threshold, batch_size=batch_size,
                       workers=args.workers, device=device, save_masks=not args.no_masks,
                       save_probabilities=args.save_probabilities, montage=not args.no_montage,
                       save_unrestricted_mask=args.save_unrestricted_mask, save_lung_mask=args.save_lung_mask,
                       save_label_map=args.save_label_map,
                       progress=not args.no_progress, decode_timeout_s=decode_timeout,
                       writers=default_writers() if args.writers is None else args.writers)

    threads = inference_threads(args.threads)
    allocator = tune_allocator()  # before the model allocates anything (cpu_runtime: why, and the off-switch)
    apply_threads(threads)

    def factory() -> Screener:
        try:
            model = model_from_checkpoint(payload, checkpoint, expect=args.model)
        except CheckpointError as exc:
            raise UsageError(str(exc)) from None
        name = model.covseg_name
        choice = resolve_backend(args.backend, device)
        runnable, choice = _build_backend(model, choice, device, out_dir, threads, model_input.size, batch_size)
        log.info("model %s (%s, %s parameters); device %s; backend %s (%s); %d inference thread(s), %d decoding "
                 "worker(s), %d writer(s); glibc allocator tuning %s", name, checkpoint,
                 f"{sum(p.numel() for p in model.parameters()):,}", device, choice.name, choice.reason, threads,
                 cfg.workers, cfg.writers, "on" if allocator else "off")
        meta = {**model_record(model, checkpoint, payload), "covseg_version": __version__, "backend": choice.name,
                "backend_reason": choice.reason, "threads": threads, "tta": args.tta, **model_input.as_record()}
        runnable = plane_adapter(runnable, model_input.plane)  # slices as the model was trained on them
        return Screener(with_tta(runnable, args.tta), get_spec(name), cfg, meta)

    code, res, s = screen_batch(inputs, factory, cfg, resume=args.resume, overwrite=args.overwrite,
                                shard=args.shard, allow_output_in_input=args.allow_output_in_input,
                                report_format=args.report_format)
    for f in res.failures:
        log.error("failed: %s: %s", f["path"], f["reason"])
    log.info("done: %d ok, %d with warnings (burden not trustworthy: see their warnings), %d failed, %d already "
             "complete; %d slices in %.1f s (%.2f volumes/s, %.1f slices/s); outputs in %s", s["ok"], s["warning"],
             s["failed"], s["skipped_complete"], s["slices"], s["wall_s"],
             s["volumes_per_s"], s["slices_per_s"], os.path.abspath(s["output_dir"]))
    if s["screened"] or s["failed"]:
        log.info("%s", s["stage_line"])
    return code


def _build_backend(model, choice, device: str, out_dir: str, threads: int, size, batch_size: int):
    """(runnable module, the backend actually used): a backend ``auto`` chose that cannot start falls back to
    eager torch with a warning; one the user named is a usage error."""
    from ..inference.backends import BackendChoice, make_backend
    from ..inference.errors import UsageError

    try:
        return make_backend(model, choice.name, device, os.path.join(out_dir, ".covseg_cache"), batch_size=batch_size,
                            size=size, threads=threads), choice
    except Exception as exc:  # noqa: BLE001  (auto: whatever stops an export, eager torch still serves)
        if not choice.auto:
            if isinstance(exc, (ValueError, RuntimeError)):
                raise UsageError(f"--backend {choice.name}: {exc}") from None
            raise
        log.warning("--backend auto: %s cannot run here (%s); using eager torch", choice.name, exc)
        return model, BackendChoice("torch", f"auto: {choice.name} failed ({exc})", True)


def _merge(args) -> int:
    from ..inference.errors import UsageError
    from ..inference.shard_reports import merge_shard_reports

    if args.inputs or args.demo:
        raise UsageError("--merge-shards DIR merges reports only: give no inputs and no --demo")
    code, s = merge_shard_reports(args.merge_shards)
    log.info("merged the reports of %d shards: %d case(s) screened (%d ok, %d with warnings), %d failed → %s",
             s["shards"], s["screened"], s["ok"], s["warning"], s["failed"], os.path.abspath(s["output_dir"]))
    return code

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

# torch-free (--help stays fast): the options' home, shared with the Python API
from ..inference.screen_run import (BACKEND_ENV, BACKENDS, CPU_BATCH, CUDA_BATCH, DEFAULT_DECODE_TIMEOUT_S,  # noqa: F401
                                    DEMO_CHECKPOINT, DEMO_VOLUME, default_backend)
from .input_options import add_device_option, add_input_size_option, add_tta_option, add_window_option

log = logging.getLogger("covseg.screen")
BACKEND_CHOICES = BACKENDS  # = inference.backends.CHOICES (a test checks; not imported: --help stays fast)


def add_parser(sub) -> None:
    p = sub.add_parser("screen", help="segment lung infection in many CT volumes; masks, burden, reports",
                       description="Screen CT volumes: NIfTI files, DICOM series folders, directories "
                       "(recursive), globs or text files listing paths.")
    p.add_argument("inputs", nargs="*", help="NIfTI files, DICOM folders, directories, globs, or .txt lists")
    p.add_argument("-o", "--output", default=None, help="output directory (default: covseg_screen_out)")
    p.add_argument("--checkpoint", help="checkpoint written by covseg train (save_checkpoint)")
    p.add_argument("--model", help="expected model name in the checkpoint (checked)")
    backend = default_backend()
    p.add_argument("--backend", choices=BACKENDS, default=backend,
                   help=f"how the model runs (${BACKEND_ENV} sets the default): auto (onnxruntime on a CPU when "
                   "installed, else eager torch; on CUDA TensorRT, else torch.compile, else torch), eager torch "
                   "(fused ops), torch.compile, onnxruntime or TensorRT (exported once into OUTPUT/.covseg_cache, "
                   "reused for the same checkpoint)")
    p.add_argument("--threads", type=int, default=None, help="CPU threads of the model (torch and onnxruntime "
                   "intra-op threads; default: every CPU this process may use); decoding workers and writers run "
                   "one compute thread each")
    add_device_option(p)
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
    add_window_option(p, "HU window mapped to [0, 1] (default: the window the checkpoint was trained with on CT "
                         "volumes, else -1250 250, the lung window)")
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
    p.add_argument("--output-format", choices=["nifti", "dicom-seg", "both"], default="nifti",
                   help="infection mask as NIfTI, as a DICOM Segmentation (<case>_seg.dcm, referencing the source "
                   "series; DICOM series inputs only; the lungs too with --save-lung-mask; needs highdicom) or both")
    p.add_argument("--report-format", choices=["json", "csv", "both"], default="both",
                   help="batch summary format (per-case JSON and failures.csv are always written)")
    p.add_argument("--allow-output-in-input", action="store_true", help="allow --output inside an input folder")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument("--merge-shards", metavar="DIR", default=None,
                   help="merge summary_shardKofN.csv/.json and failures_shardKofN.csv of all N shards in DIR into "
                   "summary.csv/.json and failures.csv (run once every shard has finished); nothing is screened")
    p.add_argument("--demo", action="store_true", help="use the demo weights shipped in the package (unless "
                   "--checkpoint is given): without inputs it screens the shipped demo CT volume, with inputs it "
                   "screens them with the demo weights")
    p.set_defaults(run=run)


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


def options(args) -> "ScreenOptions":
    """The parsed command line as :class:`~covseg_fast.inference.screen_run.ScreenOptions`."""
    from ..inference.errors import UsageError
    from ..inference.screen_run import ScreenOptions
    from .input_options import input_size_arg

    try:
        size = input_size_arg(args)
    except ValueError as exc:
        raise UsageError(str(exc)) from None
    return ScreenOptions(
        checkpoint=args.checkpoint, model=args.model, demo=args.demo, backend=args.backend, device=args.device,
        threads=args.threads, batch_size=args.batch_size, workers=args.workers, decode_timeout=args.decode_timeout, writers=args.writers,
        window=args.window, threshold=args.threshold, input_size=size, tta=args.tta, shard=args.shard,
        resume=args.resume, overwrite=args.overwrite, save_probabilities=args.save_probabilities,
        save_unrestricted_mask=args.save_unrestricted_mask, save_lung_mask=args.save_lung_mask,
        save_label_map=args.save_label_map, masks=not args.no_masks, montage=not args.no_montage,
        output_format=args.output_format, report_format=args.report_format,
        allow_output_in_input=args.allow_output_in_input, progress=not args.no_progress)


def _run(args) -> int:
    from ..inference.screen_run import run_screen

    if args.merge_shards is not None:
        return _merge(args)
    code, res, s = run_screen(args.inputs, args.output, options(args))
    for f in res.failures:
        log.error("failed: %s: %s", f["path"], f["reason"])
    log.info("done: %d ok, %d with warnings (burden not trustworthy: see their warnings), %d failed, %d already "
             "complete; %d slices in %.1f s (%.2f volumes/s, %.1f slices/s); outputs in %s", s["ok"], s["warning"],
             s["failed"], s["skipped_complete"], s["slices"], s["wall_s"],
             s["volumes_per_s"], s["slices_per_s"], os.path.abspath(s["output_dir"]))
    if s["screened"] or s["failed"]:
        log.info("%s", s["stage_line"])
    return code


def _merge(args) -> int:
    from ..inference.errors import UsageError
    from ..inference.shard_reports import merge_shard_reports

    if args.inputs or args.demo:
        raise UsageError("--merge-shards DIR merges reports only: give no inputs and no --demo")
    code, s = merge_shard_reports(args.merge_shards)
    log.info("merged the reports of %d shards: %d case(s) screened (%d ok, %d with warnings), %d failed → %s",
             s["shards"], s["screened"], s["ok"], s["warning"], s["failed"], os.path.abspath(s["output_dir"]))
    return code

"""`covseg export`: a checkpoint to ONNX (and on to a TensorRT engine)."""
from __future__ import annotations

import json
import logging
import os

from .input_options import add_input_size_option, input_size_arg

log = logging.getLogger(__name__)


def add_parser(sub) -> None:
    from .screen import DEMO_VOLUME  # the packaged demo CT (screen.py imports nothing heavy)

    p = sub.add_parser("export", help="export a trained model to ONNX or a TensorRT engine",
                       description="Export a checkpoint's model to ONNX (standard ops only) or a TensorRT engine at "
                       "its trained input size, checked against eager PyTorch on slices of --check-volume.")
    p.add_argument("--checkpoint", required=True, help="checkpoint written by `covseg train`")
    p.add_argument("--model", help="expected model name (error if the checkpoint holds another)")
    p.add_argument("--format", choices=["onnx", "tensorrt"], default="onnx", help="what to export")
    p.add_argument("--out", required=True, help="output file (.onnx or .engine)")
    p.add_argument("--opset", type=int, default=18, help="ONNX opset version")
    add_input_size_option(p, aliases=("--size",))
    p.add_argument("--static", action="store_true", help="fixed batch and size instead of dynamic axes")
    p.add_argument("--check-volume", default=DEMO_VOLUME, metavar="CT",
                   help="CT volume (NIfTI or DICOM folder) whose slices, prepared as `covseg screen` does, check "
                   "onnxruntime against PyTorch (default: the packaged demo CT)")
    p.add_argument("--check-slices", type=int, default=8, help="evenly spaced slices of --check-volume to compare")
    p.add_argument("--precision", choices=["fp32", "fp16", "bf16"], default="fp16", help="TensorRT precision")
    p.add_argument("--max-batch", type=int, default=32, help="TensorRT profile: largest batch")
    p.add_argument("--opt-batch", type=int, help="TensorRT profile: batch to optimise for (default: min(16, max))")
    p.add_argument("--timing-cache", help="TensorRT timing cache file (read and updated)")
    p.add_argument("--overwrite", action="store_true", help="replace existing output files")
    p.set_defaults(run=run)


def run(args) -> int:
    from ..export import export_onnx
    from ..export.onnx_export import verify_real_input
    from ..export.real_input import screening_slices
    from ..io import VolumeError
    from ..models import CheckpointError, get_spec
    from ..models.model_input import resolve_input
    from ..models.registry import model_from_checkpoint, read_checkpoint

    onnx_path = args.out if args.format == "onnx" else os.path.splitext(args.out)[0] + ".onnx"
    if onnx_path == args.out and args.format == "tensorrt":
        log.error("--out %s: give the engine another extension than .onnx", args.out)
        return 2
    for path in {args.out, onnx_path}:
        if os.path.exists(path) and not args.overwrite:
            log.error("%s exists; pass --overwrite to replace it", path)
            return 2
    if args.check_slices < 1:
        log.error("--check-slices must be ≥ 1")
        return 2
    opt_batch = min(16, args.max_batch) if args.opt_batch is None else args.opt_batch
    if args.format == "tensorrt" and not 1 <= opt_batch <= args.max_batch:
        log.error("need 1 ≤ --opt-batch ≤ --max-batch, got %s and %s", opt_batch, args.max_batch)
        return 2
    try:
        payload = read_checkpoint(args.checkpoint)
        model = model_from_checkpoint(payload, args.checkpoint, expect=args.model)
        model_input = resolve_input(payload, args.checkpoint, size=input_size_arg(args))
    except (CheckpointError, ValueError) as exc:
        log.error("%s", exc)
        return 2
    log.info("input %d×%d px (%s); checked with HU window %g … %g (%s)", *model_input.size,
             model_input.size_source, *model_input.window, model_input.window_source)
    try:
        real = screening_slices(model.covseg_name, args.check_volume, args.check_slices, size=model_input.size,
                                window=model_input.window)
    except (VolumeError, OSError) as exc:
        log.error("--check-volume %s: %s", args.check_volume, exc)
        return 2
    if model_input.plane == "transposed":   # the graph takes the slices as the model was trained on them
        real = real.transpose(-2, -1).contiguous()
    metadata = {"covseg_input_size": json.dumps(list(model_input.size)),
                "covseg_window_hu": json.dumps(list(model_input.window)), "covseg_slice_plane": model_input.plane}
    report = export_onnx(model, onnx_path, size=model_input.size, opset=args.opset, dynamic_batch=not args.static,
                         dynamic_spatial=not args.static, metadata=metadata)
    verify_real_input(model, report, real, f"{real.shape[0]} slices of {os.path.basename(args.check_volume)}")
    print(report.summary())
    if args.format == "tensorrt":
        from ..export.tensorrt_engine import build_engine

        spec = get_spec(model.covseg_name)
        h, w = model_input.size
        batches = dict(min_batch=1, opt_batch=opt_batch, max_batch=args.max_batch)
        if args.static:  # the graph's batch is fixed: the profile can only be that batch
            batches = dict.fromkeys(batches, report.input_shape[0])
        try:
            settings = build_engine(onnx_path, args.out, precision=args.precision, height=h, width=w,
                                    channels=spec.in_channels, timing_cache=args.timing_cache, **batches)
        except (RuntimeError, ValueError) as exc:
            log.error("%s", exc)
            return 1
        print(f"TensorRT engine written to {args.out} ({settings.precision}, batch {settings.min_batch}.."
              f"{settings.max_batch}, built in {settings.build_seconds:.0f} s); settings in {args.out}.json")
    return 0

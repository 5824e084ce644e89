"""`covseg export`: a checkpoint to ONNX (and on to a TensorRT engine)."""
from __future__ import annotations

import logging
import os

log = logging.getLogger(__name__)


def add_parser(sub) -> None:
    p = sub.add_parser("export", help="export a trained model to ONNX or a TensorRT engine")
    p.add_argument("--checkpoint", required=True, help="checkpoint written by `covseg train`")
    p.add_argument("--model", help="expected model name (error if the checkpoint holds another)")
    p.add_argument("--format", choices=["onnx", "tensorrt"], default="onnx")
    p.add_argument("--out", required=True, help="output file (.onnx or .engine)")
    p.add_argument("--opset", type=int, default=18)
    p.add_argument("--size", type=int, nargs=2, metavar=("H", "W"), help="example/engine input size")
    p.add_argument("--static", action="store_true", help="fixed batch and size instead of dynamic axes")
    p.add_argument("--precision", choices=["fp32", "fp16", "bf16"], default="fp16", help="TensorRT precision")
    p.add_argument("--max-batch", type=int, default=32, help="TensorRT profile: largest batch")
    p.add_argument("--opt-batch", type=int, default=16, help="TensorRT profile: batch to optimise for")
    p.add_argument("--timing-cache", help="TensorRT timing cache file (read and updated)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing output file")
    p.set_defaults(run=run)


def run(args) -> int:
    from ..export import export_onnx
    from ..models import CheckpointError, get_spec, load_model

    if os.path.exists(args.out) and not args.overwrite:
        log.error("%s exists; pass --overwrite to replace it", args.out)
        return 2
    try:
        model = load_model(args.checkpoint, expect=args.model)
    except CheckpointError as exc:
        log.error("%s", exc)
        return 2
    onnx_path = args.out if args.format == "onnx" else os.path.splitext(args.out)[0] + ".onnx"
    report = export_onnx(model, onnx_path, size=args.size, opset=args.opset, dynamic_batch=not args.static,
                         dynamic_spatial=not args.static)
    print(report.summary())
    if args.format == "tensorrt":
        from ..export.tensorrt_engine import build_engine

        spec = get_spec(model.covseg_name)
        h, w = args.size or spec.input_size
        try:
            settings = build_engine(onnx_path, args.out, precision=args.precision, opt_batch=args.opt_batch,
                                    max_batch=args.max_batch, height=h, width=w, channels=spec.in_channels,
                                    timing_cache=args.timing_cache)
        except (RuntimeError, ValueError) as exc:
            log.error("%s", exc)
            return 1
        print(f"TensorRT engine written to {args.out} ({settings.precision}, batch {settings.min_batch}.."
              f"{settings.max_batch}, built in {settings.build_seconds:.0f} s); settings in {args.out}.json")
    return 0

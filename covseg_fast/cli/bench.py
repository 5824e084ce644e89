"""`covseg bench`: inference throughput of a model on this machine, per backend.

For kernel-level comparisons (eager vs torch.compile vs fused, roofline) use the pytest-benchmark
suites in benchmarks/; this command answers "how many slices per second will screening get here".
"""
from __future__ import annotations

import json
import logging
import time

from .input_options import add_device_option, add_input_size_option, input_size_arg

log = logging.getLogger(__name__)


def add_parser(sub) -> None:
    p = sub.add_parser("bench", help="measure model inference throughput on this machine",
                       description="Measure a model's inference throughput (slices/s) on this machine with one "
                       "backend, on random input of the model's input size; optionally write the result as JSON.")
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--checkpoint", help="a checkpoint written by covseg train")
    src.add_argument("--model", help="a registered model name (random weights), e.g. msa_unet")
    p.add_argument("--config", nargs="*", default=[], metavar="KEY=VALUE", help="model options with --model")
    p.add_argument("--backend", choices=["torch", "compile", "onnxruntime", "tensorrt"], default="torch",
                   help="how the model runs (as covseg screen --backend)")
    add_device_option(p)
    p.add_argument("--batch-size", type=int, default=16, help="slices per model batch")
    add_input_size_option(p, aliases=("--size",))
    p.add_argument("--iters", type=int, default=20, help="timed batches (after 3 warm-up batches)")
    p.add_argument("--json", help="also write the result to this JSON file")
    p.set_defaults(run=run)


def _parse_config(items: list[str]) -> dict:
    config = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep:
            raise ValueError(f"--config expects KEY=VALUE, got {item!r}")
        try:
            config[key] = json.loads(value)
        except json.JSONDecodeError:
            config[key] = value
    return config


def run(args) -> int:
    import tempfile

    import torch

    from ..atomic import atomic_write
    from ..inference.backends import make_backend
    from ..models import CheckpointError, get_model, get_spec
    from ..models.model_input import resolve_input
    from ..models.registry import model_from_checkpoint, read_checkpoint

    if args.batch_size < 1 or args.iters < 1:
        log.error("--batch-size and --iters must be ≥ 1")
        return 2
    from ..devices import resolve_device

    try:
        device = resolve_device(args.device)
    except ValueError as exc:
        log.error("%s", exc)
        return 2
    try:
        if args.checkpoint:
            payload = read_checkpoint(args.checkpoint)
            model = model_from_checkpoint(payload, args.checkpoint)
        else:
            model = get_model(args.model, **_parse_config(args.config))
            payload = {"model": model.covseg_name}  # no training record: the registered size
        model_input = resolve_input(payload, args.checkpoint or args.model, size=input_size_arg(args))
    except (CheckpointError, KeyError, ValueError, TypeError) as exc:
        log.error("%s", exc)
        return 2
    spec = get_spec(model.covseg_name)
    h, w = model_input.size
    x = torch.rand(args.batch_size, spec.in_channels, h, w, generator=torch.Generator().manual_seed(0)).to(device)
    with tempfile.TemporaryDirectory() as cache:
        try:
            runnable = make_backend(model.to(device), args.backend, device, cache, batch_size=args.batch_size,
                                    size=(h, w)).to(device)
        except (ValueError, RuntimeError) as exc:
            log.error("--backend %s: %s", args.backend, exc)
            return 2
        autocast = device.startswith("cuda") and args.backend in ("torch", "compile")

        def step():
            with torch.inference_mode(), torch.autocast(device.split(":")[0], torch.bfloat16, enabled=autocast):
                out = runnable(x)
            if device.startswith("cuda"):
                torch.cuda.synchronize()
            return out

        for _ in range(3):
            step()
        if device.startswith("cuda"):
            torch.cuda.reset_peak_memory_stats()
        start = time.perf_counter()
        for _ in range(args.iters):
            step()
        seconds = (time.perf_counter() - start) / args.iters
    result = {"model": model.covseg_name, "config": model.covseg_config, "backend": args.backend, "device": device,
              "device_name": torch.cuda.get_device_name() if device.startswith("cuda") else "cpu",
              "threads": torch.get_num_threads(), "batch_size": args.batch_size, "input": [spec.in_channels, h, w],
              "input_size_source": model_input.size_source,
              "ms_per_batch": seconds * 1e3, "images_per_s": args.batch_size / seconds,
              "peak_memory_bytes": torch.cuda.max_memory_allocated() if device.startswith("cuda") else None,
              "torch": torch.__version__}
    print(f"{model.covseg_name} ({args.backend}, {device}): batch {args.batch_size} × {spec.in_channels}×{h}×{w}: "
          f"{result['ms_per_batch']:.1f} ms/batch, {result['images_per_s']:.1f} images/s")
    if args.json:
        with atomic_write(args.json, "w") as fh:
            json.dump(result, fh, indent=1)
    return 0

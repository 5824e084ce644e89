"""CPU model-only rate of the shipped model by backend, memory layout and batch size (what `covseg screen`
defaults are chosen from), interleaved rounds, one process, the allocator tuning of screen applied.

    python benchmarks/bench_cpu_layout_batch.py --checkpoint CKPT --threads 1 \\
        --json benchmarks/results/cpu_layout_batch.json

Input: real slices (the Lung-PET-CT-Dx volume windowed and resized as screen does) repeated to ``--slices``.
Providers: ``torch`` (eager NCHW), ``torch_cl`` (eager, model and batch channels_last), ``onnxruntime``, each
at ``--batches``; ms per slice is the median over rounds.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))
from bench_screening import REAL, environment, shared_data  # noqa: E402


def main() -> int:
    import tempfile

    import torch

    from covseg_fast.inference.backends import make_backend
    from covseg_fast.inference.cpu_runtime import apply_threads, tune_allocator
    from covseg_fast.inference.screener import ScreenConfig, Screener
    from covseg_fast.io import read_case
    from covseg_fast.models.model_input import plane_adapter, resolve_input
    from covseg_fast.models.registry import get_spec, model_from_checkpoint, read_checkpoint

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--checkpoint", default=os.path.join(os.path.dirname(HERE), "covseg_fast", "assets",
                                                         "demo_checkpoint.pt"))
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--slices", type=int, default=64)
    ap.add_argument("--batches", type=int, nargs="+", default=[4, 8, 16, 32])
    ap.add_argument("--providers", nargs="+", default=["torch", "torch_cl", "onnxruntime"])
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--json", default=None)
    args = ap.parse_args()
    tune_allocator()
    apply_threads(args.threads)
    payload = read_checkpoint(args.checkpoint)
    info = resolve_input(payload, args.checkpoint)
    cache = tempfile.mkdtemp(prefix="covseg_layout_")
    runs = {}
    for p in args.providers:
        model = model_from_checkpoint(payload, args.checkpoint).eval()
        if p == "torch_cl":
            model = model.to(memory_format=torch.channels_last)
        backend = "onnxruntime" if p == "onnxruntime" else "torch"
        runs[p] = plane_adapter(make_backend(model, backend, "cpu", cache, threads=args.threads), info.plane)
    spec = get_spec(model.covseg_name)
    scr = Screener(runs["torch" if "torch" in runs else args.providers[0]], spec,
                   ScreenConfig(out_dir=cache, window=info.window, input_size=info.size, progress=False))
    vol = read_case(os.path.join(shared_data(), REAL[0]), "nifti").data
    x = scr.to_model_slices(vol)[0]
    x = torch.cat([x] * (args.slices // x.shape[0] + 1))[:args.slices]
    times: dict = {}
    with torch.inference_mode():
        for _ in range(args.rounds):
            for b in args.batches:
                for p, run in runs.items():
                    xb = x if p != "torch_cl" else x.contiguous(memory_format=torch.channels_last)
                    run(xb[:b])  # warm-up at this batch size
                    t0 = time.perf_counter()
                    for s in range(0, xb.shape[0], b):
                        run(xb[s:s + b])
                    times.setdefault(f"{p}/batch{b}", []).append(1000 * (time.perf_counter() - t0) / xb.shape[0])
                    print(f"{p:>12} batch {b:3d}: {times[f'{p}/batch{b}'][-1]:7.1f} ms/slice "
                          f"(load {os.getloadavg()[0]:.1f})", flush=True)
    result = {"environment": environment(args), "threads": args.threads, "input_size": list(info.size),
              "slices": args.slices, "rounds": args.rounds,
              "ms_per_slice_median": {k: statistics.median(v) for k, v in times.items()},
              "ms_per_slice_all": times, "load_average_end": os.getloadavg()}
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(result, fh, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())

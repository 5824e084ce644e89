"""`covseg screen` on the shipped model and real CT volumes: end to end vs model-only per backend, and the MONAI
script a user would write with the same model, interleaved in one run with the same threads.

    COVSEG_SHARED_DATA=/path/to/shared/data python benchmarks/bench_screening.py \\
        --checkpoint covseg_fast/assets/demo_checkpoint.pt --threads 1 2 --volumes 20 \\
        --json benchmarks/results/screening_cpu_e2e.json

Inputs: the real volumes of ``ct/`` (Lung-PET-CT-Dx 512×512×64 as NIfTI and as its DICOM series, the COPDGene
64×64×79 and the TotalSegmentator 120×126×164 crop) repeated to ``--volumes`` (symlinks: distinct case ids).
Each measurement is its own process with that side's defaults (covseg: its glibc allocator tuning; MONAI:
none), the same ``--threads``:

- ``model_only/<backend>``: the model alone (the backend exactly as `covseg screen` builds it, after its own
  warm-up batch) on the same slices, pre-windowed and pre-resized in memory, in the same batches: the ceiling;
- ``screen/<backend>``: ``python -m covseg_fast screen`` on the inputs (``--backend``, default workers and
  writers, masks + montage + JSON as by default, ``--overwrite`` into a folder whose export cache is warm);
  ``loop_s`` is its screening loop (the "done: … in X s" line), ``process_s`` the whole command;
- ``monai``: benchmarks/monai_screen.py (``loop_s`` after imports and model load, as for screen).

Rounds are interleaved (every provider once per round, in turn) so a change of the machine's load hits all
alike; the load average is recorded around every measurement (the development box is shared). Ratios use
the loop times of one round; the JSON keeps every measurement.
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
REAL = ["ct/lung_pet_ct_dx_A0001/Lung_Dx-A0001_5mm_kernelL_LPS.nii.gz", "ct/lung_pet_ct_dx_A0001/dicom",
        "ct/cip_copdgene_ct64/ct-64_LPS.nii.gz", "ct/totalseg_ct_cropped/ct_cropped.nii.gz"]
DONE = re.compile(r"(\d+) slices in ([\d.]+) s")


def shared_data() -> str:
    return os.environ.get("COVSEG_SHARED_DATA") or os.path.join(ROOT, "..", "shared", "data")


def make_inputs(folder: str, n: int) -> list[str]:
    """``n`` inputs cycling over the real volumes (symlinks, so each is its own case)."""
    real = [os.path.join(shared_data(), r) for r in REAL]
    missing = [p for p in real if not os.path.exists(p)]
    if missing:
        sys.exit(f"bench_screening: real volumes missing ({', '.join(missing)}); set COVSEG_SHARED_DATA")
    os.makedirs(folder, exist_ok=True)
    items = []
    for i in range(n):
        src = real[i % len(real)]
        dst = os.path.join(folder, f"v{i:03d}_" + ("dicom" if os.path.isdir(src) else os.path.basename(src)))
        os.symlink(src, dst)
        items.append(dst)
    return items


def model_only(checkpoint: str, backend: str, threads: int, batch: int, cache: str, inputs: list[str]) -> dict:
    """In this (child) process: the backend as screen builds it, on the inputs' slices staged in memory."""
    import torch

    from covseg_fast.inference.backends import make_backend
    from covseg_fast.inference.cpu_runtime import apply_threads, tune_allocator
    from covseg_fast.inference.screener import ScreenConfig, Screener
    from covseg_fast.io import discover, read_case
    from covseg_fast.models.model_input import plane_adapter, resolve_input
    from covseg_fast.models.registry import get_spec, model_from_checkpoint, read_checkpoint

    tune_allocator()
    apply_threads(threads)
    payload = read_checkpoint(checkpoint)
    model = model_from_checkpoint(payload, checkpoint)
    info = resolve_input(payload, checkpoint)
    run = plane_adapter(make_backend(model, backend, "cpu", cache, batch_size=batch, size=info.size, threads=threads),
                        info.plane)
    cfg = ScreenConfig(out_dir=cache, window=info.window, input_size=info.size, batch_size=batch, progress=False)
    scr = Screener(run, get_spec(model.covseg_name), cfg)
    cases, _ = discover(inputs)
    staged = {}
    for c in cases:
        if os.path.realpath(c.path) not in staged:
            staged[os.path.realpath(c.path)] = scr.to_model_slices(read_case(c.path, c.kind).data)[0]
    slices = torch.cat([staged[os.path.realpath(c.path)] for c in cases])
    scr._infer(slices[:batch])  # warm-up (onnxruntime and torch both plan on the first call)
    t0 = time.perf_counter()
    for s in range(0, slices.shape[0], batch):
        scr._infer(slices[s:s + batch])
    return {"loop_s": time.perf_counter() - t0, "slices": int(slices.shape[0]), "volumes": len(cases)}


def _child(cmd: list[str], env: dict) -> tuple[float, str, str]:
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=ROOT)
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd[:4])} … failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
    return wall, proc.stdout, proc.stderr


def measure(provider: str, args, threads: int, inputs: list[str], work: str, env: dict) -> dict:
    load_before = os.getloadavg()
    kind, _, backend = provider.partition("/")
    cache = os.path.join(work, f"screen_{backend}")
    if kind == "model_only":
        wall, text, _ = _child([sys.executable, __file__, "--_model-only", backend, "--checkpoint", args.checkpoint,
                             "--threads", str(threads), "--batch-size", str(args.batch_size), "--cache", cache,
                             *inputs], env)
        out = json.loads(text.strip().splitlines()[-1])
    elif kind == "screen":
        wall, stdout, stderr = _child([sys.executable, "-m", "covseg_fast", "screen", *inputs, "-o", cache, "--checkpoint",
                             args.checkpoint, "--backend", backend, "--threads", str(threads), "--batch-size",
                             str(args.batch_size), "--device", "cpu", "--no-progress", "--overwrite"], env)
        text = stdout + stderr
        slices, loop = DONE.search(text).groups()
        stage = next((ln for ln in text.splitlines() if "stages (busy s)" in ln), "")
        start = next((ln for ln in text.splitlines() if "inference thread" in ln), "")
        out = {"loop_s": float(loop), "slices": int(slices), "volumes": len(inputs), "stage_line": stage,
               "start_line": start}
    else:
        outdir = os.path.join(work, "monai")
        shutil.rmtree(outdir, ignore_errors=True)
        wall, text, _ = _child([sys.executable, os.path.join(HERE, "monai_screen.py"), *inputs, "-o", outdir,
                             "--checkpoint", args.checkpoint, "--threads", str(threads), "--batch-size",
                             str(args.batch_size)], env)
        out = json.loads(text.strip().splitlines()[-1])
    out.update(provider=provider, threads=threads, process_s=wall, load_before=load_before,
               load_after=os.getloadavg(), volumes_per_min=60 * out["volumes"] / out["loop_s"],
               slices_per_s=out["slices"] / out["loop_s"])
    print(f"  {provider:>22} threads {threads}: {out['loop_s']:7.1f} s loop ({out['volumes_per_min']:6.1f} vol/min, "
          f"{out['slices_per_s']:6.1f} slices/s), {wall:6.1f} s process, load {load_before[0]:.1f}", flush=True)
    return out


def environment(args) -> dict:
    import numpy
    import onnxruntime
    import torch

    def version(mod):
        try:
            return __import__(mod).__version__
        except ImportError:
            return None

    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, cwd=ROOT).stdout
    dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], capture_output=True, text=True,
                           cwd=ROOT).stdout.strip()
    cpu = next((ln.split(":", 1)[1].strip() for ln in open("/proc/cpuinfo") if ln.startswith("model name")), "?")
    return {"date": datetime.datetime.now().isoformat(timespec="seconds"), "commit": commit.strip(),
            "dirty": bool(dirty), "device": f"cpu ({cpu}, {os.cpu_count()} CPUs)", "python": sys.version.split()[0],
            "torch": torch.__version__, "onnxruntime": onnxruntime.__version__, "numpy": numpy.__version__,
            "monai": version("monai"), "checkpoint": os.path.abspath(args.checkpoint),
            "checkpoint_bytes": os.path.getsize(args.checkpoint)}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--checkpoint", default=os.path.join(ROOT, "covseg_fast", "assets", "demo_checkpoint.pt"))
    ap.add_argument("--threads", type=int, nargs="+", default=[1])
    ap.add_argument("--volumes", type=int, default=20)
    ap.add_argument("--rounds", type=int, default=1)
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--backends", nargs="+", default=["onnxruntime", "torch"])
    ap.add_argument("--no-monai", action="store_true")
    ap.add_argument("--json", default=None)
    ap.add_argument("--_model-only", dest="model_only", default=None, help=argparse.SUPPRESS)
    ap.add_argument("--cache", default=None, help=argparse.SUPPRESS)
    ap.add_argument("inputs", nargs="*", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.model_only:
        print(json.dumps(model_only(args.checkpoint, args.model_only, args.threads[0], args.batch_size, args.cache,
                                    args.inputs)))
        return 0
    work = tempfile.mkdtemp(prefix="covseg_bench_")
    env = {**os.environ, "PYTHONPATH": ROOT + os.pathsep + os.environ.get("PYTHONPATH", "")}
    env.pop("COVSEG_SCREEN_BACKEND", None)
    inputs = make_inputs(os.path.join(work, "in"), args.volumes)
    providers = [f"{k}/{b}" for b in args.backends for k in ("model_only", "screen")] + ([] if args.no_monai else
                                                                                         ["monai"])
    result = {"environment": environment(args), "volumes": args.volumes, "batch_size": args.batch_size,
              "inputs": REAL, "measurements": []}
    print(f"bench_screening: {args.volumes} volumes, threads {args.threads}, checkpoint {args.checkpoint}")
    for b in args.backends:  # the one-off export (cached in the output folder) is not what a rate measures
        measure(f"screen/{b}", args, args.threads[0], inputs[:1], work, env)
    for rnd in range(args.rounds):
        for threads in args.threads:
            for p in providers:
                m = measure(p, args, threads, inputs, work, env)
                m["round"] = rnd
                result["measurements"].append(m)
                if args.json:  # after every measurement: a run stopped early keeps what it measured
                    with open(args.json, "w") as fh:
                        json.dump(result, fh, indent=1)
    result["ratios"] = ratios(result["measurements"])
    for line in result["ratios"]:
        print("  " + json.dumps(line))
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(result, fh, indent=1)
    shutil.rmtree(work, ignore_errors=True)
    return 0


def ratios(ms: list[dict]) -> list[dict]:
    """Per round and thread count: screen / model-only per backend, and each screen against the MONAI script."""
    out = []
    for key in sorted({(m["round"], m["threads"]) for m in ms}):
        by = {m["provider"]: m for m in ms if (m["round"], m["threads"]) == key}
        row = {"round": key[0], "threads": key[1]}
        for p, m in by.items():
            if p.startswith("screen/"):
                b = p.split("/")[1]
                if f"model_only/{b}" in by:
                    row[f"{b}: screen / model-only"] = round(m["slices_per_s"] / by[f"model_only/{b}"]["slices_per_s"], 3)
                if "monai" in by:
                    row[f"{b}: screen / monai (volumes/min)"] = round(m["volumes_per_min"] / by["monai"]["volumes_per_min"], 3)
        out.append(row)
    return out


if __name__ == "__main__":
    sys.exit(main())

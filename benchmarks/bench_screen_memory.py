"""Peak memory and time of `covseg screen` on one volume of 64, 128, 256 and 512 slices of 512² (int16).

    COVSEG_SHARED_DATA=/path/to/shared/data python benchmarks/bench_screen_memory.py \\
        --json benchmarks/results/screen_memory_cpu.json

The volumes are synthetic but real CT: the 64 slices of Lung-PET-CT-Dx A0001 (512×512, int16) stacked to the
slice count (same header, geometry and HU), written as .nii.gz. Each size is screened in its own process with
the defaults (``--backend`` as given, masks + montage + JSON). Measured: the process tree's peak PSS (sampled
every 0.1 s from /proc/PID/smaps_rollup of the process and its descendants: pages shared by the forked
workers are counted once), and, for reference, the main process's VmHWM and its largest worker's
RUSAGE_CHILDREN max RSS (which counts the pages a forked worker shares with its parent). The goal (issue 25):
the tree's peak ≤ 4 × the int16 volume + 1 GB. A first, unrecorded run exports the model (cached).
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, HERE)
from bench_screening import REAL, environment, shared_data  # noqa: E402

CHILD = """
import json, resource, sys
from covseg_fast.cli.main import main
code = main(sys.argv[2:])
with open("/proc/self/status") as fh:
    own = next(int(l.split()[1]) for l in fh if l.startswith("VmHWM:"))
kids = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
with open(sys.argv[1], "w") as fh:
    json.dump({"code": code, "main_mb": own / 1024, "worker_mb": kids / 1024}, fh)
"""


def _descendants(pid: int) -> list[int]:
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        out.append(p)
        try:
            for task in os.listdir(f"/proc/{p}/task"):
                with open(f"/proc/{p}/task/{task}/children") as fh:
                    todo += [int(c) for c in fh.read().split()]
        except OSError:
            pass
    return out


def _tree_pss_kb(pid: int) -> int:
    total = 0
    for p in _descendants(pid):
        try:
            with open(f"/proc/{p}/smaps_rollup") as fh:
                total += next(int(ln.split()[1]) for ln in fh if ln.startswith("Pss:"))
        except (OSError, StopIteration):
            pass
    return total


def synthetic(path: str, slices: int) -> int:
    import nibabel as nib
    import numpy as np

    src = nib.load(os.path.join(shared_data(), REAL[0]))
    data = np.asarray(src.dataobj)
    reps = -(-slices // data.shape[2])
    vol = np.concatenate([data] * reps, axis=2)[:, :, :slices]
    img = nib.Nifti1Image(vol, src.affine, src.header)
    nib.save(img, path)
    return int(vol.nbytes)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--checkpoint", default=os.path.join(ROOT, "covseg_fast", "assets", "demo_checkpoint.pt"))
    ap.add_argument("--slices", type=int, nargs="+", default=[64, 128, 256, 512])
    ap.add_argument("--backend", default="onnxruntime")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--json", default=None)
    args = ap.parse_args()
    work = tempfile.mkdtemp(prefix="covseg_mem_")
    env = {**os.environ, "PYTHONPATH": ROOT + os.pathsep + os.environ.get("PYTHONPATH", "")}
    env.pop("COVSEG_SCREEN_BACKEND", None)
    out_dir = os.path.join(work, "out")
    rows = []
    # the first run exports the model to ONNX (cached in the output folder): not what is measured
    for i, n in enumerate([args.slices[0], *args.slices]):
        vol = os.path.join(work, f"ct_{n}.nii.gz")
        nbytes = synthetic(vol, n)
        stats = os.path.join(work, f"stats_{n}.json")
        t0 = time.perf_counter()
        err = open(os.path.join(work, f"stderr_{n}.txt"), "w+")
        proc = subprocess.Popen([sys.executable, "-c", CHILD, stats, "screen", vol, "-o", out_dir, "--checkpoint",
                                 args.checkpoint, "--backend", args.backend, "--threads", str(args.threads),
                                 "--device", "cpu", "--no-progress", "--overwrite"],
                                stdout=subprocess.DEVNULL, stderr=err, env=env, cwd=ROOT)
        peak_kb = 0
        while proc.poll() is None:
            peak_kb = max(peak_kb, _tree_pss_kb(proc.pid))
            time.sleep(0.1)
        wall = time.perf_counter() - t0
        err.seek(0)
        text = err.read()
        if proc.returncode != 0:
            sys.exit(text[-3000:])
        s = json.load(open(stats))
        stage = next((ln for ln in text.splitlines() if "stages (busy s)" in ln), "")
        tree = peak_kb / 1024
        goal = 4 * nbytes / 2**20 + 1024
        if i == 0:
            os.remove(vol)
            continue
        rows.append({"slices": n, "int16_mb": nbytes / 2**20, "tree_peak_pss_mb": tree, "main_vmhwm_mb": s["main_mb"],
                     "largest_worker_maxrss_mb": s["worker_mb"], "goal_mb": goal,
                     "meets_goal": tree <= goal, "process_s": wall, "stage_line": stage,
                     "load_average": os.getloadavg()})
        print(f"{n:4d} slices: int16 {nbytes / 2**20:6.0f} MB; tree peak PSS {tree:6.0f} MB (goal ≤ {goal:6.0f}); "
              f"main VmHWM {s['main_mb']:6.0f} MB, largest worker max RSS {s['worker_mb']:6.0f} MB; {wall:6.1f} s",
              flush=True)
        os.remove(vol)
    if args.json:
        with open(args.json, "w") as fh:
            json.dump({"environment": environment(args), "backend": args.backend, "threads": args.threads,
                       "rows": rows}, fh, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())

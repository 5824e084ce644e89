"""The screening script a MONAI user would write with covseg's model: the comparison point of bench_screening.py.

    python benchmarks/monai_screen.py --checkpoint CKPT --threads 1 -o OUT INPUT...

Per volume: LoadImaged → EnsureChannelFirstd → Orientationd(RAS) → ScaleIntensityRanged (the checkpoint's HU
window → [0, 1], clipped); its axial slices in batches of ``--batch-size``, turned to the plane the model was
trained on, resized to its input size (bilinear, antialiased), fed to the model (eager torch, as a user calls
it) through ``prepare_input``; sigmoid, resized back, thresholded at 0.5; Invertd back to the input's grid and
SaveImaged as NIfTI. No lung mask, burden, montage or report (covseg screen writes those too): this is the
least a user's own script does. Prints one JSON line: wall seconds of the loop (after imports and model load)
and of the whole process, volumes and slices. Needs ``pip install monai`` (a benchmark-only dependency).
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time

T_START = time.perf_counter()

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from monai.transforms import (Compose, EnsureChannelFirstd, Invertd, LoadImaged, Orientationd,  # noqa: E402
                              SaveImaged, ScaleIntensityRanged)

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from covseg_fast.models.model_input import resolve_input  # noqa: E402
from covseg_fast.models.registry import get_spec, model_from_checkpoint, prepare_input, read_checkpoint  # noqa: E402


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("inputs", nargs="+")
    ap.add_argument("-o", "--output", required=True)
    ap.add_argument("--checkpoint", required=True)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--batch-size", type=int, default=16)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    payload = read_checkpoint(args.checkpoint)
    model = model_from_checkpoint(payload, args.checkpoint).eval()
    spec = get_spec(model.covseg_name)
    info = resolve_input(payload, args.checkpoint)
    lo, hi = info.window
    transposed = info.plane != "radiological"
    pre = Compose([LoadImaged(keys="image", image_only=False), EnsureChannelFirstd(keys="image"),
                   Orientationd(keys="image", axcodes="RAS"),
                   ScaleIntensityRanged(keys="image", a_min=lo, a_max=hi, b_min=0.0, b_max=1.0, clip=True)])
    post = Compose([Invertd(keys="pred", transform=pre, orig_keys="image", nearest_interp=True),
                    SaveImaged(keys="pred", output_dir=args.output, output_postfix="seg", separate_folder=False,
                               resample=False, print_log=False)])
    t0 = time.perf_counter()
    slices = 0
    with torch.inference_mode():
        for path in args.inputs:
            data = pre({"image": path})
            vol = data["image"]  # (1, X, Y, Z) RAS
            # display orientation (patient left on the right, anterior up), slices first: (Z, 1, Y, X)
            grey = torch.as_tensor(vol[0]).flip(0, 1).permute(2, 1, 0).unsqueeze(1).float()
            if transposed:
                grey = grey.transpose(2, 3)
            plane = grey.shape[2:]
            out = torch.empty((grey.shape[0], *plane), dtype=torch.uint8)
            for s in range(0, grey.shape[0], args.batch_size):
                x = F.interpolate(grey[s:s + args.batch_size], size=tuple(info.size), mode="bilinear",
                                  antialias=True, align_corners=False)
                prob = torch.sigmoid(model(prepare_input(x, spec)).float())
                prob = F.interpolate(prob, size=tuple(plane), mode="bilinear", align_corners=False)
                out[s:s + args.batch_size] = (prob[:, 0] >= 0.5).to(torch.uint8)
            if transposed:
                out = out.transpose(1, 2)
            mask = out.permute(2, 1, 0).flip(0, 1).unsqueeze(0)  # back to (1, X, Y, Z) RAS
            data["pred"] = data["image"].clone().copy_(mask) if hasattr(data["image"], "copy_") else mask
            post(data)
            slices += int(vol.shape[-1])
    loop = time.perf_counter() - t0
    print(json.dumps({"loop_s": loop, "process_s": time.perf_counter() - T_START, "volumes": len(args.inputs),
                      "slices": slices, "threads": args.threads, "model": model.covseg_name}))
    return 0


if __name__ == "__main__":
    sys.exit(main())

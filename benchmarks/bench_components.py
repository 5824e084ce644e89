"""3-D connected components and per-slice hole filling for the lung mask: connected-components-3d (cc3d) vs
scipy.ndimage.label, and fill-voids vs scipy.ndimage.binary_fill_holes.

Run (CPU, < 2 min on 2 cores):
    COVSEG_SHARED_DATA=/path/to/shared/data OMP_NUM_THREADS=1 \\
    python -m pytest benchmarks/bench_components.py --benchmark-json benchmarks/results/components_cpu.json

Inputs: real masks of the Lung-PET-CT-Dx volume (512×512×64), and the same stacked four times (512×512×256,
a thin-slice scan's size); without the data folder, the packaged demo volume (128×128×64) and its stack:
- ``candidates``: what the anatomy labels (covseg_fast.inference.anatomy.lungs step 3): air-like voxels
  (-1500 < HU < -400) inside the body;
- ``air``: every voxel below -400 HU (air around the patient, the table, padding: many more components).
What is timed is what the anatomy needs: 6-connected labels plus each label's voxel count and bounding box
(cc3d: ``connected_components`` + ``statistics``; scipy: ``label`` + ``find_objects`` + ``bincount``). After
timing, both providers' partitions are checked to be the same (same component sizes).

Hole filling (``test_fill_holes``): every axial slice of the right lung's air (its bounding box; vessels and
nodules are its holes), as ``covseg_fast.inference.anatomy.components.fill_holes_inplane`` does; outputs
checked equal.
"""
from __future__ import annotations

import os

import cc3d
import fill_voids
import numpy as np
import pytest
from scipy import ndimage

from covseg_fast.inference.anatomy import RIGHT_LUNG, compute_anatomy
from covseg_fast.inference.anatomy.body import body_mask
from covseg_fast.inference.anatomy.components import bounding_box
from covseg_fast.inference.anatomy.lungs import AIR_MAX_HU, PADDING_MAX_HU
from covseg_fast.io import read_nifti

DATA = os.environ.get("COVSEG_SHARED_DATA") or os.path.join(os.path.dirname(__file__), "..", "..", "shared", "data")
REAL = os.path.join(DATA, "ct", "lung_pet_ct_dx_A0001", "Lung_Dx-A0001_5mm_kernelL_LPS.nii.gz")
DEMO = os.path.join(os.path.dirname(__file__), "..", "covseg_fast", "assets", "demo_ct.nii.gz")
_MASKS: dict = {}


def _masks() -> dict:
    if not _MASKS:
        path, name = (REAL, "lpcd") if os.path.isfile(REAL) else (DEMO, "demo")
        v = read_nifti(path)
        body = body_mask(v.data, v.spacing)
        air = v.data < AIR_MAX_HU
        cand = air & (v.data > PADDING_MAX_HU) & body.inside
        x, y, z = v.data.shape
        right = compute_anatomy(v.data, v.spacing, v.voxel_ml).labels == RIGHT_LUNG
        right &= air  # before its holes (vessels, nodules) were filled
        for kind, m in (("candidates", cand), ("air", air), ("right_lung", right[bounding_box(right)])):
            _MASKS[(f"{name}_{x}x{y}x{z}", kind)] = m
            _MASKS[(f"{name}_stack_{x}x{y}x{4 * z}", kind)] = np.ascontiguousarray(np.concatenate([m] * 4, axis=2))
    return _MASKS


def cc3d_components(mask: np.ndarray):
    labels, n = cc3d.connected_components(mask, connectivity=6, return_N=True)
    st = cc3d.statistics(labels)
    return n, np.asarray(st["voxel_counts"][1:], dtype=np.int64), st["bounding_boxes"]


def scipy_components(mask: np.ndarray):
    labels, n = ndimage.label(mask)  # default structure: 6-connected
    boxes = ndimage.find_objects(labels)
    return n, np.bincount(labels.ravel(), minlength=n + 1)[1:], boxes


PROVIDERS = {"cc3d": cc3d_components, "scipy": scipy_components}


@pytest.mark.parametrize("kind", ["candidates", "air"])
@pytest.mark.parametrize("case", [0, 1])
@pytest.mark.parametrize("provider", list(PROVIDERS))
def test_components(benchmark, record, provider, case, kind):
    keys = sorted({k for k, _ in _masks()}, key=len)
    shape = keys[case]
    mask = _masks()[(shape, kind)]
    record(provider=provider, shape=shape, input=kind, mode="label+stats", voxels=int(mask.size),
           foreground=int(np.count_nonzero(mask)), data=REAL if os.path.isfile(REAL) else DEMO)
    n, sizes, _ = benchmark.pedantic(PROVIDERS[provider], args=(mask,), rounds=10, iterations=1, warmup_rounds=1)
    other = "scipy" if provider == "cc3d" else "cc3d"
    n2, sizes2, _ = PROVIDERS[other](mask)
    benchmark.extra_info["components"] = int(n)
    assert n == n2 and np.array_equal(np.sort(sizes), np.sort(sizes2))


def scipy_fill(mask: np.ndarray) -> np.ndarray:
    out = mask.copy()
    for k in range(out.shape[2]):
        out[:, :, k] = ndimage.binary_fill_holes(out[:, :, k])
    return out


def fill_voids_fill(mask: np.ndarray) -> np.ndarray:
    out = mask.copy()
    for k in range(out.shape[2]):
        out[:, :, k] = fill_voids.fill(np.ascontiguousarray(out[:, :, k]), in_place=True)
    return out


FILLERS = {"fill_voids": fill_voids_fill, "scipy": scipy_fill}


@pytest.mark.parametrize("case", [0, 1])
@pytest.mark.parametrize("provider", list(FILLERS))
def test_fill_holes(benchmark, record, provider, case):
    keys = sorted({k for k, _ in _masks()}, key=len)
    mask = _masks()[(keys[case], "right_lung")]
    record(provider=provider, shape=keys[case], input="right_lung", box=list(mask.shape), mode="fill_holes_per_slice",
           voxels=int(mask.size), foreground=int(np.count_nonzero(mask)))
    out = benchmark.pedantic(FILLERS[provider], args=(mask,), rounds=10, iterations=1, warmup_rounds=1)
    other = "scipy" if provider == "fill_voids" else "fill_voids"
    assert np.array_equal(out, FILLERS[other](mask)) and out.sum() > mask.sum()

"""Intensity landmarks of windowed CT slice images, and a linear map that matches one set to another.

CT slices exported as 8-bit images carry the HU window they were exported with. Two landmarks show it
in any chest slice: the mode of aerated lung (the darkest large peak of the histogram) and the mode of
soft tissue (the largest peak well above it). In COVID-SemiSeg (docs/intensity_window.md) the 50
labelled slices put them at about 0.17 and 0.85, while 70 % of the 1600 pseudo-labelled slices (the
Ma et al. "coronacases" volumes) put them at about 0.06 and 0.41: another window altogether.

:func:`matching_maps` gives every image of a source set the linear grey-level map (scale, offset)
that moves its volume's median landmarks onto a reference set's, so a model pre-trained on the
pseudo-labels sees the intensities it is fine-tuned and screened with. Images are grouped by volume:
the file stem without its trailing ``_<slice number>`` (``Data-1_coronacases_org_001_57`` →
``Data-1_coronacases_org_001``); per-volume medians are far steadier than per-image landmarks.
"""
from __future__ import annotations

import re
from typing import Callable, Mapping

import numpy as np
from scipy.ndimage import gaussian_filter1d

BINS = 256
LUNG_MAX = 0.45       # the lung peak is searched below this grey level
TISSUE_GAP = 0.12     # ... and the soft-tissue peak at least this far above it
SMOOTH_BINS = 3.0     # Gaussian smoothing of the histogram (bins)
PEAK_SHARE = 0.2      # a peak counts when it holds at least this share of the tallest one


def image_landmarks(grey: np.ndarray) -> tuple[float, float]:
    """(lung, soft tissue) grey-level modes in [0, 1] of a slice image (uint8 0–255 or float in [0, 1])."""
    g = np.asarray(grey)
    g = g.astype(np.float64) / 255.0 if g.dtype == np.uint8 else g.astype(np.float64)
    hist, _ = np.histogram(g, bins=BINS, range=(0.0, 1.0))
    hist = gaussian_filter1d(hist.astype(np.float64), SMOOTH_BINS)[: BINS - 6]  # the top bins: saturated bone
    peaks = np.flatnonzero((hist[1:-1] >= hist[:-2]) & (hist[1:-1] > hist[2:])) + 1
    peaks = peaks[hist[peaks] >= PEAK_SHARE * hist.max()]
    low = peaks[peaks < LUNG_MAX * BINS]
    # the lung is the darkest large peak (soft tissue can be the taller one, and lie below LUNG_MAX too)
    lung = int(low[0]) if low.size else int(np.argmax(hist[: int(LUNG_MAX * BINS)]))
    start = lung + int(TISSUE_GAP * BINS)
    tissue = start + int(np.argmax(hist[start:]))
    return (lung + 0.5) / BINS, (tissue + 0.5) / BINS


def volume_key(stem: str) -> str:
    """The volume an exported slice came from: its stem without a trailing ``_<number>``."""
    return re.sub(r"_\d+$", "", stem)


def median_landmarks(landmarks: Mapping[str, tuple[float, float]]) -> tuple[float, float]:
    """Median (lung, tissue) over images."""
    values = np.array(list(landmarks.values()), dtype=np.float64)
    return float(np.median(values[:, 0])), float(np.median(values[:, 1]))


def matching_maps(source: Mapping[str, tuple[float, float]], reference: tuple[float, float],
                  group: Callable[[str], str] = volume_key) -> dict[str, tuple[float, float]]:
    """id → (scale, offset) with ``scale·g + offset`` moving each group's median landmarks onto ``reference``.

    Raises:
        ValueError: a group whose tissue landmark is not above its lung landmark.
    """
    groups: dict[str, dict[str, tuple[float, float]]] = {}
    for key, marks in source.items():
        groups.setdefault(group(key), {})[key] = marks
    ref_lung, ref_tissue = reference
    maps = {}
    for name, members in groups.items():
        lung, tissue = median_landmarks(members)
        if not tissue > lung:
            raise ValueError(f"intensity landmarks of {name}: soft tissue {tissue:.3f} is not above lung {lung:.3f}")
        scale = (ref_tissue - ref_lung) / (tissue - lung)
        for key in members:
            maps[key] = (scale, ref_lung - scale * lung)
    return maps


def window_for(image_marks: tuple[float, float], hu_marks: tuple[float, float]) -> tuple[float, float]:
    """The HU window (low, high) that maps HU landmarks (lung, tissue) onto image landmarks (lung, tissue)."""
    (g_lung, g_tissue), (h_lung, h_tissue) = image_marks, hu_marks
    width = (h_tissue - h_lung) / (g_tissue - g_lung)
    low = h_lung - g_lung * width
    return low, low + width

"""Real model inputs for export checks: axial slices of a CT volume, prepared exactly as `covseg screen` does."""
from __future__ import annotations

import os
from typing import Optional, Sequence

import torch

DEMO_CT = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "assets", "demo_ct.nii.gz")


def screening_slices(model_name: str, path: str = DEMO_CT, count: int = 8,
                     size: Optional[Sequence[int]] = None,
                     window: Optional[Sequence[float]] = None) -> torch.Tensor:
    """``count`` evenly spaced axial slices of the CT at ``path`` as the model's input (count, C, H, W).

    The volume is read and prepared by the screener's own code (canonical orientation, HU ``window``
    (default: the lung window), resize to ``size`` (default: the model's registered input size),
    normalisation), as `covseg screen` feeds the model.

    Raises:
        VolumeError: the file cannot be read as a CT volume.
    """
    from ..inference.screener import ScreenConfig, Screener
    from ..io import read_case
    from ..models.registry import get_spec

    volume = read_case(path, "dicom" if os.path.isdir(path) else "nifti")
    spec = get_spec(model_name)
    # The screener's device stage; its model is never called here.
    config = ScreenConfig(out_dir=os.devnull, device="cpu", writers=1,
                          input_size=None if size is None else (int(size[0]), int(size[1])))
    if window is not None:
        config.window = (float(window[0]), float(window[1]))
    screener = Screener(torch.nn.Identity(), spec, config)
    slices, _ = screener.to_model_slices(volume.data)
    z = slices.shape[0]
    picks = torch.linspace(0, z - 1, min(count, z)).round().long().unique()
    return slices[picks].float().contiguous()

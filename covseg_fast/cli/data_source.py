"""The ``--data | --volumes`` choice and the volume options, shared by covseg train, evaluate and crossval
(one wording and one default window for all three)."""
from __future__ import annotations

VOLUME_LAYOUTS = ("Ma et al. COVID-19-CT-Seg_20cases + Infection_Mask, MosMedData studies/CT-1 + masks, "
                  "MedSeg tr_im/tr_mask or rp_im/rp_msk")


from ..windows import LUNG_WINDOW
from .input_options import add_window_option


def volume_window(args) -> tuple[float, float]:
    """``--window`` as (low, high), else the lung window (the default for CT volumes)."""
    return LUNG_WINDOW if args.window is None else (float(args.window[0]), float(args.window[1]))


def add_source_options(p, data_help: str, volumes_help: str, drop_empty_help: str, scoring: bool = False) -> None:
    """``--data`` or ``--volumes`` (one is required), then ``--window`` and ``--drop-empty`` for volumes.
    ``scoring``: the window defaults to the one recorded in the checkpoint (None here, resolved later)."""
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--data", help=data_help)
    src.add_argument("--volumes", help=volumes_help)
    if scoring:
        add_window_option(p, "--volumes: HU window mapped to [0, 1] (default: the window the checkpoint was "
                             "trained with, recorded by covseg train --volumes; else -1250 250, the lung window)")
    else:
        add_window_option(p, "--volumes: HU window mapped to [0, 1] (default -1250 250, the lung window); --data: "
                             "the HU window the slice images correspond to (not applied to them). Either way it is "
                             "recorded in the checkpoint, and evaluate --volumes and screen apply it")
    p.add_argument("--drop-empty", action="store_true", help=drop_empty_help)

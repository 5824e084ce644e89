"""The ``--data | --volumes`` choice and the volume options, shared by covseg train, evaluate and crossval
(one wording and one default window for all three)."""
from __future__ import annotations

VOLUME_LAYOUTS = ("Ma et al. COVID-19-CT-Seg_20cases + Infection_Mask, MosMedData studies/CT-1 + masks, "
                  "MedSeg tr_im/tr_mask or rp_im/rp_msk")


def add_source_options(p, data_help: str, volumes_help: str, drop_empty_help: str) -> None:
    """``--data`` or ``--volumes`` (one is required), then ``--window`` and ``--drop-empty`` for volumes."""
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--data", help=data_help)
    src.add_argument("--volumes", help=volumes_help)
    p.add_argument("--window", nargs=2, type=float, metavar=("LOW", "HIGH"), default=(-1250.0, 250.0),
                   help="--volumes: HU window mapped to [0, 1] (default -1250 250, the lung window; score with "
                        "the window the model was trained with)")
    p.add_argument("--drop-empty", action="store_true", help=drop_empty_help)

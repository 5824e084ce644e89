"""`covseg evaluate`: score a checkpoint on a folder of slices (Imgs/ + GT/) or on the axial slices of
labelled CT volumes, and write reports."""
from __future__ import annotations

import logging

from .data_source import VOLUME_LAYOUTS, add_source_options
from .input_options import add_device_option, add_input_size_option, add_tta_option, input_size_arg

log = logging.getLogger(__name__)


def add_parser(sub) -> None:
    p = sub.add_parser("evaluate", help="score a checkpoint on labelled slices or CT volumes (Inf-Net protocol "
                                        "or plain probability)",
                       description="Writes per_image.csv, summary.json/.md, curves.json, pr_curve.png and "
                                   "fmeasure_curve.png into --out.")
    p.add_argument("--checkpoint", required=True, help="covseg checkpoint (.pt)")
    add_source_options(p, data_help="folder holding the image and mask sub-folders",
                       volumes_help=f"folder of labelled CT volumes (NIfTI) in a public layout: {VOLUME_LAYOUTS}",
                       drop_empty_help="--volumes: score only slices with infection", scoring=True)
    p.add_argument("--split", metavar="FILE", help="--volumes: score only the volumes of one part of this split "
                                                   "JSON (e.g. the split.json covseg train wrote)")
    p.add_argument("--part", default="val", help="--split part to score (default val)")
    p.add_argument("--out", required=True, help="output folder for the reports")
    p.add_argument("--protocol", choices=["infnet", "threshold"], default="infnet",
                   help="infnet: min-max normalised maps, means over 256 thresholds (default); "
                        "threshold: plain probability")
    add_device_option(p)
    p.add_argument("--batch-size", type=int, default=4, help="images per forward pass (default 4)")
    p.add_argument("--images", default="Imgs", help="image sub-folder (default Imgs)")
    p.add_argument("--masks", default="GT", help="mask sub-folder (default GT)")
    add_input_size_option(p)
    add_tta_option(p)
    p.set_defaults(run=run)


def _volume_slices(args):
    """Native-size axial slices of the labelled volumes (only the --split part when given)."""
    from ..data.splits import load_split
    from ..data.volumes import VolumeSliceDataset, find_cases

    ids = None
    if args.split is not None:
        parts = load_split(args.split)["parts"]
        if args.part not in parts:
            raise ValueError(f"--split {args.split} has no part {args.part!r} (parts: {sorted(parts)})")
        ids = parts[args.part]
    return VolumeSliceDataset(find_cases(args.volumes), ids, window=tuple(args.window), drop_empty=args.drop_empty)


def run(args) -> int:
    import torch

    from ..data.slices import DataError, SliceDataset
    from ..evaluate import Evaluator
    from ..models.model_input import plane_adapter, resolve_input
    from ..models.tta import with_tta
    from ..models.registry import CheckpointError, model_from_checkpoint, read_checkpoint

    if args.batch_size < 1:
        log.error("--batch-size must be ≥ 1, got %d", args.batch_size)
        return 2
    from ..devices import resolve_device

    try:
        device = torch.device(resolve_device(args.device))
    except ValueError as exc:
        log.error("%s", exc)
        return 2
    try:
        payload = read_checkpoint(args.checkpoint, map_location="cpu")
        model = model_from_checkpoint(payload, args.checkpoint)
        model_input = resolve_input(payload, args.checkpoint, size=input_size_arg(args), window=args.window)
    except CheckpointError as exc:   # a checkpoint that cannot be used is a usage error, as in screen/export
        log.error("%s", exc)
        return 2
    except ValueError as exc:        # a bad --input-size
        log.error("%s", exc)
        return 2
    log.info("input %d×%d px (%s)", *model_input.size, model_input.size_source)
    try:
        if args.volumes is not None:   # axial slices of volumes are radiological: fed as the model was trained
            args.window = model_input.window
            model = plane_adapter(model, model_input.plane)
            log.info("HU window %g … %g (%s); %s slices", *args.window, model_input.window_source,
                     model_input.plane)
        dataset = (SliceDataset(args.data, images=args.images, masks=args.masks) if args.data is not None
                   else _volume_slices(args))
        evaluator = Evaluator(with_tta(model, args.tta), device=device, protocol=args.protocol,
                              batch_size=args.batch_size, input_size=model_input.size)
        meta = {"checkpoint": args.checkpoint, "data": args.data or args.volumes,
                "input_size_source": model_input.size_source, "tta": args.tta}
        if args.volumes is not None:
            meta.update(window_hu=list(model_input.window), window_source=model_input.window_source,
                        slice_plane=model_input.plane)
        summary = evaluator.run(dataset, args.out, meta=meta)
    except (DataError, OSError) as exc:
        log.error("%s", exc)
        return 1
    except ValueError as exc:       # a bad --split / --part
        log.error("%s", exc)
        return 2
    t = summary["table"]
    log.info("Dice %.4f  Sen %.4f  Spec %.4f  S_alpha %.4f  E_phi %.4f  MAE %.4f  (%d images, reports in %s)",
             t["Dice"], t["Sen"], t["Spec"], t["S_alpha"], t["E_phi_mean"], t["MAE"], summary["n_images"], args.out)
    if "per_volume" in summary:
        pv = summary["per_volume"]
        log.info("per volume (%d): 3-D Dice@0.5 %.4f, mean absolute infection-volume error %.2f mL", pv["n_volumes"],
                 pv["mean_dice_3d"], pv["mean_abs_error_ml"])
    return 0

"""How a checkpoint's model is fed, defined once for the subcommands that run it: ``--input-size``
(evaluate, screen, export, bench; by default the size the checkpoint was trained at) and ``--tta``
(evaluate, screen: test-time flip averaging)."""
from __future__ import annotations


def add_input_size_option(p, aliases: tuple[str, ...] = ()) -> None:
    """Add ``--input-size`` (``aliases``: older spellings such as ``--size``, kept working)."""
    p.add_argument("--input-size", *aliases, dest="input_size", type=int, nargs="+", metavar="PX", default=None,
                   help="model input size: one value (square) or H W (default: the size the checkpoint was "
                        "trained at, recorded by covseg train; else the model's default)")


def input_size_arg(args):
    """``--input-size`` as an int, an (H, W) pair or None; raises ValueError for 3 or more values."""
    size = getattr(args, "input_size", None)
    if size is None:
        return None
    if len(size) > 2:
        raise ValueError(f"--input-size takes one value or H W, got {' '.join(map(str, size))}")
    return size[0] if len(size) == 1 else tuple(size)


def add_tta_option(p) -> None:
    p.add_argument("--tta", choices=["none", "hflip", "flips"], default="none",
                   help="test-time flip averaging: hflip averages the probabilities of each slice and its left-right "
                        "flip (2 passes), flips adds the up-down and double flip (4 passes); default none")

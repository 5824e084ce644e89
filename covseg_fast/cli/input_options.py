"""How a checkpoint's model is fed, defined once for the subcommands that run it: ``--input-size``
(evaluate, screen, export, bench; by default the size the checkpoint was trained at), ``--tta``
(evaluate, screen: test-time flip averaging), ``--window`` (every subcommand that takes one: one syntax) and
``--device`` (one set of choices and one default everywhere)."""
from __future__ import annotations

import argparse

DEVICE_HELP = "auto (CUDA if available, else the CPU), cpu, cuda (under torchrun: the local rank's GPU) or cuda:N"


class _WindowAction(argparse.Action):
    """``--window LOW HIGH``, ``--window=LOW,HIGH`` or ``--window LOW,HIGH`` → (low, high) floats (HIGH > LOW is
    checked where the window is used, as a usage error)."""

    def __call__(self, parser, namespace, values, option_string=None):
        parts = [p for v in values for p in v.split(",") if p.strip() != ""]
        try:
            lo, hi = (float(p) for p in parts)
        except ValueError:
            parser.error(f"{option_string} expects LOW HIGH in HU (e.g. --window -1250 250 or --window=-1250,250), "
                         f"got {' '.join(values)!r}")
        setattr(namespace, self.dest, (lo, hi))


def add_window_option(p, help: str) -> None:
    """Add ``--window`` (``args.window``: None or a (low, high) tuple of floats)."""
    p.add_argument("--window", nargs="+", action=_WindowAction, metavar=("LOW", "HIGH"), default=None,
                   help=f"{help}; write it as --window -1250 250 or --window=-1250,250")


def add_device_option(p) -> None:
    """Add ``--device`` (default auto); the value is checked when it is used (a usage error names the choices)."""
    p.add_argument("--device", default="auto", help=DEVICE_HELP)


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

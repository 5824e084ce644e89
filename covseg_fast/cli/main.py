"""`covseg <subcommand>`: dispatches to one module per subcommand.

Exit codes: 0 success, 1 some inputs failed, 2 usage error, 130 interrupted (Ctrl-C); `covseg screen` adds
3 (its batch reports could not be written).
Each subcommand module exposes ``add_parser(subparsers)`` and ``run(args) -> int``.
"""
from __future__ import annotations

import argparse
import importlib
import logging
import sys

# subcommand -> module under covseg_fast.cli; a module missing here is simply not offered.
SUBCOMMANDS = ["screen", "train", "evaluate", "crossval", "export", "bench", "info"]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="covseg", description="COVID-19 lung infection segmentation in CT.")
    parser.add_argument("-v", "--verbose", action="store_true", help="log debug messages")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in SUBCOMMANDS:
        try:
            module = importlib.import_module(f"covseg_fast.cli.{name}")
        except ModuleNotFoundError as exc:
            if exc.name == f"covseg_fast.cli.{name}":
                continue
            raise
        module.add_parser(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO, format="%(levelname)s %(message)s")
    if args.command is None:
        parser.print_help()
        return 2
    try:
        return int(args.run(args) or 0)
    except KeyboardInterrupt:  # one line, not a traceback (screen says how far it got itself)
        logging.getLogger("covseg").error("interrupted")
        return 130


if __name__ == "__main__":
    sys.exit(main())

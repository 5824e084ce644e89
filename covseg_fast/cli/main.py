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


class DefaultsFormatter(argparse.HelpFormatter):
    """--help shows each option's default, unless its help already names it or there is none to show."""

    def _get_help_string(self, action):
        text = action.help or ""
        if "default" in text or action.default in (None, False, argparse.SUPPRESS) or not action.option_strings:
            return text
        return f"{text} (default: %(default)s)"


class _Parser(argparse.ArgumentParser):
    def __init__(self, *args, **kwargs):
        kwargs.setdefault("formatter_class", DefaultsFormatter)
        super().__init__(*args, **kwargs)


def build_parser() -> argparse.ArgumentParser:
    from .. import __version__

    parser = _Parser(prog="covseg", description="COVID-19 lung infection segmentation in CT (research use, not a "
                     "medical device).")
    parser.add_argument("--version", action="version", version=f"covseg {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="log debug messages")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
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

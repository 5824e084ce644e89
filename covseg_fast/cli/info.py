"""`covseg info`: versions, build configuration and the backend serving each op."""
from __future__ import annotations


def add_parser(sub) -> None:
    p = sub.add_parser("info", help="print versions, build configuration and op backends",
                       description="Print versions, the build configuration and which backend serves each op.")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.set_defaults(run=run)


def run(args) -> int:
    from ..info import main

    return main(["--json"] if args.json else [])

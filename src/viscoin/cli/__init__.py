"""The `viscoin` command line: one module per command, each with `register(subparsers)`.

    viscoin generator import | sample | train | info      (viscoin.cli.generator)
    viscoin classifier train | test                       (viscoin.cli.classifier)
    viscoin train                                         (viscoin.cli.train)
    viscoin evaluate | compare | explain | report | explore | demo  (viscoin.cli.evaluate, ...)

Command-line code lives here only; the commands call the library. Errors the user can fix are
printed as one line (`viscoin: error: ...`) with exit status 2, never as a traceback.
"""

from __future__ import annotations

import argparse
import sys

import viscoin
from viscoin.cli import classifier, compare, demo, evaluate, explain, explore, generator, report, train
from viscoin.cli.common import USER_ERRORS

COMMANDS = (generator, classifier, train, evaluate, compare, explain, report, explore, demo)


def build_parser() -> argparse.ArgumentParser:
    """The parser of every command."""
    parser = argparse.ArgumentParser(
        prog="viscoin",
        description="VisCoIN: interpretable image classification with concepts visualised by StyleGAN2.",
    )
    parser.add_argument("--version", action="version", version=f"viscoin {viscoin.__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for command in COMMANDS:
        command.register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except USER_ERRORS as exc:
        print(f"viscoin: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())

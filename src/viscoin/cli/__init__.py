"""The `viscoin` command line: one module per command, each with `register(subparsers)`.

    viscoin generator import | sample | train | info      (viscoin.cli.generator)
    viscoin classifier train | test                       (viscoin.cli.classifier)
    viscoin train                                         (viscoin.cli.train)
    viscoin flint train | flaem train                     (viscoin.cli.baseline)
    viscoin evaluate | compare | explain | report | explore | demo  (viscoin.cli.evaluate, ...)
    viscoin ablate                                        (viscoin.cli.ablate)
    viscoin fit                                           (viscoin.cli.fit)

Command-line code lives here only; the commands call the library. Errors the user can fix are
printed as one line (`viscoin: error: ...`) with exit status 2, never as a traceback.
"""

from __future__ import annotations

import argparse
import sys

import viscoin
from viscoin.cli import (ablate, baseline, classifier, compare, demo, evaluate, explain, explore, fit, generator,
                         report, train)
from viscoin.cli.common import USER_ERRORS, Parser

COMMANDS = (generator, classifier, train, baseline, evaluate, compare, explain, report, explore, demo, ablate, fit)


def build_parser() -> argparse.ArgumentParser:
    """The parser of every command."""
    parser = Parser(
        prog="viscoin",
        description="VisCoIN: interpretable image classification with concepts visualised by StyleGAN2.",
    )
    parser.add_argument("--version", action="version", version=f"viscoin {viscoin.__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for command in COMMANDS:
        command.register(sub)
    return parser


def parse(parser: argparse.ArgumentParser, argv: list[str] | None) -> argparse.Namespace:
    """Parse; ``KEY=VALUE`` overrides are accepted anywhere on the line (also after options)."""
    args, extra = parser.parse_known_args(argv)
    stray = [e for e in extra if e.startswith("-") or "=" not in e]
    if stray or (extra and not isinstance(getattr(args, "overrides", None), list)):
        parser.error(f"unrecognized arguments: {' '.join(stray or extra)}")
    if extra:
        args.overrides = [*args.overrides, *extra]
    return args


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parse(parser, argv)
    try:
        return int(args.func(args) or 0)
    except USER_ERRORS as exc:
        print(f"viscoin: error: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:  # a read-only folder, a file where a folder is expected, a full disk: one line
        where = f" {exc.filename}" if exc.filename else ""
        print(f"viscoin: error: cannot write or read{where}: {exc.strerror or exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())

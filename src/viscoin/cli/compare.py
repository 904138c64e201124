"""`viscoin compare EVAL.json EVAL.json ... --out DIR`: the paper's tables 1 and 2 for several systems side by side."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from viscoin.metrics.compare import JSON_FILE, MARKDOWN_FILE, write_comparison


def add_compare_arguments(parser: argparse.ArgumentParser) -> None:
    """Arguments of ``viscoin compare`` (call `run_compare_command` with the parsed namespace)."""
    parser.add_argument("evaluations", type=Path, nargs="+", metavar="EVAL.json",
                        help="evaluation files written by `viscoin evaluate` (one per system; 2 or more)")
    parser.add_argument("--out", type=Path, required=True,
                        help=f"folder for {MARKDOWN_FILE} and {JSON_FILE} (created if missing)")
    parser.add_argument("--names", nargs="+", default=None, metavar="NAME",
                        help="system names, one per file (default: each file's model family, "
                             "with its run folder when a family repeats on a dataset)")
    parser.add_argument("--overwrite", action="store_true",
                        help=f"replace {MARKDOWN_FILE} / {JSON_FILE} even when `viscoin compare` did not write them")


def run_compare_command(args: argparse.Namespace) -> int:
    """``viscoin compare``: check, write both files, print the tables (and what differs, on stderr too)."""
    written = write_comparison(args.evaluations, args.out, args.overwrite, args.names)
    print(written.markdown)
    if written.differences:
        print(f"viscoin compare: the evaluations differ in {len(written.differences)} way(s) (see 'Differences' "
              "above)", file=sys.stderr)
    print(f"wrote {written.markdown_path} and {written.json_path}")
    return 0


def register(sub: Any) -> None:
    """Add `viscoin compare` to the top-level subparsers."""
    p = sub.add_parser("compare", help="the paper's tables 1 and 2 for several evaluated systems side by side "
                                       "(Markdown + JSON)")
    add_compare_arguments(p)
    p.set_defaults(func=run_compare_command)

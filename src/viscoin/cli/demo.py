"""`viscoin demo`: VisCoIN end to end on the synthetic birds with the shipped networks (offline)."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from viscoin.apps.demo import DEFAULT_OUT, run_comparison, run_demo
from viscoin.cli.common import non_negative_int, positive_int


def add_demo_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("overrides", nargs="*", metavar="KEY=VALUE",
                        help="changes to the training config, e.g. iterations=200 model.num_concepts=24")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help=f"output folder (default: {DEFAULT_OUT})")
    parser.add_argument("--config", default="demo", help="training config: a shipped name or a YAML file "
                        "(default: demo)")
    parser.add_argument("--fresh", action="store_true", help="train again even if OUT holds a finished model")
    parser.add_argument("--max-train", type=non_negative_int, default=2400,
                        help="training images used by the metrics (seeded subset; 0: all; default: 2400)")
    parser.add_argument("--n-faithfulness", type=positive_int, default=1000, help="test images for faithfulness (default: 1000)")
    parser.add_argument("--consistency-samples", type=positive_int, default=50,
                        help="samples per set and concept for consistency (default: 50)")
    parser.add_argument("--compare", action="store_true",
                        help="also train FLINT and FLAEM on the same birds, f and K, evaluate them the same way and "
                             "write the paper's tables 1-2 side by side (OUT/comparison/) and a comparison page")


def run_demo_command(args: argparse.Namespace) -> int:
    if args.compare:
        if args.overrides or args.config != "demo":
            raise ValueError("--compare runs the shipped configs (demo, flint/birds, flaem/birds): "
                             "give no --config or KEY=VALUE with it")
        run_comparison(args.out, args.fresh, args.max_train, args.n_faithfulness, args.consistency_samples)
        return 0
    run_demo(args.out, args.config, list(args.overrides), args.fresh, args.max_train, args.n_faithfulness,
             args.consistency_samples)
    return 0


def register(sub: Any) -> None:
    """Add `viscoin demo` to the top-level subparsers."""
    p = sub.add_parser(
        "demo",
        help="VisCoIN end to end on the synthetic birds with the shipped networks: train, evaluate, report (offline)",
        description="Draw the synthetic birds, train VisCoIN on the shipped f and G, evaluate it with every metric "
        "and write an HTML report. Any training config field can be overridden: KEY=VALUE.",
    )
    add_demo_arguments(p)
    p.set_defaults(func=run_demo_command)

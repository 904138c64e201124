"""`viscoin report CHECKPOINT`: the static HTML report (metrics, relevant class-concept pairs, figures)."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from viscoin.cli.common import add_am_argument, am_config, finite_float, parse_lambdas, positive_int
from viscoin.interpret.explainer import PAIR_THRESHOLD
from viscoin.metrics.evaluate import EvaluateConfig, evaluate_checkpoint
from viscoin.model.loading import load_trained
from viscoin.report.html import MANIFEST, default_metrics_file, default_out_dir, read_metrics, report_folder, write_report
from viscoin.utils.device import resolve_device


def evaluate_metrics(checkpoint: Path, overrides: list[str], device: Any) -> dict[str, Any]:
    """`viscoin evaluate` with its default settings (`viscoin.metrics.evaluate.evaluate_checkpoint`)."""
    return dict(evaluate_checkpoint(checkpoint, EvaluateConfig(), device, overrides))


def _found_metrics(checkpoint: Path) -> dict[str, Any] | None:
    """The evaluation.json beside a checkpoint, if `viscoin evaluate` wrote one for it."""
    found = default_metrics_file(checkpoint)
    return None if found is None else read_metrics(found)


def add_report_arguments(parser: argparse.ArgumentParser) -> None:
    """Arguments of `viscoin report` on a (sub)parser."""
    parser.add_argument("checkpoint", type=Path, help="concept-model folder written by a trainer (RUN/viscoin)")
    parser.add_argument("overrides", nargs="*", metavar="data.KEY=VALUE",
                        help="changes to the data config saved with the model, e.g. data.root=/elsewhere")
    parser.add_argument("--out", type=Path, default=None, help="report folder (default: CHECKPOINT/../report)")
    parser.add_argument("--overwrite", action="store_true",
                        help=f"write into a non-empty --out that holds no earlier report (no {MANIFEST}): files of "
                             "the same names are replaced, no other file is deleted")
    parser.add_argument("--metrics", type=Path, default=None,
                        help="metrics JSON written by `viscoin evaluate` (default: CHECKPOINT/../evaluation.json if present)")
    parser.add_argument("--evaluate", action="store_true", help="compute the metrics now (slow; instead of --metrics)")
    parser.add_argument("--relevance-threshold", type=finite_float, default=PAIR_THRESHOLD, metavar="R",
                        help="class c and concept j form a pair when their global relevance r(j, c) > R, in [-1, 1) "
                             f"(default: {PAIR_THRESHOLD:g}, the paper's rule); the report lists each class's pairs")
    parser.add_argument("--concepts-per-class", type=positive_int, default=3, metavar="N",
                        help="at most N pairs listed (and drawn) per class, the most relevant first (default: 3)")
    parser.add_argument("--pairs", type=positive_int, default=6,
                        help="class-concept pairs drawn with figures: the most relevant of the pairs listed (default: 6)")
    parser.add_argument("--samples", type=positive_int, default=5, help="most activating samples per pair (default: 5)")
    parser.add_argument("--lambdas", default="0,1,2,4", help="multipliers of the concept in the sweeps (default: 0,1,2,4)")
    parser.add_argument("--compare", type=Path, nargs="+", default=[], metavar="CHECKPOINT",
                        help="other systems on the same data (e.g. RUN/flint RUN/flaem): adds comparison.html with "
                             "the tables side by side (from each one's evaluation.json, when present) and each "
                             "system's concept visualisations on the same images")
    add_am_argument(parser, "FLINT's pictures on the comparison page")
    parser.add_argument("--batch-size", type=positive_int, default=32)
    parser.add_argument("--device", default="auto", help="'auto', 'cpu', 'cuda', ... (default: auto)")


def run_report_command(args: argparse.Namespace) -> int:
    """Run `viscoin report`; prints where the report is."""
    if args.metrics is not None and args.evaluate:
        raise ValueError("give either --metrics FILE or --evaluate, not both")
    if args.pairs < 1 or args.samples < 1:
        raise ValueError(f"--pairs and --samples: expected >= 1, got {args.pairs} and {args.samples}")
    if not -1 <= args.relevance_threshold < 1:
        raise ValueError(f"--relevance-threshold: expected a global relevance in [-1, 1), got {args.relevance_threshold}")
    lambdas = parse_lambdas(args.lambdas)
    device = resolve_device(args.device)
    out = args.out if args.out is not None else default_out_dir(args.checkpoint)
    report_folder(out, args.overwrite)           # refused before anything is computed (and checked again on writing)
    metrics, source = None, ""
    found = default_metrics_file(args.checkpoint) if args.metrics is None and not args.evaluate else None
    if args.metrics is not None or found is not None:
        path = args.metrics if args.metrics is not None else found
        metrics, source = read_metrics(path), str(path)
        if found is not None:
            print(f"using the metrics in {found} (give --metrics FILE to use another file)")
    elif args.evaluate:
        metrics, source = evaluate_metrics(args.checkpoint, list(args.overrides), device), "viscoin evaluate (run by the report)"
    others = [load_trained(c, list(args.overrides), device) for c in args.compare]
    compared = [m for m in [metrics, *(_found_metrics(c) for c in args.compare)] if m] if others else []
    index = write_report(args.checkpoint, out, metrics=metrics, pairs=args.pairs, threshold=args.relevance_threshold,
                         per_class=args.concepts_per_class, samples=args.samples,
                         lambdas=lambdas, data_overrides=list(args.overrides), device=device,
                         batch_size=args.batch_size, metrics_source=source, comparison=others,
                         comparison_metrics=compared, am=am_config(args), overwrite=args.overwrite)
    print(f"wrote {index} (open it in a browser; figures in {index.parent / 'figures'})")
    return 0


def register(sub: Any) -> None:
    """Add `viscoin report` to the top-level subparsers."""
    p = sub.add_parser("report", help="static HTML report: metrics, relevant class-concept pairs, figures")
    add_report_arguments(p)
    p.set_defaults(func=run_report_command)

"""`viscoin ablate`: the paper's appendix-D ablation studies on one base config, trained, evaluated, tabulated."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from viscoin.apps.ablate import (
    DEFAULT_OUT,
    FAMILIES,
    JSON_FILE,
    MARKDOWN_FILE,
    STUDIES,
    ablation_evaluation,
    run_ablation,
    select_studies,
)
from viscoin.cli.common import non_negative_int, positive_int
from viscoin.utils.device import resolve_device


def add_ablate_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("overrides", nargs="*", metavar="KEY=VALUE",
                        help="changes to the base config, e.g. iterations=300 loss.delta=0.5")
    parser.add_argument("--family", choices=list(FAMILIES), default="viscoin",
                        help="the concept model (default: viscoin; flint and flaem take the k study and --study)")
    parser.add_argument("--config", default=None,
                        help="the base training config: a shipped name or a YAML file (default: demo for viscoin, "
                             "birds for the baselines)")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help=f"output folder (default: {DEFAULT_OUT})")
    parser.add_argument("--studies", default=None, metavar="NAME,...",
                        help=f"appendix D's studies to run, of {','.join(STUDIES)} (default: all that apply to the "
                             "family, none when --study is given)")
    parser.add_argument("--study", action="append", default=[], metavar="KEY=V1,V2,...",
                        help="a study of any config key (repeatable), e.g. --study model.num_concepts=8,16,32")
    parser.add_argument("--overwrite", action="store_true",
                        help="run another plan in an OUT that holds one: runs whose config changed are trained "
                             "again, finished runs with the same config are reused, nothing else is deleted")
    parser.add_argument("--n-faithfulness", type=positive_int, default=300,
                        help="test images for faithfulness (default: 300)")
    parser.add_argument("--consistency-samples", type=positive_int, default=50,
                        help="samples per set and concept for consistency (default: 50)")
    parser.add_argument("--max-concepts", type=non_negative_int, default=8,
                        help="consistency on the M most relevant concepts (0: all; default: 8)")
    parser.add_argument("--max-train", type=non_negative_int, default=2400,
                        help="training images for relevance and consistency (seeded subset; 0: all; default: 2400)")
    parser.add_argument("--device", default="auto", help="where the evaluations run: 'auto', 'cpu', 'cuda', ... "
                        "(default: auto; the training runs where its config's run.accelerator says)")
    parser.add_argument("--no-lpips", action="store_true",
                        help="skip LPIPS (by default measured when torchvision's VGG16 weights are cached)")


def run_ablate_command(args: argparse.Namespace) -> int:
    names = None if args.studies is None else [n.strip() for n in args.studies.split(",") if n.strip()]
    studies = select_studies(args.family, names, args.study)
    evaluation, why = ablation_evaluation(args.n_faithfulness, args.consistency_samples, args.max_concepts,
                                          args.max_train, lpips=not args.no_lpips)
    if why:
        print(f"FID on f's features ({why})")
    result = run_ablation(args.out, studies, args.family, args.config, list(args.overrides), evaluation,
                          args.overwrite, resolve_device(args.device))
    print()
    print(result["markdown"])
    print(f"wrote {args.out / MARKDOWN_FILE} and {args.out / JSON_FILE} ({result['elapsed_s'] / 60:.1f} min)")
    return 0


def register(sub: Any) -> None:
    """Add `viscoin ablate` to the top-level subparsers."""
    p = sub.add_parser(
        "ablate",
        help="the paper's ablation studies (appendix D: γ, Φ′, K, orthogonality, α, δ): train, evaluate, tabulate",
        description="Train one run per distinct setting of the studies on a base config (finished runs are reused, "
        "killed ones resume), evaluate each with the metrics of the paper's tables 6-10 and write OUT/ablation.md "
        "and OUT/ablation.json. Any base config field can be overridden: KEY=VALUE.",
    )
    add_ablate_arguments(p)
    p.set_defaults(func=run_ablate_command)

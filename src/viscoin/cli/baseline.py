"""`viscoin flint train` and `viscoin flaem train`: the paper's baselines on a frozen classifier."""

from __future__ import annotations

import argparse
from typing import Any

from viscoin.cli.common import add_run_arguments
from viscoin.model.train_baseline import FlaemTrainConfig, FlintTrainConfig, train_baseline
from viscoin.training.config import load_config

CONFIGS = {"flint": FlintTrainConfig, "flaem": FlaemTrainConfig}
SUMMARY = {
    "flint": ("FLINT (Parekh et al. 2021): two taps of f -> K concepts, dropout + linear predictor, "
              "upsample-conv decoder; fidelity, reconstruction, sparsity and diversity losses with start epochs"),
    "flaem": ("FLAEM (Sarkar et al. 2022): f's pooled last stage -> K concepts, linear predictor, "
              "3 transposed-conv decoder; fidelity, reconstruction and sparsity losses"),
}


def cmd_baseline_train(args: argparse.Namespace) -> int:
    cfg = load_config(CONFIGS[args.family], args.config, args.overrides, family=args.family)
    train_baseline(cfg, resume=args.resume, overwrite=args.overwrite)  # prints its own summary (main process only)
    return 0


def register(sub: Any) -> None:
    """Add `viscoin flint ...` and `viscoin flaem ...` to the top-level subparsers."""
    for family, summary in SUMMARY.items():
        top = sub.add_parser(family, help=f"the {family.upper()} baseline: train")
        fsub = top.add_subparsers(dest=f"{family}_command", required=True, metavar="SUBCOMMAND")
        p = fsub.add_parser(
            "train",
            help=f"train {family.upper()} on a frozen classifier (--config cub | cars | celebahq | birds | tiny)",
            description=f"Train {summary}. Any config field can be overridden: KEY=VALUE, e.g. "
            f"data.root=/data/CUB_200_2011 classifier=runs/f-cub/classifier run.out_dir=runs/{family}-cub",
        )
        add_run_arguments(p, family, "model.num_concepts=128")
        p.set_defaults(func=cmd_baseline_train, family=family)

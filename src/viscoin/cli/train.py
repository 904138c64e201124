"""`viscoin train`: VisCoIN (Ψ, Θ, Ω) on a frozen classifier and generator."""

from __future__ import annotations

import argparse
from typing import Any

from viscoin.cli.common import add_run_arguments
from viscoin.model.train import VisCoINTrainConfig, train_viscoin
from viscoin.training.config import load_config


def cmd_train(args: argparse.Namespace) -> int:
    cfg = load_config(VisCoINTrainConfig, args.config, args.overrides, family="viscoin")
    train_viscoin(cfg, resume=args.resume, overwrite=args.overwrite)  # prints its own summary (on the main process only)
    return 0


def register(sub: Any) -> None:
    """Add `viscoin train` to the top-level subparsers."""
    p = sub.add_parser(
        "train",
        help="train VisCoIN (Ψ, Θ, Ω) on a frozen classifier and generator (--config cub | cars | celebahq | tiny | demo)",
        description="Train VisCoIN. Any config field can be overridden: KEY=VALUE, e.g. data.root=/data/CUB_200_2011 "
        "classifier=runs/f-cub/classifier generator=nets/cub-G model.num_concepts=128 run.devices=4",
    )
    add_run_arguments(p, "viscoin", "model.num_concepts=128")
    p.set_defaults(func=cmd_train)

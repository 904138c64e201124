"""`viscoin fit FOLDER --out DIR`: f, G and VisCoIN trained on a folder of labelled images, evaluated, reported."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from viscoin.apps.fit import BUDGETS, STAGES, TARGET_MINUTES, run_fit
from viscoin.cli.common import finite_float, non_negative_int


def add_fit_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("folder", type=Path, help="the images: one sub-folder per class (optionally under train/ and "
                                                  "test/; otherwise 20%% of each class is kept for testing, seeded)")
    parser.add_argument("overrides", nargs="*", metavar="STAGE.KEY=VALUE",
                        help=f"changes to a stage's recipe, STAGE one of {', '.join(STAGES)}, e.g. generator.kimg=20 "
                             "viscoin.iterations=1000 classifier.epochs=10 evaluate.n_faithfulness=300 report.pairs=4")
    parser.add_argument("--out", type=Path, required=True,
                        help="output folder: one run folder per stage, evaluation.json, report/ (created; a folder "
                             "holding anything else is refused)")
    parser.add_argument("--budget", choices=BUDGETS, default="quick",
                        help=f"quick: about {TARGET_MINUTES['quick']:g} min on this machine (default); standard: about "
                             f"{TARGET_MINUTES['standard'] / 60:g} h; paper: the paper's recipes, however long; tiny: a "
                             "smoke test of the pipeline (a minute, the model means nothing)")
    parser.add_argument("--minutes", type=finite_float, default=None,
                        help="time target in minutes (default: the budget's); the generator gets what the other "
                             "stages leave")
    parser.add_argument("--resolution", type=non_negative_int, default=0,
                        help="working resolution, a power of two (default: from the images and the budget)")
    parser.add_argument("--classifier", default="",
                        help="use this trained classifier f instead of training one (a folder from `viscoin "
                             "classifier train`, or viscoin:NAME); its classes must be the folder's, in order")
    parser.add_argument("--generator", default="",
                        help="use this generator G as it is instead of training one: a generator folder, a "
                             "`viscoin generator train` run folder (its G_ema), an official .pkl, or viscoin:NAME")
    parser.add_argument("--finetune-generator", action="store_true",
                        help="fine-tune --generator on the folder (in its own architecture) instead of using it as is")
    parser.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto",
                        help="where to train (default: auto, CUDA when present)")
    parser.add_argument("--devices", type=non_negative_int, default=0,
                        help="GPUs to train on, DDP when more than one (default: 0, all visible ones)")
    parser.add_argument("--plan-only", action="store_true",
                        help="print the plan and its time estimates, then stop (writes nothing)")
    parser.add_argument("--overwrite", action="store_true",
                        help="run another plan in an OUT that holds one: stages whose config changed (and those after "
                             "them) are trained again, the others reused; nothing else is deleted")


def run_fit_command(args: argparse.Namespace) -> int:
    run_fit(args.folder, args.out, budget=args.budget, minutes=args.minutes, resolution=args.resolution,
            classifier=args.classifier, generator=args.generator, finetune_generator=args.finetune_generator,
            overrides=list(args.overrides), device=args.device, devices=args.devices, plan_only=args.plan_only,
            overwrite=args.overwrite)
    return 0


def register(sub: Any) -> None:
    """Add `viscoin fit` to the top-level subparsers."""
    p = sub.add_parser(
        "fit",
        help="your own images: train f, G and VisCoIN on a folder of labelled images, evaluate, report (one command)",
        description="Inspect the folder, plan every stage for the budget and this machine (printing the recipes and "
        "time estimates from a few timed steps), then train the classifier f, the StyleGAN2 generator G and VisCoIN, "
        "each in its own run folder in OUT (reused when finished, resumed when interrupted), evaluate the model, write "
        "the HTML report and say how to open the explorer.",
    )
    add_fit_arguments(p)
    p.set_defaults(func=run_fit_command)

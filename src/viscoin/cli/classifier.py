"""`viscoin classifier train | test`: the classifier f."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from viscoin.classifier.model import read_classifier_info
from viscoin.classifier.train import ClassifierTrainConfig, test_classifier, train_classifier
from viscoin.cli.common import add_run_arguments, check_writable, non_negative_int, positive_int
from viscoin.training.config import load_config
from viscoin.utils.device import resolve_device
from viscoin.utils.io import refuse_existing, write_json


def cmd_classifier_train(args: argparse.Namespace) -> int:
    cfg = load_config(ClassifierTrainConfig, args.config, args.overrides, family="classifier")
    train_classifier(cfg, resume=args.resume, overwrite=args.overwrite)  # prints its own summary (on the main process only)
    return 0


def cmd_classifier_test(args: argparse.Namespace) -> int:
    device = resolve_device(args.device)
    if args.out is not None:
        read_classifier_info(args.checkpoint)      # a bad checkpoint names itself before the output is checked
        refuse_existing([args.out] if args.out.exists() else [], "exists", args.overwrite)
        check_writable(args.out, "--out")          # before the computation, so that none of it is lost
    result = test_classifier(args.checkpoint, args.overrides, split=args.split, batch_size=args.batch_size,
                             device=device, num_workers=args.num_workers)
    print(f"top-1 accuracy on the {result['split']} split: {100 * result['accuracy']:.2f}% "
          f"({result['count']} images, mean cross-entropy {result['loss']:.4f})")
    if args.out:
        write_json(args.out, result)
    return 0


def register(sub: Any) -> None:
    """Add `viscoin classifier ...` to the top-level subparsers."""
    cls = sub.add_parser("classifier", help="the classifier f: fine-tune, test")
    csub = cls.add_subparsers(dest="classifier_command", required=True, metavar="SUBCOMMAND")
    p = csub.add_parser(
        "train",
        help="fine-tune a ResNet classifier (paper recipes: --config cub | celebahq | cars)",
        description="Fine-tune a classifier. Any config field can be overridden: KEY=VALUE, e.g. "
        "data.root=/data/CUB_200_2011 run.out_dir=runs/f-cub optim.lr=3e-4 run.devices=4",
    )
    add_run_arguments(p, "classifier", "optim.lr=3e-4")
    p.set_defaults(func=cmd_classifier_train)

    p = csub.add_parser("test", help="top-1 accuracy of a trained classifier")
    p.add_argument("checkpoint", type=Path, help="classifier folder (e.g. runs/f-cub/classifier) or a shipped one: "
                                                      "viscoin:birds/classifier")
    p.add_argument("overrides", nargs="*", metavar="data.KEY=VALUE",
                   help="changes to the data config it was trained with, e.g. data.root=/elsewhere")
    p.add_argument("--split", choices=["test", "train"], default="test")
    p.add_argument("--batch-size", type=positive_int, default=64)
    p.add_argument("--num-workers", type=non_negative_int, default=0)
    p.add_argument("--device", default="auto")
    p.add_argument("--out", type=Path, default=None, help="also write the result as JSON")
    p.add_argument("--overwrite", action="store_true", help="replace an existing --out file")
    p.set_defaults(func=cmd_classifier_test)

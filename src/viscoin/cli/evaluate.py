"""`viscoin evaluate CHECKPOINT`: the paper's metrics (tables 1 and 2), and ground truth where attributes exist."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from viscoin.cli.common import add_am_argument, am_config, check_writable, finite_float, non_negative_int, positive_int
from viscoin.metrics.evaluate import METRICS, EvaluateConfig, evaluate_checkpoint, markdown_tables
from viscoin.metrics.ground_truth import SWEEP_EDITS
from viscoin.utils.device import resolve_device
from viscoin.model.loading import read_model_info
from viscoin.utils.io import refuse_existing, write_json


def add_evaluate_arguments(parser: argparse.ArgumentParser) -> None:
    """Arguments of ``viscoin evaluate`` (call `run_evaluate_command` with the parsed namespace)."""
    d = EvaluateConfig()
    parser.add_argument("checkpoint", type=Path, help="concept-model folder (e.g. runs/viscoin-cub/viscoin)")
    parser.add_argument("overrides", nargs="*", metavar="data.KEY=VALUE",
                        help="changes to the data config saved with the checkpoint (e.g. data.root=/data/CUB)")
    parser.add_argument("--out", type=Path, default=None,
                        help="JSON result file (default: evaluation.json beside the checkpoint folder)")
    parser.add_argument("--overwrite", action="store_true",
                        help="replace an existing --out file that is not an earlier evaluation (those are replaced)")
    parser.add_argument("--device", default="auto", help="'auto', 'cpu', 'cuda', ... (default: auto)")
    parser.add_argument("--metrics", nargs="+", choices=METRICS, default=list(d.metrics), help="metrics to compute")
    parser.add_argument("--n-faithfulness", type=positive_int, default=d.n_faithfulness,
                        help=f"random test samples for faithfulness (default: {d.n_faithfulness})")
    parser.add_argument("--thresholds", type=finite_float, nargs="+", default=list(d.thresholds),
                        help="faithfulness thresholds τ (default: 0.1 0.2 0.4)")
    parser.add_argument("--lambdas", type=finite_float, nargs="+", default=list(d.consistency_lambdas),
                        help="consistency amplifications λ (default: 2 4)")
    parser.add_argument("--consistency-samples", type=positive_int, default=d.consistency_samples,
                        help=f"samples per set and concept (default: {d.consistency_samples})")
    parser.add_argument("--consistency-strict", action="store_true",
                        help="consistency: samples of the concept's relevant classes (r > 0.5) only, even when fewer "
                             "than --consistency-samples (default: fill up from the next most relevant classes)")
    parser.add_argument("--consistency-scaler", action="store_true",
                        help="consistency: standardise the features before the SVM (not in the paper; default: off)")
    parser.add_argument("--max-concepts", type=non_negative_int, default=d.max_concepts,
                        help="consistency on the M most relevant concepts only (default: 0 = all)")
    parser.add_argument("--fid-features", choices=["inception", "classifier", "none"], default=d.fid_features,
                        help="FID feature space: the standard Inception (default; local weights), "
                             "f's own features (offline substitute, labelled), or none")
    parser.add_argument("--inception", default=None, metavar="PATH",
                        help="FID Inception weights (weights-inception-2015-12-05-6726825d.pth); default: torch hub's cache")
    parser.add_argument("--lpips-vgg", default=None, metavar="PATH",
                        help="VGG16 ImageNet weights for LPIPS; default: torchvision's cache (skipped if missing)")
    parser.add_argument("--no-lpips", action="store_true", help="do not compute LPIPS")
    parser.add_argument("--batch-size", type=positive_int, default=d.batch_size, help=f"images per pass (default: {d.batch_size})")
    parser.add_argument("--seed", type=int, default=d.seed, help=f"seed of every random choice (default: {d.seed})")
    parser.add_argument("--max-test", type=non_negative_int, default=0, help="cap on test samples (seeded subset; default: all)")
    parser.add_argument("--max-train", type=non_negative_int, default=0, help="cap on training samples (seeded subset; default: all)")
    parser.add_argument("--gt-concepts", type=positive_int, default=d.gt_concepts,
                        help=f"ground truth: most relevant concepts whose λ sweeps are judged (default: {d.gt_concepts})")
    parser.add_argument("--gt-purity", type=finite_float, default=d.gt_purity,
                        help="ground truth: an attribute is class-defining when its frequency in every class is "
                             f"<= 1-P or >= P (default: {d.gt_purity}; lower it for noisy labels such as CUB's)")
    parser.add_argument("--gt-images", type=positive_int, default=d.gt_images,
                        help=f"ground truth: images per judged sweep (default: {d.gt_images})")
    parser.add_argument("--gt-edit", choices=SWEEP_EDITS, default=d.gt_edit,
                        help="ground truth: the map a judged sweep gives the concept, λ times its map on the test image "
                             "where it fires most (pattern) or the constant λ·φ_max (constant; consistency's edit) "
                             f"(default: {d.gt_edit})")
    parser.add_argument("--vis-fid-pairs", type=int, default=d.vis_fid_pairs,
                        help="visualisation FID: relevant class-concept pairs drawn, 3 maximally activating samples "
                             f"each (default: {d.vis_fid_pairs}, the paper's)")
    add_am_argument(parser, "FLINT's visualisations in the visualisation FID")
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")


def config_from_args(args: argparse.Namespace) -> EvaluateConfig:
    """The `EvaluateConfig` of parsed ``viscoin evaluate`` arguments."""
    return EvaluateConfig(
        metrics=tuple(args.metrics), n_faithfulness=args.n_faithfulness, thresholds=tuple(args.thresholds),
        consistency_lambdas=tuple(args.lambdas), consistency_samples=args.consistency_samples,
        consistency_fill=not args.consistency_strict, consistency_scaler=args.consistency_scaler,
        max_concepts=args.max_concepts, fid_features=args.fid_features, inception_path=args.inception,
        lpips=not args.no_lpips, lpips_vgg_path=args.lpips_vgg, batch_size=args.batch_size, seed=args.seed,
        progress=not args.no_progress, max_test_samples=args.max_test, max_train_samples=args.max_train,
        gt_concepts=args.gt_concepts, gt_images=args.gt_images, gt_purity=args.gt_purity, gt_edit=args.gt_edit,
        vis_fid_pairs=args.vis_fid_pairs, am=am_config(args),
    )


def is_evaluation_file(path: Path) -> bool:
    """True when `path` holds a JSON object `viscoin evaluate` wrote (which it may replace)."""
    try:
        data = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return False
    return isinstance(data, dict) and {"checkpoint", "data", "device"} <= data.keys()


def run_evaluate_command(args: argparse.Namespace) -> int:
    """``viscoin evaluate``: evaluate, write the JSON, print the Markdown tables. Returns the exit status."""
    cfg = config_from_args(args)
    device = resolve_device(args.device)
    out = args.out if args.out is not None else Path(args.checkpoint).resolve().parent / "evaluation.json"
    read_model_info(args.checkpoint)      # a bad checkpoint names itself before the output is checked
    if out.is_file() and not is_evaluation_file(out):
        refuse_existing([out], "exists and is not an evaluation written by viscoin evaluate", args.overwrite)
    check_writable(out, "--out")          # before the computation, so that none of it is lost
    result = evaluate_checkpoint(args.checkpoint, cfg, device, args.overrides)
    write_json(out, result)
    print(markdown_tables(result))
    print(f"wrote {out}")
    return 0


def register(sub: Any) -> None:
    """Add `viscoin evaluate` to the top-level subparsers."""
    p = sub.add_parser("evaluate", help="the paper's metrics (accuracy, MSE/LPIPS/FID, faithfulness, consistency, "
                                        "visualisation FID) and ground-truth metrics when attributes exist")
    add_evaluate_arguments(p)
    p.set_defaults(func=run_evaluate_command)

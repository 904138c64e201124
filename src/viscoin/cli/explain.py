"""`viscoin explain CHECKPOINT IMAGE`: one image's prediction, its top concepts, λ sweeps and differences."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from viscoin.cli.common import finite_float, parse_lambdas, positive_int
from viscoin.interpret.explain import explain_image
from viscoin.utils.device import resolve_device


def add_explain_arguments(parser: argparse.ArgumentParser) -> None:
    """Arguments of `viscoin explain` on a (sub)parser."""
    parser.add_argument("checkpoint", type=Path, help="concept-model folder written by a trainer (RUN/viscoin)")
    parser.add_argument("image", type=Path, help="image file to explain (any common format)")
    parser.add_argument("--out", type=Path, default=None,
                        help="figure to write (.png or .jpg; default: IMAGE_STEM-explained.png here)")
    parser.add_argument("--top-k", type=positive_int, default=4, help="show at most this many concepts (default: 4)")
    parser.add_argument("--threshold", type=finite_float, default=0.0,
                        help="show only concepts with local relevance above this (default: 0, i.e. concepts that "
                             "speak for the prediction; paper figures: 0.5)")
    parser.add_argument("--lambdas", default="0,1,2,4", help="multipliers of the concept in the sweep (default: 0,1,2,4)")
    parser.add_argument("--device", default="auto", help="'auto', 'cpu', 'cuda', ... (default: auto)")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing --out file")


def run_explain_command(args: argparse.Namespace) -> int:
    """Run `viscoin explain`; prints the prediction and the concepts, writes the figure."""
    if args.top_k is not None and args.top_k < 1:
        raise ValueError(f"--top-k: expected >= 1, got {args.top_k}")
    lambdas = parse_lambdas(args.lambdas)
    out = args.out if args.out is not None else Path(f"{Path(args.image).stem}-explained.png")
    result = explain_image(args.checkpoint, args.image, out, top_k=args.top_k, threshold=args.threshold,
                           lambdas=lambdas, device=resolve_device(args.device), overwrite=args.overwrite)
    print(f"{result['image']}: predicted {result['predicted_name']} (p = {result['probability']:.3f})")
    for j, r in zip(result["concepts"], result["relevance"]):
        print(f"  concept {j}: relevance {r:+.3f}")
    if not result["concepts"]:
        print("  no concept passes the threshold")
    w, h = result["figure_size"]
    print(f"wrote {out} ({w}x{h})")
    return 0


def register(sub: Any) -> None:
    """Add `viscoin explain` to the top-level subparsers."""
    p = sub.add_parser("explain", help="explain one image: prediction, top concepts, λ sweeps, difference images")
    add_explain_arguments(p)
    p.set_defaults(func=run_explain_command)

"""`viscoin explain CHECKPOINT IMAGE`: one image's prediction explained through its concepts.

Hooks for `viscoin.cli` (which owns the parser): `add_explain_arguments(parser)` and
`run_explain_command(args) -> int`. User errors are raised as ValueError (or subclasses), which
`viscoin.cli.main` prints as one line.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

import torch

from viscoin.interpret.concepts import DEFAULT_LAMBDAS


def parse_lambdas(text: str) -> tuple[float, ...]:
    """'0,1,2,4' -> (0.0, 1.0, 2.0, 4.0); ValueError naming the option otherwise."""
    try:
        values = tuple(float(v) for v in text.split(",") if v.strip())
    except ValueError as exc:
        raise ValueError(f"--lambdas: expected comma-separated numbers, e.g. 0,1,2,4; got {text!r}") from exc
    if len(values) < 2:
        raise ValueError(f"--lambdas: expected at least two values, e.g. 0,1,2,4; got {text!r}")
    return values


def class_names(info: dict[str, Any], num_classes: int) -> list[str]:
    """Class names saved with the checkpoint (``extra.classes``), else 'class i'."""
    names = (info.get("extra") or {}).get("classes")
    if isinstance(names, list) and len(names) == num_classes:
        return [str(n) for n in names]
    return [f"class {i}" for i in range(num_classes)]


def load_input_image(path: str | Path, resolution: int) -> torch.Tensor:
    """An image file -> [3, R, R] in [-1, 1] with the data package's decoding and test transform.

    (Resize the shorter side to R, center crop; `viscoin.data.base`.) A missing file or one that is
    not an image is a ValueError naming the file.
    """
    from viscoin.data.base import ImageDataset, load_image

    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"image not found: {path}")
    if not path.is_file():
        raise ValueError(f"{path}: not a file; give an image (.jpg, .png, ...)")
    img = load_image(path)  # DatasetError (a ValueError) naming the file if it is not an image
    test = ImageDataset([], [], split="test", resolution=resolution, augment=False)
    return test.transform(img)


def explain_image(
    checkpoint: str | Path,
    image: str | Path,
    out: str | Path,
    top_k: int | None = 4,
    threshold: float | None = None,
    lambdas: tuple[float, ...] = DEFAULT_LAMBDAS,
    device: str | torch.device = "cpu",
) -> dict[str, Any]:
    """Explain one image with a saved VisCoIN and write the figure to `out`.

    Returns the prediction and the shown concepts (plain values) for printing or JSON.
    """
    from viscoin.interpret.concepts import ConceptExplainer
    from viscoin.interpret.plot import explain_figure, save_figure
    from viscoin.model.viscoin import load_viscoin, read_viscoin_info

    info = read_viscoin_info(checkpoint)
    model = load_viscoin(checkpoint, device=device)
    names = class_names(info, model.num_classes)
    x = load_input_image(image, model.resolution)
    explainer = ConceptExplainer(model)
    top = explainer.top_concepts(x, k=top_k, threshold=threshold)[0]
    concepts = [int(j) for j in top["concepts"]]
    sweeps = [explainer.lambda_sweep(x, j, lambdas) for j in concepts]
    fig = explain_figure(x, explainer.reconstruct(x), names[top["class"]], top["probability"], concepts,
                         [float(r) for r in top["relevance"]], sweeps, lambdas, source=Path(image).name)
    save_figure(out, fig)
    return {
        "image": str(image),
        "predicted_class": top["class"],
        "predicted_name": names[top["class"]],
        "probability": top["probability"],
        "concepts": concepts,
        "relevance": [float(r) for r in top["relevance"]],
        "lambdas": list(lambdas),
        "figure": str(out),
        "figure_size": [int(fig.shape[1]), int(fig.shape[0])],
    }


def add_explain_arguments(parser: argparse.ArgumentParser) -> None:
    """Arguments of `viscoin explain` on a (sub)parser."""
    parser.add_argument("checkpoint", type=Path, help="VisCoIN folder written by `viscoin train` (RUN/viscoin)")
    parser.add_argument("image", type=Path, help="image file to explain (any common format)")
    parser.add_argument("--out", type=Path, default=None,
                        help="figure to write (.png or .jpg; default: IMAGE_STEM-explained.png here)")
    parser.add_argument("--top-k", type=int, default=4, help="show at most this many concepts (default: 4)")
    parser.add_argument("--threshold", type=float, default=0.0,
                        help="show only concepts with local relevance above this (default: 0, i.e. concepts that "
                             "speak for the prediction; paper figures: 0.5)")
    parser.add_argument("--lambdas", default="0,1,2,4", help="multipliers of the concept in the sweep (default: 0,1,2,4)")
    parser.add_argument("--device", default="auto", help="'auto', 'cpu', 'cuda', ... (default: auto)")


def run_explain_command(args: argparse.Namespace) -> int:
    """Run `viscoin explain`; prints the prediction and the concepts, writes the figure."""
    from viscoin.utils.device import resolve_device

    if args.top_k is not None and args.top_k < 1:
        raise ValueError(f"--top-k: expected >= 1, got {args.top_k}")
    lambdas = parse_lambdas(args.lambdas)
    out = args.out if args.out is not None else Path(f"{Path(args.image).stem}-explained.png")
    result = explain_image(args.checkpoint, args.image, out, top_k=args.top_k, threshold=args.threshold,
                           lambdas=lambdas, device=resolve_device(args.device))
    print(f"{result['image']}: predicted {result['predicted_name']} (p = {result['probability']:.3f})")
    for j, r in zip(result["concepts"], result["relevance"]):
        print(f"  concept {j}: relevance {r:+.3f}")
    if not result["concepts"]:
        print("  no concept passes the threshold")
    w, h = result["figure_size"]
    print(f"wrote {out} ({w}x{h})")
    return 0

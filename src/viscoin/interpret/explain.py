"""One image's prediction explained through its concepts, as a figure (`viscoin explain CHECKPOINT IMAGE`).

User errors are raised as ValueError (or subclasses), which the command line prints as one line.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from viscoin.data.base import ImageDataset, load_image
from viscoin.interpret.explainer import DEFAULT_LAMBDAS, ConceptExplainer
from viscoin.interpret.plot import explain_figure, save_figure
from viscoin.model.loading import class_names, load_concept_model, read_model_info
from viscoin.utils.images import image_format
from viscoin.utils.io import refuse_existing


def load_input_image(path: str | Path, resolution: int) -> torch.Tensor:
    """An image file -> [3, R, R] in [-1, 1] with the data package's decoding and test transform.

    (Resize the shorter side to R, center crop; `viscoin.data.base`.) A missing file or one that is
    not an image is a ValueError naming the file.
    """
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
    overwrite: bool = False,            # replace an existing `out`
) -> dict[str, Any]:
    """Explain one image with a saved concept model and write the figure to `out` (an existing file
    only with `overwrite`; the inputs are checked first, so a bad input names itself).

    Returns the prediction and the shown concepts (plain values) for printing or JSON.
    """
    info = read_model_info(checkpoint)
    model = load_concept_model(checkpoint, device=device)
    names = class_names(info, model.num_classes)
    x = load_input_image(image, model.resolution)
    image_format(out)
    refuse_existing([out] if Path(out).exists() else [], "exists", overwrite)
    explainer = ConceptExplainer(model)
    top = explainer.top_concepts(x, k=top_k, threshold=threshold)[0]
    concepts = [int(j) for j in top["concepts"]]
    sweeps = [explainer.lambda_sweep(x, j, lambdas) for j in concepts]
    fig = explain_figure(x, explainer.reconstruct(x), names[top["class"]], top["probability"], concepts,
                         [float(r) for r in top["relevance"]], sweeps, lambdas, source=Path(image).name,
                         decoder=model.decoder_name)
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

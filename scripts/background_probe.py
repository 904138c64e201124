"""How much of the synthetic birds' background colour a trained concept model keeps, stage by stage.

The background is a nuisance factor of the synthetic birds (plain, one colour per image), so the pixel
at (1, 1) is its colour. A ridge regression from each representation to that colour is fitted on the
first 900 test images and scored on the other 300 (R², 1: all of it, 0: none); the last row compares
the reconstruction's own corner pixel with the input's. Only the concept-model contract is used.

    python scripts/background_probe.py viscoin-demo/viscoin
"""

from __future__ import annotations

import argparse

import torch
import torch.nn.functional as F

from viscoin.model.loading import load_trained
from viscoin.utils.config import ConfigError
from viscoin.utils.io import CheckpointError
from viscoin.utils.iteration import load_images

FIT = 900          # test images the regression is fitted on; the rest score it


def ridge_r2(features: torch.Tensor, target: torch.Tensor, fit: int = FIT, lam: float = 0.1) -> float:
    """Held-out R² of a ridge regression (with intercept) from features [N, D] to target [N, 3]."""
    a = torch.cat([features.flatten(1), torch.ones(len(features), 1)], dim=1).double()
    y = target.double()
    gram = a[:fit].T @ a[:fit] + lam * torch.eye(a.shape[1], dtype=a.dtype)
    w = torch.linalg.solve(gram, a[:fit].T @ y[:fit])
    residual = ((a[fit:] @ w - y[fit:]) ** 2).sum()
    return float(1 - residual / ((y[fit:] - y[fit:].mean(dim=0)) ** 2).sum())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model", help="a trained model folder, e.g. viscoin-demo/viscoin")
    parser.add_argument("--images", type=int, default=1200, help="test images used (default: 1200)")
    args = parser.parse_args()
    if args.images <= FIT:
        parser.error(f"--images: expected more than {FIT}, got {args.images}")
    torch.set_grad_enabled(False)
    try:
        trained = load_trained(args.model, (), "cpu")
    except (CheckpointError, ConfigError, FileNotFoundError) as err:
        parser.error(str(err))
    model = trained.model.eval()
    if trained.data.kind != "synthetic":
        parser.error(f"{args.model}: trained on {trained.data.kind!r} data; the probe needs the synthetic birds")
    test = trained.dataset("test")
    count = min(args.images, len(test))
    if count <= FIT:
        parser.error(f"{args.model}: the test split has {len(test)} images; the probe needs more than {FIT}")
    x, _ = load_images(test, torch.arange(count))
    background = x[:, :, 1, 1]                                               # [N, 3] in [-1, 1]
    rows = [("input pixels, 8x8 average-pooled", ridge_r2(F.avg_pool2d(x, 8), background))]
    for name, tap in model.classifier_features(x).items():
        if tap.dim() == 4:
            rows.append((f"f's tap {name}, pooled ({tap.shape[1]} channels)", ridge_r2(tap.mean(dim=(2, 3)), background)))
    phi, support = model.concepts(x)
    rows.append((f"concept maps Φ ({phi.shape[1]} x {phi.shape[2]}x{phi.shape[3]})", ridge_r2(phi, background)))
    if support is not None:
        rows.append((f"support Φ' ({support[0].numel()} values)", ridge_r2(support, background)))
    corner = model.reconstruct(x)[:, :, 1, 1]
    kept = 1 - ((corner - background) ** 2).sum() / ((background - background.mean(dim=0)) ** 2).sum()
    print(f"{args.model}: background colour (pixel (1, 1)) of {count} test images; ridge R² on the last {count - FIT}\n")
    print("| representation | R² |\n|---|---:|")
    for name, value in rows:
        print(f"| {name} | {value:.3f} |")
    print(f"| the reconstruction's own corner pixel (no regression) | {float(kept):.3f} |")


if __name__ == "__main__":
    main()

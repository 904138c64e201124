"""Accuracy and reconstruction fidelity on the test split (``method.md``, "Evaluation"; paper tables 1-2).

One batched pass over the test images gives, per sample, g's and f's predictions and the
reconstruction x̃ = G(w̄ + Ω(Φ(x), Φ'(x))); from them: accuracy of g and of f, their agreement,
per-sample pixel MSE and LPIPS (means reported), and the FID between the set of reconstructions
and the set of inputs (`viscoin.metrics.fid`, with the feature space's label).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from viscoin.metrics.common import batches, load_images, model_device, progress_bar
from viscoin.metrics.fid import FIDFeatures, fid_from_features
from viscoin.model.viscoin import VisCoIN


@torch.no_grad()
def fidelity_pass(
    model: VisCoIN,
    dataset: Any,                                          # test split, items dicts image/label
    indices: Sequence[int] | torch.Tensor | None = None,   # samples to use (default: all)
    batch_size: int = 64,
    perceptual: torch.nn.Module | None = None,             # per-sample distance [N] (LPIPS), or None
    fid_features: FIDFeatures | None = None,               # feature extractor for FID, or None
    progress: bool = False,
) -> dict[str, Any]:
    """Accuracy of g and f, agreement, mean MSE (and LPIPS, FID when given) over the chosen samples.

    Keys: accuracy_g, accuracy_f, agreement, mse, count; plus lpips and lpips_name with
    `perceptual`, fid and fid_features (the label of the feature space) with `fid_features`.
    """
    was = model.training
    model.eval()
    device = model_device(model)
    idx = torch.arange(len(dataset)) if indices is None else torch.as_tensor(indices, dtype=torch.long)
    n = len(idx)
    if n == 0:
        raise ValueError("fidelity_pass: no samples to evaluate")
    sums = {"accuracy_g": 0.0, "accuracy_f": 0.0, "agreement": 0.0, "mse": 0.0, "lpips": 0.0}
    real_feats: list[torch.Tensor] = []
    fake_feats: list[torch.Tensor] = []
    for sl in progress_bar(list(batches(n, batch_size)), "accuracy/reconstruction", progress):
        x, y = load_images(dataset, idx[sl])
        x, y = x.to(device), y.to(device)
        taps = model.f.features(x)
        phi, support = model.psi(taps)
        pred_g, pred_f = model.theta(phi).argmax(1), taps["logits"].argmax(1)
        x_rec = model.generate(phi, support).float()
        sums["accuracy_g"] += (pred_g == y).sum().item()
        sums["accuracy_f"] += (pred_f == y).sum().item()
        sums["agreement"] += (pred_g == pred_f).sum().item()
        sums["mse"] += (x_rec - x).square().mean(dim=(1, 2, 3)).sum().item()
        if perceptual is not None:
            sums["lpips"] += perceptual(x_rec, x).float().sum().item()
        if fid_features is not None:
            real_feats.append(fid_features(x).double().cpu())
            fake_feats.append(fid_features(x_rec).double().cpu())
    model.train(was)
    out: dict[str, Any] = {k: v / n for k, v in sums.items() if k != "lpips"}
    out["count"] = n
    if perceptual is not None:
        out["lpips"] = sums["lpips"] / n
        out["lpips_name"] = getattr(perceptual, "name", type(perceptual).__name__)
    if fid_features is not None:
        out["fid"] = fid_from_features(torch.cat(real_feats), torch.cat(fake_feats))
        out["fid_features"] = fid_features.label
    return out


def evaluate_agreement(model: VisCoIN, dataset: Any, batch_size: int, device: torch.device | str | None = None,
                       limit: int = 0) -> dict[str, float]:
    """Test accuracy of g and of f, their agreement, and pixel MSE of the reconstructions (training-time check).

    The first `limit` samples (all when 0), in order; `device` is unused (the model's device is used)
    and kept for the trainer's call signature.
    """
    n = len(dataset) if not limit else min(limit, len(dataset))
    return fidelity_pass(model, dataset, torch.arange(n), batch_size)

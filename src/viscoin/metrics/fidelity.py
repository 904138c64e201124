"""Accuracy and reconstruction fidelity on the test split (paper section 4.1, tables 1-2).

One batched pass over the test images gives, per sample, g's and f's predictions and the
reconstruction (VisCoIN: x̃ = G(w̄ + Ω(Φ(x), Φ'(x))); a baseline: its decoder's image); from them:
accuracy of g and of f, their agreement, per-sample pixel MSE and LPIPS (means reported), the
FID between the set of reconstructions and the set of inputs (`viscoin.utils.fid`, with the
feature space's label), and whether the reconstruction shows the input's class as f sees it:
the share of samples with argmax f(x̃) = argmax f(x) and the mean soft cross-entropy
CE(f(x̃), softmax f(x)), the quantity the γ term of eq. 4 trains (reported without the weight γ).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from viscoin.model.contract import ConceptModel
from viscoin.model.passes import AGREEMENT_SUMS, accumulate_agreement, reconstruction_batches
from viscoin.model.perceptual import PerceptualDistance
from viscoin.utils.fid import FIDFeatures, fid_from_features


@torch.no_grad()
def fidelity_pass(
    model: ConceptModel,
    dataset: Any,                                          # test split, items dicts image/label
    indices: Sequence[int] | torch.Tensor | None = None,   # samples to use (default: all)
    batch_size: int = 64,
    perceptual: PerceptualDistance | None = None,          # per-sample distance [N] (LPIPS), or None
    fid_features: FIDFeatures | None = None,               # feature extractor for FID, or None
    progress: bool = False,
) -> dict[str, Any]:
    """Accuracy of g and f, agreement, mean MSE, reconstruction agreement and CE (and LPIPS, FID when
    given) over the chosen samples.

    Keys: accuracy_g, accuracy_f, agreement, mse, reconstruction_agreement (share of samples whose
    reconstruction f classifies as it classifies the input), reconstruction_ce (mean CE(f(x̃), softmax f(x)),
    unweighted by γ), count; plus lpips and lpips_name with `perceptual`, fid and fid_features (the
    label of the feature space) with `fid_features`.
    """
    was = model.training
    model.eval()
    idx = torch.arange(len(dataset)) if indices is None else torch.as_tensor(indices, dtype=torch.long)
    n = len(idx)
    if n == 0:
        raise ValueError("fidelity_pass: no samples to evaluate")
    sums = dict.fromkeys(AGREEMENT_SUMS, 0.0)
    lpips_sum = 0.0
    real_feats: list[torch.Tensor] = []
    fake_feats: list[torch.Tensor] = []
    for x, y, enc, x_rec in reconstruction_batches(model, dataset, idx, batch_size, progress):
        accumulate_agreement(sums, x, y, enc, x_rec, model.classify(x_rec))
        if perceptual is not None:
            lpips_sum += perceptual(x_rec, x).float().sum().item()
        if fid_features is not None:
            real_feats.append(fid_features(x).double().cpu())
            fake_feats.append(fid_features(x_rec).double().cpu())
    model.train(was)
    out: dict[str, Any] = {k: v / n for k, v in sums.items()}
    out["count"] = n
    if perceptual is not None:
        out["lpips"] = lpips_sum / n
        out["lpips_name"] = perceptual.name
    if fid_features is not None:
        out["fid"] = fid_from_features(torch.cat(real_feats), torch.cat(fake_feats))
        out["fid_features"] = fid_features.label
    return out

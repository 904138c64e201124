"""Local and global concept relevance (``shared/docs/method.md``, "Interpretation"; paper section 3.5).

- pooled activation ``a_j(x) = maxpool(φ_j(x))`` and predicted class ``ĉ = argmax g(x)``;
- local relevance ``r_{j,x} = a_j(x) W_{j,ĉ} / max_l |a_l(x) W_{l,ĉ}|`` in [−1, 1], with W the
  weights of Θ's linear layer ([C, K] in PyTorch's layout, so ``W_{j,c}`` is ``weight[c, j]``);
- global relevance ``r_{j,c}``: the mean of ``r_{j,x}`` over the samples whose *true* label is c,
  each ``r_{j,x}`` taken w.r.t. the class predicted by g on that sample (as in the paper).

These functions are the single implementation: `viscoin.interpret` and the faithfulness and
consistency metrics import them from here.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from viscoin.metrics.common import encode_dataset, model_device
from viscoin.model.viscoin import VisCoIN

__all__ = ["global_relevance", "global_relevance_from", "local_relevance", "predicted_class", "relevance_from"]


def relevance_from(model: VisCoIN, phi: torch.Tensor, classes: torch.Tensor | None = None) -> torch.Tensor:
    """r_{j,x} [N, K] of concept maps Φ [N, K, 3, 3] w.r.t. `classes` [N] (default: ĉ = argmax g).

    A sample whose contributions ``a_l(x) W_{l,ĉ}`` are all zero gets relevance 0 everywhere.
    """
    with torch.no_grad():
        a = model.theta.pool(phi)                                  # [N, K]
        weight = model.theta.linear.weight.to(a)                   # [C, K], on Φ's device
        if classes is None:
            classes = (a @ weight.t() + model.theta.linear.bias.to(a)).argmax(dim=1)  # ĉ (no dropout)
        contrib = a * weight[classes.to(a.device)]                 # a_j(x) W_{j,ĉ}  [N, K]
        scale = contrib.abs().amax(dim=1, keepdim=True)
        return torch.where(scale > 0, contrib / scale.clamp_min(torch.finfo(a.dtype).tiny), torch.zeros_like(contrib))


def predicted_class(model: VisCoIN, x: torch.Tensor | None = None, phi: torch.Tensor | None = None) -> torch.Tensor:
    """ĉ = argmax g(x) [N], from images `x` or from precomputed concept maps `phi`."""
    phi = _phi(model, x, phi)
    with torch.no_grad():
        return model.theta.linear(model.theta.pool(phi)).argmax(dim=1)


def local_relevance(
    model: VisCoIN,
    x: torch.Tensor | None = None,          # images [N, 3, R, R] in [-1, 1]
    phi: torch.Tensor | None = None,        # or their concept maps Φ(x) [N, K, 3, 3]
    classes: torch.Tensor | None = None,    # class per sample [N] (default: ĉ = argmax g(x))
) -> torch.Tensor:
    """Local relevance r_{j,x} [N, K] of every concept for g's prediction on each sample (section 3.5).

    Give exactly one of `x` and `phi`. Values lie in [−1, 1]; the most relevant concept of a
    sample whose top contribution is positive has r = 1.
    """
    return relevance_from(model, _phi(model, x, phi), classes)


def global_relevance_from(relevance: torch.Tensor, labels: torch.Tensor, num_classes: int) -> torch.Tensor:
    """r_{j,c} [C, K]: mean of the local relevances [N, K] over the samples with label c (0 for an absent class)."""
    labels = labels.to(relevance.device).long()
    sums = torch.zeros(num_classes, relevance.shape[1], dtype=relevance.dtype, device=relevance.device)
    sums.index_add_(0, labels, relevance)
    counts = torch.bincount(labels, minlength=num_classes).to(relevance.dtype).clamp_min(1)
    return sums / counts[:, None]


def global_relevance(
    model: VisCoIN,
    dataset: Any,                                          # items: dicts with "image" and "label"
    indices: Sequence[int] | torch.Tensor | None = None,   # subset of the dataset (default: all)
    batch_size: int = 64,
    progress: bool = False,
) -> torch.Tensor:
    """Global relevance r_{j,c} [C, K] over `dataset` (section 3.5), on the CPU.

    Samples are grouped by their true label; each sample's r_{j,x} is w.r.t. the class g predicts
    for it (the paper's definition). A class without samples gets a row of zeros.
    """
    enc = encode_dataset(model, dataset, indices, batch_size=batch_size, progress=progress, desc="relevance")
    return global_relevance_from(relevance_from(model, enc.phi), enc.labels, model.num_classes)


def _phi(model: VisCoIN, x: torch.Tensor | None, phi: torch.Tensor | None) -> torch.Tensor:
    if (x is None) == (phi is None):
        raise ValueError("give exactly one of x (images) and phi (concept maps)")
    if phi is not None:
        return phi.to(model_device(model))
    with torch.no_grad():
        return model.concepts(x)[0]

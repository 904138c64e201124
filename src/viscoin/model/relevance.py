"""Concept relevance (paper section 3.5), on tensors: the one home of these formulas.

- pooled activation ``a_j(x) = maxpool(φ_j(x))`` and predicted class ``ĉ = argmax g(x)``;
- local relevance ``r_{j,x} = a_j(x) W_{j,ĉ} / max_l |a_l(x) W_{l,ĉ}|`` in [−1, 1], with W the
  weights of the linear predictor ([C, K] in PyTorch's layout, so ``W_{j,c}`` is ``weight[c, j]``);
- global relevance ``r_{j,c}``: the mean of ``r_{j,x}`` over the samples whose *true* label is c,
  each ``r_{j,x}`` taken w.r.t. the class predicted on that sample (as in the paper);
- choosing concepts (threshold or top-k) and their most activating samples.

Every concept model offers ``model.relevance(phi)`` (`viscoin.model.contract.ConceptModel`), which
calls `local_relevance` with its own predictor's weights; metrics, reports and apps use that.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch


def local_relevance(
    pooled: torch.Tensor,                 # a_j(x) [N, K]
    weight: torch.Tensor,                 # the predictor's weights W [C, K]
    bias: torch.Tensor | None,            # its bias [C] (None: no bias)
    classes: torch.Tensor | None = None,  # class per sample [N] (default: ĉ = argmax of the linear predictor)
) -> torch.Tensor:
    """r_{j,x} [N, K]; a sample whose contributions ``a_l(x) W_{l,ĉ}`` are all zero gets 0 everywhere."""
    weight = weight.to(pooled)
    if classes is None:
        logits = pooled @ weight.t()
        if bias is not None:
            logits = logits + bias.to(pooled)
        classes = logits.argmax(dim=1)                                       # ĉ (no dropout)
    contrib = pooled * weight[classes.to(pooled.device)]                     # a_j(x) W_{j,ĉ}  [N, K]
    scale = contrib.abs().amax(dim=1, keepdim=True)
    return torch.where(scale > 0, contrib / scale.clamp_min(torch.finfo(pooled.dtype).tiny), torch.zeros_like(contrib))


def global_relevance(relevance: torch.Tensor, labels: torch.Tensor, num_classes: int) -> torch.Tensor:
    """r_{j,c} [C, K]: mean of the local relevances [N, K] over the samples with label c (0 for an absent class)."""
    labels = labels.to(relevance.device).long()
    sums = torch.zeros(num_classes, relevance.shape[1], dtype=relevance.dtype, device=relevance.device)
    sums.index_add_(0, labels, relevance)
    counts = torch.bincount(labels, minlength=num_classes).to(relevance.dtype).clamp_min(1)
    return sums / counts[:, None]


def select_concepts(
    relevance: torch.Tensor,          # relevance of each concept [K]
    k: int | None = None,             # keep at most the k most relevant
    threshold: float | None = None,   # keep those with relevance > threshold
) -> dict[str, torch.Tensor]:
    """Concepts sorted by decreasing relevance (ties: lower index first), filtered by `threshold`
    and/or cut to `k`; with neither, every concept. Returns ``{"concepts": int64 [M], "relevance": [M]}``."""
    if relevance.ndim != 1:
        raise ValueError(f"relevance: expected a vector [K], got {list(relevance.shape)}")
    if k is not None and k < 1:
        raise ValueError(f"k: expected >= 1, got {k}")
    rel = relevance.detach().float().cpu()
    order = torch.argsort(rel, descending=True, stable=True)
    if threshold is not None:
        order = order[rel[order] > threshold]
    if k is not None:
        order = order[:k]
    return {"concepts": order, "relevance": rel[order]}


def top_activating(
    pooled: torch.Tensor,                                # a_j(x) of a set of samples [N, K]
    labels: torch.Tensor,                                # their true labels [N]
    concept: int,                                        # concept j
    k: int,                                              # how many samples
    classes: int | Sequence[int] | torch.Tensor | None = None,  # only samples of this class (or these classes)
) -> torch.Tensor:
    """Rows (positions in `pooled`) of the `k` samples with the largest ``a_j``, largest first
    (ties: lower row first); fewer when there are not enough candidates."""
    n, num_concepts = pooled.shape
    if not 0 <= concept < num_concepts:
        raise ValueError(f"concept: expected in [0, {num_concepts}), got {concept}")
    if k < 1:
        raise ValueError(f"k: expected >= 1, got {k}")
    rows = torch.arange(n)
    if classes is not None:
        wanted = torch.as_tensor([classes] if isinstance(classes, int) else classes, dtype=torch.int64).flatten()
        rows = rows[torch.isin(labels.cpu(), wanted)]
    order = torch.argsort(pooled[rows, concept], descending=True, stable=True)[:k]
    return rows[order]

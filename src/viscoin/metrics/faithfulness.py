"""Faithfulness of the concepts (paper section 4.1, appendix B.3).

For a sample x with ĉ = argmax g(x) and threshold τ: zero every φ_j with r_{j,x} > τ to get
Φ_τ(x), decode x̃_τ (VisCoIN: G(w̄ + Ω(Φ_τ(x), Φ'(x)))), and score

    FF_x = f(x̃)_ĉ − f(x̃_τ)_ĉ        (f's softmax probability of ĉ; x̃ the reconstruction)

Reported: the median of FF_x over N random test samples, per τ, beside the random baseline that
zeroes as many concepts chosen uniformly at random (seeded; drawn once for all samples, so the
result does not depend on the batch size).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from viscoin.model.contract import ConceptModel
from viscoin.model.passes import Encoded, decode_batched
from viscoin.utils.iteration import batches, progress_bar

DEFAULT_THRESHOLDS = (0.1, 0.2, 0.4)


def random_masks(counts: torch.Tensor, num_concepts: int, generator: torch.Generator) -> torch.Tensor:
    """Boolean [N, K] masks with counts[i] concepts chosen uniformly at random in row i."""
    order = torch.rand(counts.shape[0], num_concepts, generator=generator).argsort(dim=1)
    ranks = torch.empty_like(order).scatter_(1, order, torch.arange(num_concepts).expand_as(order).contiguous())
    return ranks < counts[:, None]


@torch.no_grad()
def faithfulness_scores(
    model: ConceptModel,
    enc: Encoded,                                      # Φ, Φ', g's logits of the chosen test samples
    thresholds: Sequence[float] = DEFAULT_THRESHOLDS,
    seed: int = 0,                                     # seeds the random baseline
    batch_size: int = 64,
    progress: bool = False,
) -> dict[str, torch.Tensor]:
    """Per-sample scores: ``{"ff@τ", "random@τ", "removed@τ"}`` -> [N] tensors for each τ (τ as in `str(τ)`).

    ``removed@τ`` is the number of concepts zeroed (the same for the baseline).
    """
    model.eval()
    device = model.device
    n, k = enc.phi.shape[:2]
    gen = torch.Generator().manual_seed(seed)
    classes = enc.logits_g.argmax(dim=1)                            # ĉ
    relevance = model.relevance(enc.phi.to(device), classes.to(device)).cpu()
    masks = {t: relevance > t for t in thresholds}
    random = {t: random_masks(masks[t].sum(1), k, gen) for t in thresholds}
    out = {f"{key}@{t}": torch.zeros(n) for t in thresholds for key in ("ff", "random", "removed")}
    for t in thresholds:
        out[f"removed@{t}"] = masks[t].sum(1).float()

    for sl in progress_bar(list(batches(n, batch_size)), "faithfulness", progress):
        phi = enc.phi[sl].to(device)
        support = None if enc.support is None else enc.support[sl].to(device)
        c = classes[sl].to(device)
        rows = torch.arange(phi.shape[0], device=device)
        # x̃ and every zeroed variant of this batch, generated and classified batch_size images at a time.
        variants = [phi] + [phi * ~m[sl].to(device)[:, :, None, None] for t in thresholds for m in (masks[t], random[t])]
        sup = None if support is None else support.repeat(len(variants), 1)
        probs = torch.cat([model.classify(img).float().softmax(dim=1)
                           for _, img in decode_batched(model, torch.cat(variants), sup, batch_size)])
        p_c = probs.view(len(variants), phi.shape[0], -1)[:, rows, c].cpu()   # [V, B]
        for i, t in enumerate(thresholds):
            out[f"ff@{t}"][sl] = p_c[0] - p_c[1 + 2 * i]
            out[f"random@{t}"][sl] = p_c[0] - p_c[2 + 2 * i]
    return out


def faithfulness(
    model: ConceptModel,
    enc: Encoded,
    thresholds: Sequence[float] = DEFAULT_THRESHOLDS,
    seed: int = 0,
    batch_size: int = 64,
    progress: bool = False,
) -> dict[str, Any]:
    """Median FF_x per τ with the random baseline (paper table 2), plus means and concepts removed.

    Returns ``{"count": N, "thresholds": {str(τ): {"median", "random_median", "mean", "random_mean",
    "removed_mean"}}}``.
    """
    if len(enc) == 0:
        raise ValueError("faithfulness: no samples")
    scores = faithfulness_scores(model, enc, thresholds, seed, batch_size, progress)
    per: dict[str, Any] = {}
    for t in thresholds:
        ff, rnd = scores[f"ff@{t}"], scores[f"random@{t}"]
        per[str(t)] = {
            "median": _median(ff), "random_median": _median(rnd),
            "mean": ff.mean().item(), "random_mean": rnd.mean().item(),
            "removed_mean": scores[f"removed@{t}"].mean().item(),
        }
    return {"count": len(enc), "thresholds": per}


def _median(t: torch.Tensor) -> float:
    # The usual median (mean of the two middle values for even N), not torch's lower median.
    return float(t.double().quantile(0.5).item())

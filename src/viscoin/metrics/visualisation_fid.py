"""FID of concept visualisations (paper appendix C.2), for any concept model.

1. global relevance ``r_{j,c}`` over the training split (`viscoin.model.relevance`: the mean over
   the training samples of true class c of the local relevance w.r.t. g's prediction, as the
   consistency metric takes it);
2. the relevant class–concept pairs, ``r_{j,c} > threshold``; `pairs` of them drawn at random
   (seeded; all of them when there are fewer; the paper: 400);
3. data images: each pair's `per_pair` (paper: 3) maximally activating samples (MAS), the
   training samples of true class c with the largest pooled activation a_j;
4. the system's visualisation of concept j on each of them
   (`viscoin.interpret.visualise.concept_visualisations`: VisCoIN's image at its largest λ,
   FLINT's activation maximisation from 0.5 × the MAS, FLAEM's decoded scaled concept);
5. the FID between the data images and the visualisations in the chosen feature space
   (`viscoin.utils.fid`; its label is stored with the number).

The paper's 400 pairs × 3 MAS give 1200 images per set.
"""

from __future__ import annotations

from typing import Any

import torch

from viscoin.interpret.visualise import LAMBDA_MAX, ActivationMaximisationConfig, concept_visualisations
from viscoin.model.contract import ConceptModel
from viscoin.model.passes import Encoded
from viscoin.model.relevance import global_relevance, top_activating
from viscoin.utils.fid import FIDFeatures, fid_from_features
from viscoin.utils.iteration import batches, load_images, progress_bar, seeded_subset


def relevant_pairs(
    global_rel: torch.Tensor,   # r_{j,c} [C, K]
    threshold: float,           # relevant: r_{j,c} > threshold
    count: int,                 # how many to draw (all when there are fewer)
    seed: int,
) -> dict[str, Any]:
    """``{"pairs": int64 [P, 2] of (class c, concept j) in row-major order, "relevance": [P], "relevant": how many
    pairs pass the threshold}``: `count` relevant pairs drawn at random (seeded), or all of them."""
    if global_rel.ndim != 2:
        raise ValueError(f"global relevance: expected [C, K], got {list(global_rel.shape)}")
    if count < 1:
        raise ValueError(f"pairs: expected >= 1, got {count}")
    rel = global_rel.detach().float().cpu()
    candidates = torch.nonzero(rel > threshold)                              # [R, 2], row-major
    chosen = candidates[seeded_subset(len(candidates), count, seed)]
    return {"pairs": chosen, "relevance": rel[chosen[:, 0], chosen[:, 1]], "relevant": len(candidates)}


def pair_samples(
    pooled: torch.Tensor,       # a_j(x) of the training samples [N, K]
    labels: torch.Tensor,       # their true labels [N]
    pairs: torch.Tensor,        # (class, concept) [P, 2]
    per_pair: int,              # MAS per pair
) -> tuple[torch.Tensor, torch.Tensor]:
    """(pair of each data image [M], its row in `pooled` [M]): each pair's `per_pair` samples of its class with
    the largest a_j, largest first (fewer when the class has fewer samples)."""
    pair_of, rows = [], []
    for p, (c, j) in enumerate(pairs.tolist()):
        top = top_activating(pooled, labels, j, per_pair, classes=c)
        pair_of.append(torch.full((len(top),), p, dtype=torch.long))
        rows.append(top)
    empty = torch.zeros(0, dtype=torch.long)
    return (torch.cat(pair_of) if pair_of else empty), (torch.cat(rows) if rows else empty)


def visualisation_fid(
    model: ConceptModel,
    train_enc: Encoded,                 # the training split's encoding (`encode_dataset`)
    train_set: Any,                     # the training split itself (items dicts image/label), for the MAS
    features: FIDFeatures,              # FID feature extractor (on the model's device)
    pairs: int = 400,                   # relevant pairs drawn (paper: 400)
    per_pair: int = 3,                  # MAS per pair (paper: 3)
    threshold: float = 0.5,             # relevant: r_{j,c} > threshold
    lambda_max: float = LAMBDA_MAX,     # "decoder" visualisations: φ_j × λ_max
    am: ActivationMaximisationConfig = ActivationMaximisationConfig(),  # activation maximisation's setting
    seed: int = 0,
    batch_size: int = 64,
    progress: bool = False,
) -> dict[str, Any]:
    """The visualisation FID (module docstring): ``{"fid", "fid_features", "pairs", "relevant_pairs", "images",
    "visualisation", "what", "record", "selected": [{"class", "concept", "relevance", "indices"}]}``; "fid" is
    None (with "skipped") when fewer than 2 data images exist."""
    if per_pair < 1:
        raise ValueError(f"per_pair: expected >= 1, got {per_pair}")
    device = model.device
    phi = train_enc.phi.to(device)
    global_rel = global_relevance(model.relevance(phi), train_enc.labels, model.num_classes).cpu()
    sel = relevant_pairs(global_rel, threshold, pairs, seed)
    pair_of, rows = pair_samples(model.pool(phi).cpu(), train_enc.labels, sel["pairs"], per_pair)
    indices = train_enc.indices[rows]                                          # dataset indices of the MAS
    concepts = sel["pairs"][pair_of, 1]
    out: dict[str, Any] = {
        "fid": None, "fid_features": features.label, "pairs": len(sel["pairs"]), "relevant_pairs": sel["relevant"],
        "threshold": threshold, "per_pair": per_pair, "images": len(rows),
        "selected": [{"class": int(c), "concept": int(j), "relevance": float(r),
                      "indices": indices[pair_of == p].tolist()}
                     for p, ((c, j), r) in enumerate(zip(sel["pairs"].tolist(), sel["relevance"]))],
    }
    if len(rows) < 2:
        out["skipped"] = (f"{len(rows)} data image(s) from {sel['relevant']} relevant pair(s) (r > {threshold}); "
                          "FID needs at least 2")
        return out
    real, fake, records = [], [], []
    for sl in progress_bar(list(batches(len(rows), batch_size)), "visualisation FID", progress):
        images, _ = load_images(train_set, indices[sl])
        vis = concept_visualisations(model, images, concepts[sl], lambda_max, am, batch_size)
        with torch.no_grad():
            real.append(features(images.to(device)).double().cpu())
            fake.append(features(vis.images.to(device)).double().cpu())
        records.append(vis.record)
    out["fid"] = fid_from_features(torch.cat(real), torch.cat(fake))
    out["visualisation"], out["what"] = vis.kind, vis.what
    out["record"] = {k: v for k, v in records[0].items() if k not in ("count", "initial_activation", "final_activation")}
    if "final_activation" in records[0]:
        for key in ("initial_activation", "final_activation"):
            values = [a for r in records for a in r[key]]
            out["record"][f"mean_{key}"] = sum(values) / len(values)
    return out

"""Ground-truth metrics (beyond the paper): do the learnt concepts match known attributes?

They need binary attribute labels per image: the synthetic birds' 17 factor values
(`viscoin.data.synthetic`), CUB's 312 attributes, CelebA-HQ's 40. Two questions:

1. **Concept-attribute alignment.** For attribute a and concept k, the ROC-AUC of the pooled
   activation a_k(x) (Θ's max-pool of φ_k, as in the relevance r_{k,x}) as a detector of a on
   the test split. An attribute's alignment is its best AUC over concepts (a concept that fires
   when the attribute is present; an anti-aligned concept, AUC near 0, does not count). Reported:
   the mean over the *class-defining* attributes and the share of them *captured* (AUC >= 0.9),
   and the same over all attributes. An attribute is class-defining when its frequency within
   every class of the training split is <= 1 - purity or >= purity (default purity 0.9; the
   class decides it) and it is neither always nor never present. On the synthetic birds these are
   exactly body colour, head colour and wing pattern (11 attributes).

2. **Visualisation correctness.** An *attribute probe* (one logistic regression per attribute on
   f's spatially averaged taps, trained on the training split, its test accuracy reported) judges
   what the decoder draws for a concept: for each of the `top_concepts` most relevant concepts
   (largest global relevance max_c r_{k,c}), take its best-aligned attribute a* and `num_images`
   test images that do *not* have a* (seeded choice), and generate them with φ_k replaced by λ
   times the concept's *pattern* (everything else fixed) for each λ. λ = 0 removes the concept;
   raising λ adds more and more of it. The concept's visualisation is *correct* when the probe's
   mean probability of a* rises by at least `min_gain` from the smallest to the largest λ: drawing
   the concept draws its attribute. (Scaling φ_k on images that already show a* cannot be judged:
   the probe is saturated there and other concepts often carry the same attribute.) Reported: the
   share of correct concepts, the mean gain, and per concept: a*, its AUC and the mean probability
   at each λ.

   The pattern (``edit``):
   - ``"pattern"`` (default): the map φ_k(x*) [3, 3] of the test image x* where the concept fires
     most (largest pooled activation). λ·φ_k(x*) is the paper's visualisation edit (section 3.5:
     multiply φ_j(x) by λ, reliable up to λ = 3-4) applied to the concept's strongest activation,
     moved onto an image that lacks it: its spatial layout is one Ψ produces, and λ = 1 puts in
     exactly the activation that image had.
   - ``"constant"``: the constant map λ·φ_max (φ_max: the concept's largest activation on the test
     split), the edit of the consistency metric. Ψ never produces such a map (in the demo a concept
     fires in 4-8 of its 9 cells, most often 4), so it feeds Ω an input it never saw in training:
     on the synthetic birds its λ = 2-4 images are blobs whose colours the probe still reads, and a
     concept's sweep can rise at λ = 1 and collapse at λ = 4.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch
from scipy.stats import rankdata

from viscoin.model.contract import ConceptModel
from viscoin.model.passes import Encoded
from viscoin.model.relevance import global_relevance
from viscoin.utils.iteration import batches, load_images, progress_bar

CAPTURE_AUC = 0.9
SWEEP_EDITS = ("pattern", "constant")   # what φ_k becomes in a judged sweep (module docstring, 2.)


# ==================================================================== alignment


def roc_auc_matrix(scores: torch.Tensor, attributes: torch.Tensor) -> torch.Tensor:
    """ROC-AUC of every score column as a detector of every attribute: [A, K].

    scores [N, K], attributes [N, A] in {0, 1}. Mann-Whitney form with average ranks for ties
    (identical to scikit-learn's ``roc_auc_score``); NaN for an attribute that is always or never
    present.
    """
    if scores.ndim != 2 or attributes.ndim != 2 or scores.shape[0] != attributes.shape[0]:
        raise ValueError(f"expected scores [N, K] and attributes [N, A], got {list(scores.shape)} and "
                         f"{list(attributes.shape)}")
    ranks = torch.from_numpy(rankdata(scores.double().numpy(), axis=0))          # [N, K], ties averaged
    attrs = attributes.double()
    pos = attrs.sum(dim=0)                                                       # [A]
    neg = attrs.shape[0] - pos
    rank_sum = attrs.T @ ranks                                                   # [A, K]
    auc = (rank_sum - (pos * (pos + 1) / 2)[:, None]) / (pos * neg)[:, None]
    auc[(pos == 0) | (neg == 0)] = float("nan")
    return auc.float()


def class_frequencies(attributes: torch.Tensor, labels: torch.Tensor, num_classes: int) -> torch.Tensor:
    """Within-class frequency of every attribute: [C, A] (NaN rows for classes without samples).

    attributes [N, A] in {0, 1}, labels [N] in [0, C)."""
    attrs = attributes.float()
    freq = torch.zeros(num_classes, attrs.shape[1])
    counts = torch.bincount(labels, minlength=num_classes).float()
    freq.index_add_(0, labels, attrs)
    return freq / counts[:, None]                                                # 0 / 0 = NaN: no samples


def class_defining(attributes: torch.Tensor, labels: torch.Tensor, num_classes: int,
                   purity: float = 0.9) -> torch.Tensor:
    """Boolean [A]: attributes that every class decides (within-class frequency <= 1-purity or >= purity),
    and that are present in some but not all samples."""
    attrs = attributes.float()
    freq = class_frequencies(attrs, labels, num_classes)                         # [C, A]
    freq = freq[~freq.isnan().any(dim=1)]                                        # classes with samples
    decided = ((freq <= 1 - purity) | (freq >= purity)).all(dim=0)
    overall = attrs.mean(dim=0)
    return decided & (overall > 0) & (overall < 1)


def concept_alignment(
    pooled: torch.Tensor,                # pooled activations a_k(x) of the test split [N, K]
    attributes: torch.Tensor,            # their attributes [N, A]
    defining: torch.Tensor,              # bool [A], class-defining attributes
    names: Sequence[str],                # attribute names
) -> dict[str, Any]:
    """Per attribute: the best-aligned concept and its AUC; summaries over class-defining and all attributes."""
    auc = roc_auc_matrix(pooled.float(), attributes)                                     # [A, K]
    best = torch.nan_to_num(auc, nan=-1.0).max(dim=1)
    rows = []
    for a, name in enumerate(names):
        valid = not torch.isnan(auc[a]).all()
        rows.append({"attribute": name, "class_defining": bool(defining[a]),
                     "concept": int(best.indices[a]) if valid else None,
                     "auc": float(best.values[a]) if valid else None})

    def summary(select: list[dict[str, Any]]) -> dict[str, Any]:
        aucs = [r["auc"] for r in select if r["auc"] is not None]
        if not aucs:
            return {"count": 0, "mean_auc": None, "captured": None, "captured_count": 0}
        captured = sum(v >= CAPTURE_AUC for v in aucs)
        return {"count": len(aucs), "mean_auc": float(np.mean(aucs)), "captured": captured / len(aucs),
                "captured_count": int(captured)}

    return {"capture_auc": CAPTURE_AUC, "class_defining": summary([r for r in rows if r["class_defining"]]),
            "all": summary(rows), "attributes": rows, "auc": auc}


# ==================================================================== attribute probe


def pooled_features(feats: dict[str, torch.Tensor]) -> torch.Tensor:
    """The probe's input from f's features (`Classifier.features`: taps [N, C_t, H_t, W_t] and logits [N, C]):
    every map averaged over space, vectors as they are, concatenated in order: [N, D]."""
    return torch.cat([v.float().mean(dim=(2, 3)) if v.ndim == 4 else v.float() for v in feats.values()], dim=1)


@torch.no_grad()
def probe_features(model: ConceptModel, x: torch.Tensor) -> torch.Tensor:
    """`pooled_features` of a concept model's f on images x [N, 3, R, R]: [N, D]."""
    return pooled_features(model.classifier_features(x))


@torch.no_grad()
def dataset_features(
    features: Callable[[torch.Tensor], dict[str, torch.Tensor]],   # f's features: `Classifier.features`, ...
    dataset: Any,
    indices: torch.Tensor,               # dataset rows [n]
    batch_size: int,
    device: torch.device,                # where `features` runs
    progress: bool = False,
) -> torch.Tensor:
    """`pooled_features` of dataset samples, batched: [n, D] on the CPU (the caller sets eval mode)."""
    out = []
    for sl in progress_bar(list(batches(len(indices), batch_size)), "probe features", progress):
        x, _ = load_images(dataset, indices[sl])
        out.append(pooled_features(features(x.to(device))).cpu())
    return torch.cat(out) if out else torch.zeros(0, 0)


class AttributeProbe:
    """One L2-regularised logistic regression per attribute on standardised features (full-batch L-BFGS)."""

    def __init__(self, weight: torch.Tensor, bias: torch.Tensor, mean: torch.Tensor, std: torch.Tensor) -> None:
        self.weight, self.bias, self.mean, self.std = weight, bias, mean, std

    @classmethod
    def fit(cls, features: torch.Tensor, attributes: torch.Tensor, l2: float = 1e-3,
            iterations: int = 200) -> AttributeProbe:
        feats = features.double()
        mean, std = feats.mean(dim=0), feats.std(dim=0).clamp_min(1e-6)
        z = (feats - mean) / std
        target = attributes.double()
        weight = torch.zeros(z.shape[1], target.shape[1], dtype=torch.float64, requires_grad=True)
        bias = torch.zeros(target.shape[1], dtype=torch.float64, requires_grad=True)
        opt = torch.optim.LBFGS([weight, bias], max_iter=iterations, line_search_fn="strong_wolfe")

        def closure() -> torch.Tensor:
            opt.zero_grad()
            loss = torch.nn.functional.binary_cross_entropy_with_logits(z @ weight + bias, target)
            loss = loss + l2 * weight.square().sum() / target.shape[1]
            loss.backward()
            return loss

        with torch.enable_grad():
            opt.step(closure)
        return cls(weight.detach(), bias.detach(), mean, std)

    def probabilities(self, features: torch.Tensor) -> torch.Tensor:
        """P(attribute present) [N, A]."""
        z = (features.double() - self.mean) / self.std
        return torch.sigmoid(z @ self.weight + self.bias).float()


# ==================================================================== visualisation correctness


@torch.no_grad()
def visualisation_correctness(
    model: ConceptModel,
    train_enc: Encoded,                  # training split encoding (global relevance)
    test_enc: Encoded,                   # test split encoding (the images to sweep)
    test_images: Any,                    # test dataset (its .attributes; rows test_enc.indices)
    probe: AttributeProbe,
    alignment: dict[str, Any],           # from `concept_alignment` on the test split
    lambdas: Sequence[float] = (0.0, 1.0, 2.0, 4.0),
    top_concepts: int = 10,
    num_images: int = 16,
    min_gain: float = 0.1,
    batch_size: int = 64,
    progress: bool = False,
    seed: int = 0,                       # seeds the choice of images
    edit: str = "pattern",               # what φ_k becomes: λ·φ_k(x*) ("pattern") or λ·φ_max ("constant")
) -> dict[str, Any]:
    """See the module docstring (2.). λ values are used sorted; the gain is p(λ_max) - p(λ_min)."""
    lams = sorted(float(v) for v in lambdas)
    if len(lams) < 2:
        raise ValueError(f"lambdas: expected at least two values, got {list(lambdas)}")
    if edit not in SWEEP_EDITS:
        raise ValueError(f"edit: expected one of {list(SWEEP_EDITS)}, got {edit!r}")
    device = model.device
    auc = alignment["auc"]                                                       # [A, K]
    names = [r["attribute"] for r in alignment["attributes"]]
    rel = model.relevance(train_enc.phi.to(device), train_enc.labels.to(device)).cpu()
    global_rel = global_relevance(rel, train_enc.labels, model.num_classes)  # [C, K]
    order = torch.argsort(global_rel.max(dim=0).values, descending=True, stable=True)[:top_concepts]
    test_attrs = test_images.attributes[test_enc.indices]
    gen = torch.Generator().manual_seed(seed)
    concepts = []
    for k in progress_bar(order.tolist(), "visualisation correctness", progress):
        column = torch.nan_to_num(auc[:, k], nan=-1.0)
        a = int(column.argmax())
        absent = torch.nonzero(test_attrs[:, a] == 0).flatten()
        rows = absent[torch.randperm(len(absent), generator=gen)[:num_images]].sort().values
        phi_max = float(test_enc.phi[:, k].amax())
        source = int(test_enc.phi[:, k].amax(dim=(1, 2)).argmax())               # x*: where k fires most
        pattern = test_enc.phi[source, k] if edit == "pattern" else torch.full_like(test_enc.phi[0, k], phi_max)
        phi = test_enc.phi[rows].to(device)
        support = None if test_enc.support is None else test_enc.support[rows].to(device)
        means = []
        for lam in lams:
            edited = phi.clone()
            edited[:, k] = lam * pattern.to(device)
            probs = []
            for sl in batches(len(rows), batch_size):
                img = model.decode(edited[sl], None if support is None else support[sl])
                probs.append(probe.probabilities(probe_features(model, img).cpu())[:, a])
            means.append(float(torch.cat(probs).mean()) if probs else float("nan"))
        gain = means[-1] - means[0]
        concepts.append({"concept": k, "relevance": float(global_rel[:, k].max()), "attribute": names[a],
                         "auc": float(auc[a, k]), "images": len(rows), "phi_max": phi_max,
                         "pattern": pattern.tolist(),                               # [3, 3] at λ = 1
                         "pattern_source": int(test_enc.indices[source]) if edit == "pattern" else None,
                         "probability": dict(zip(lams, means)), "gain": gain,
                         "correct": bool(gain >= min_gain)})
    correct = [c["correct"] for c in concepts]
    return {"lambdas": lams, "min_gain": min_gain, "edit": edit, "concepts": concepts,
            "correct": float(np.mean(correct)) if correct else None,
            "mean_gain": float(np.mean([c["gain"] for c in concepts])) if concepts else None}


def ground_truth_metrics(
    model: ConceptModel,
    train_set: Any,                      # training split, no augmentation, with .attributes
    test_set: Any,                       # test split, with .attributes
    train_enc: Encoded,
    test_enc: Encoded,
    purity: float = 0.9,
    lambdas: Sequence[float] = (0.0, 1.0, 2.0, 4.0),
    top_concepts: int = 10,
    num_images: int = 16,
    min_gain: float = 0.1,
    batch_size: int = 64,
    progress: bool = False,
    seed: int = 0,
    edit: str = "pattern",
) -> dict[str, Any]:
    """Alignment, the probe's accuracy and visualisation correctness; JSON-serialisable."""
    names = list(test_set.attribute_names)
    train_attrs = train_set.attributes[train_enc.indices]
    test_attrs = test_set.attributes[test_enc.indices]
    defining = class_defining(train_attrs, train_enc.labels, model.num_classes, purity)
    alignment = concept_alignment(model.pool(test_enc.phi), test_attrs, defining, names)

    train_feats = dataset_features(model.classifier_features, train_set, train_enc.indices, batch_size, model.device,
                                   progress)
    probe = AttributeProbe.fit(train_feats, train_attrs)
    test_feats = dataset_features(model.classifier_features, test_set, test_enc.indices, batch_size, model.device,
                                  progress)
    accuracy = ((probe.probabilities(test_feats) > 0.5).float() == test_attrs).float().mean(dim=0)
    vis = visualisation_correctness(model, train_enc, test_enc, test_set, probe, alignment, lambdas,
                                    top_concepts, num_images, min_gain, batch_size, progress, seed, edit)
    alignment = {k: v for k, v in alignment.items() if k != "auc"}
    probe_acc = {name: float(v) for name, v in zip(names, accuracy)}
    defining_acc = [probe_acc[n] for n, d in zip(names, defining) if d]
    return {"purity": purity, "alignment": alignment,
            "probe": {"test_accuracy": probe_acc,
                      "mean_class_defining": float(np.mean(defining_acc)) if defining_acc else None,
                      "mean_all": float(accuracy.mean())},
            "visualisation": vis}

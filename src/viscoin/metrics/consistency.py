"""Consistency of the concept visualisations (paper section 4.1, appendices B.3 and C).

For concept k and amplification λ (defaults: the paper's protocol, n = 100, λ = 2):

1. its classes, from the training split's global relevance r_{k,c}, most relevant first: those with
   r_{k,c} > 0.5 (the top-1 class when none is); when their samples in a split number fewer than
   `n`, the next most relevant classes are added, in relevance order, until the pool holds `n`
   samples or the classes run out (``fill``; on CUB one class has about 30 test images, the
   paper's sets have 100 samples). ``fill=False``: the relevant classes only, however few samples;
2. in each split (training, test) separately, the `n` samples of those classes (true labels) with
   the largest pooled activation a_k(x); φ_max = the largest a_k over the *training* set's samples;
3. per sample two images, all else (other concepts, Φ') unchanged: φ_k set to the constant map
   λ·φ_max (label 1; the training φ_max in both sets) and φ_k = 0 (label 0);
4. features = f's ``layer2`` output average-pooled over space;
5. a 2n-image set from training samples and another from test samples; a linear SVM fitted on the
   first (C from a grid by k-fold cross-validation, scikit-learn), accuracy on the second. The
   paper names no feature scaling; a StandardScaler before the SVM is an option (``scaler``), off
   by default.

Reported: mean ± std (over concepts) of that accuracy, per λ, and the choices made (the result's
``protocol``; per concept φ_max and each split's classes and sample count). Φ, Φ' of both splits
come from one encoding pass (`viscoin.model.passes.encode_dataset`); only the edited images are
generated, and the φ_k = 0 images (independent of λ) once per concept and split.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from viscoin.model.contract import ConceptModel
from viscoin.model.passes import Encoded, decode_batched
from viscoin.model.relevance import global_relevance, select_concepts, top_activating
from viscoin.utils.iteration import progress_bar

DEFAULT_C_GRID = (1e-3, 1e-2, 1e-1, 1.0, 10.0, 100.0, 1000.0)
FEATURE_LAYER = "layer2"


def relevant_classes(global_rel: torch.Tensor, concept: int, threshold: float = 0.5) -> torch.Tensor:
    """Classes c with r_{k,c} > threshold for concept k (global relevance [C, K]); the top-1 class if none."""
    col = global_rel[:, concept]
    classes = torch.nonzero(col > threshold).flatten()
    return classes if classes.numel() else col.argmax().reshape(1)


def pool_classes(
    global_rel: torch.Tensor,          # r_{k,c} [C, K] (training split)
    labels: torch.Tensor,              # true labels of one split's samples [N]
    concept: int,
    samples: int,                      # n: how many samples the pool should reach
    threshold: float = 0.5,
    fill: bool = True,
) -> torch.Tensor:
    """The classes whose samples form concept k's pool in one split, most relevant first (ties: lower index).

    The classes with r_{k,c} > threshold (at least the most relevant one); with `fill`, while their
    samples in this split number fewer than `samples`, the next most relevant classes that have
    samples here, in relevance order, until the pool reaches `samples` or the classes run out.
    """
    col = global_rel[:, concept].detach().float().cpu()
    order = torch.argsort(col, descending=True, stable=True)
    chosen = order[:max(1, int((col > threshold).sum()))].tolist()
    if fill:
        counts = torch.bincount(labels.cpu().long(), minlength=len(col))
        total = int(counts[chosen].sum())
        for c in order[len(chosen):].tolist():
            if total >= samples:
                break
            if counts[c] > 0:
                chosen.append(c)
                total += int(counts[c])
    return torch.tensor(chosen, dtype=torch.int64)


@torch.no_grad()
def edited_features(
    model: ConceptModel, enc: Encoded, rows: torch.Tensor, concept: int, phi_max: float, lambdas: Sequence[float],
    batch_size: int,
) -> tuple[torch.Tensor, dict[float, torch.Tensor]]:
    """layer2 features of the φ_k = 0 images [n, D] and of the φ_k = λ·φ_max images, per λ (φ_max as given:
    the training pool's, for both splits)."""
    phi = enc.phi[rows]
    support = None if enc.support is None else enc.support[rows]
    variants = []
    for value in [0.0] + [lam * phi_max for lam in lambdas]:
        edited = phi.clone()
        edited[:, concept] = value                       # constant 3x3 map
        variants.append(edited)
    sup = None if support is None else support.repeat(len(variants), 1)
    feats = torch.cat([model.classifier_stage(img, FEATURE_LAYER).float().mean(dim=(2, 3)).cpu()
                       for _, img in decode_batched(model, torch.cat(variants), sup, batch_size)])
    feats = feats.view(len(variants), len(rows), -1)
    return feats[0], {lam: feats[1 + i] for i, lam in enumerate(lambdas)}


def svm_accuracy(
    x_train: np.ndarray, y_train: np.ndarray, x_test: np.ndarray, y_test: np.ndarray,
    c_grid: Sequence[float] = DEFAULT_C_GRID, folds: int = 5, seed: int = 0, scaler: bool = False,
) -> tuple[float, float]:
    """Test accuracy of a linear SVM whose C is chosen by stratified k-fold CV on the training set; and that C.

    The features go to the SVM as they are (the paper names no scaling); `scaler` standardises them
    first (fitted on the training folds only). `folds` is lowered to the size of the smaller class
    when that is smaller (at least 2).
    """
    from sklearn.exceptions import ConvergenceWarning
    from sklearn.model_selection import GridSearchCV, StratifiedKFold
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler
    from sklearn.svm import LinearSVC

    folds = max(2, min(folds, int(np.bincount(y_train).min())))
    steps = [StandardScaler()] if scaler else []
    pipe = make_pipeline(*steps, LinearSVC(dual="auto", max_iter=5000, random_state=seed))
    search = GridSearchCV(pipe, {"linearsvc__C": list(c_grid)},
                          cv=StratifiedKFold(folds, shuffle=True, random_state=seed), n_jobs=1)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        search.fit(x_train, y_train)
    return float(search.score(x_test, y_test)), float(search.best_params_["linearsvc__C"])


def most_relevant_concepts(global_rel: torch.Tensor, max_concepts: int = 0) -> list[int]:
    """All concepts (max_concepts <= 0), else the `max_concepts` with the largest max_c r_{k,c}, in index order."""
    k = global_rel.shape[1]
    if max_concepts <= 0 or max_concepts >= k:
        return list(range(k))
    return sorted(select_concepts(global_rel.amax(dim=0), k=max_concepts)["concepts"].tolist())


FILL_RULE = ("classes by decreasing r_{k,c}: those with r > threshold (at least the top-1), then the next most "
             "relevant until the split's pool holds `samples` samples (or the classes run out); the `samples` most "
             "activating of that pool")
STRICT_RULE = "classes with r_{k,c} > threshold (the top-1 if none); the `samples` most activating of their samples"


def consistency(
    model: ConceptModel,
    train: Encoded,                              # Φ, Φ', labels of training samples (no augmentation)
    test: Encoded,                               # the same for test samples
    lambdas: Sequence[float] = (2.0, 4.0),
    samples: int = 100,                          # n: samples per set (each gives 2 images)
    concepts: Sequence[int] | None = None,       # default: most_relevant_concepts(global relevance, max_concepts)
    max_concepts: int = 0,
    relevance_threshold: float = 0.5,
    c_grid: Sequence[float] = DEFAULT_C_GRID,
    folds: int = 5,
    seed: int = 0,
    batch_size: int = 64,
    progress: bool = False,
    fill: bool = True,                           # fill the pool up to n from the next most relevant classes
    scaler: bool = False,                        # StandardScaler before the SVM (not in the paper)
) -> dict[str, Any]:
    """Consistency per λ: ``{"lambdas": {str(λ): {"mean", "std", "count", "per_concept": {k: acc},
    "best_C": {k: C}}}, "concepts": [...], "classes": {k: [classes with r > threshold]}, "skipped": {k: reason},
    "samples": n, "protocol": {...}, "phi_max": {k: φ_max}, "pools": {k: {"train"|"test": {"classes", "samples"}}}}``;
    accuracies in [0, 1]. ``pools`` lists each split's pool classes (most relevant first) and how many
    samples were taken from them.

    Global relevance comes from `train` (true labels, r w.r.t. g's prediction). A concept with
    fewer than 2 samples in either set is skipped (and listed with the reason).
    """
    if samples < 1:
        raise ValueError(f"consistency: samples must be >= 1, got {samples}")
    global_rel = global_relevance(model.relevance(train.phi), train.labels, model.num_classes).cpu()
    chosen = list(concepts) if concepts is not None else most_relevant_concepts(global_rel, max_concepts)
    pooled = {"train": model.pool(train.phi).cpu(), "test": model.pool(test.phi).cpu()}
    per: dict[float, dict[int, float]] = {lam: {} for lam in lambdas}
    best_c: dict[float, dict[int, float]] = {lam: {} for lam in lambdas}
    classes_of: dict[int, list[int]] = {}
    pools: dict[str, dict[str, dict[str, Any]]] = {}
    phi_maxes: dict[str, float] = {}
    skipped: dict[int, str] = {}
    for k in progress_bar(chosen, "consistency", progress):
        classes_of[k] = relevant_classes(global_rel, k, relevance_threshold).tolist()
        rows: dict[str, torch.Tensor] = {}
        pools[str(k)] = {}
        for split, enc in (("train", train), ("test", test)):
            classes = pool_classes(global_rel, enc.labels, k, samples, relevance_threshold, fill)
            rows[split] = top_activating(pooled[split], enc.labels, k, samples, classes)
            pools[str(k)][split] = {"classes": classes.tolist(), "samples": len(rows[split])}
        rows_tr, rows_te = rows["train"], rows["test"]
        if min(len(rows_tr), len(rows_te)) < 2:
            skipped[k] = (f"fewer than 2 samples (train {len(rows_tr)} of classes {pools[str(k)]['train']['classes']}, "
                          f"test {len(rows_te)} of classes {pools[str(k)]['test']['classes']})")
            continue
        phi_max = float(pooled["train"][rows_tr, k].max())    # the training pool's, for both sets
        phi_maxes[str(k)] = phi_max
        off_tr, on_tr = edited_features(model, train, rows_tr, k, phi_max, lambdas, batch_size)
        off_te, on_te = edited_features(model, test, rows_te, k, phi_max, lambdas, batch_size)
        for lam in lambdas:
            x_tr, y_tr = _two_class(on_tr[lam], off_tr)
            x_te, y_te = _two_class(on_te[lam], off_te)
            per[lam][k], best_c[lam][k] = svm_accuracy(x_tr, y_tr, x_te, y_te, c_grid, folds, seed, scaler=scaler)
    protocol = {
        "samples": samples, "fill": fill, "pool_rule": FILL_RULE if fill else STRICT_RULE,
        "relevance_threshold": relevance_threshold,
        "phi_max": "largest pooled activation of φ_k over the training set's selected samples (both sets' λ·φ_max)",
        "features": f"f's {FEATURE_LAYER}, average-pooled over space", "scaler": scaler,
        "svm": "LinearSVC", "c_grid": [float(c) for c in c_grid], "folds": folds,
    }
    out: dict[str, Any] = {"concepts": chosen, "classes": {str(k): v for k, v in classes_of.items()},
                           "skipped": {str(k): v for k, v in skipped.items()}, "samples": samples,
                           "protocol": protocol, "phi_max": phi_maxes, "pools": pools, "lambdas": {}}
    for lam in lambdas:
        accs = np.array(list(per[lam].values()), dtype=np.float64)
        out["lambdas"][str(lam)] = {
            "mean": float(accs.mean()) if accs.size else None,
            "std": float(accs.std()) if accs.size else None,
            "count": int(accs.size),
            "per_concept": {str(k): v for k, v in per[lam].items()},
            "best_C": {str(k): v for k, v in best_c[lam].items()},
        }
    return out


def _two_class(on: torch.Tensor, off: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
    x = torch.cat([on, off]).double().numpy()
    y = np.concatenate([np.ones(len(on), dtype=np.int64), np.zeros(len(off), dtype=np.int64)])
    return x, y

"""Interpreting a trained VisCoIN: relevant concepts, their most activating samples, λ sweeps.

Everything follows the method page, "Interpretation (section 3.5)":

- pooled activation ``a_j(x) = maxpool(φ_j(x))``, predicted class ``ĉ = argmax g(x)``;
- local relevance ``r_{j,x} = a_j(x) W_{j,ĉ} / max_l |a_l(x) W_{l,ĉ}|`` and global relevance
  ``r_{j,c}`` (mean of ``r_{j,x}`` over the samples of class c) come from
  `viscoin.metrics.relevance` (imported, never re-implemented here);
- concepts to show are those with relevance above a threshold (0.5 in the paper's figures) or the
  top-k, each with its most activating training samples (per class or overall);
- concept j is visualised on x by multiplying ``φ_j(x)`` by λ, keeping every other activation,
  ``Φ'(x)`` and G's noise fixed: ``G(w̄ + Ω(Φ_λ(x), Φ'(x)))``. λ = 1 is the reconstruction, λ = 0
  removes the concept; difference images between two λ (and the reverse difference, and the
  per-pixel difference energy) show where the concept acts (paper appendix E).

The API is Captum-like: ``ConceptExplainer(model)`` holds the model, each call takes its data.
Results are plain tensors (on the CPU) or dicts of them; plotting lives in `viscoin.interpret.plot`.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, NamedTuple

import torch
from torch.utils.data import DataLoader, Dataset

from viscoin.model.viscoin import VisCoIN

DEFAULT_LAMBDAS: tuple[float, ...] = (0.0, 1.0, 2.0, 4.0)


class ConceptActivations(NamedTuple):
    """Pooled concept activations of a whole dataset, computed in one batched pass."""

    activations: torch.Tensor   # a_j(x) for every sample [N, K] (float32, CPU)
    labels: torch.Tensor        # true labels [N] (int64)
    indices: torch.Tensor       # dataset index of each row [N] (int64)
    relevance: torch.Tensor     # local relevance r_{j,x} [N, K]
    predicted: torch.Tensor     # predicted class ĉ [N] (int64)


# ---------------------------------------------------------------------------------------------
# Pure functions on tensors (no model): selection, ranking, differences


def select_concepts(
    relevance: torch.Tensor,          # relevance of each concept [K]
    k: int | None = None,             # keep at most the k most relevant
    threshold: float | None = None,   # keep those with relevance > threshold
) -> dict[str, torch.Tensor]:
    """Concepts sorted by decreasing relevance, filtered by `threshold` and/or cut to `k`.

    With neither, every concept is returned (sorted). Returns ``{"concepts": int64 [M],
    "relevance": [M]}``.
    """
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
    acts: ConceptActivations,         # pooled activations of a dataset
    concept: int,                     # concept j
    k: int,                           # how many samples
    per_class: int | Sequence[int] | None = None,  # restrict to samples of this class (or these classes)
) -> dict[str, torch.Tensor]:
    """The `k` samples on which concept j's pooled activation ``a_j`` is largest.

    Returns ``{"indices": dataset indices int64 [k'], "activations": [k'], "labels": [k']}``,
    by decreasing activation (ties: lower index first); k' = min(k, number of candidates).
    """
    n, num_concepts = acts.activations.shape
    if not 0 <= concept < num_concepts:
        raise ValueError(f"concept: expected in [0, {num_concepts}), got {concept}")
    if k < 1:
        raise ValueError(f"k: expected >= 1, got {k}")
    rows = torch.arange(n)
    if per_class is not None:
        classes = torch.as_tensor([per_class] if isinstance(per_class, int) else list(per_class), dtype=torch.int64)
        rows = rows[torch.isin(acts.labels, classes)]
    values = acts.activations[rows, concept]
    order = torch.argsort(values, descending=True, stable=True)[:k]
    rows = rows[order]
    return {"indices": acts.indices[rows], "activations": acts.activations[rows, concept], "labels": acts.labels[rows]}


def difference(img_a: torch.Tensor, img_b: torch.Tensor) -> torch.Tensor:
    """Signed difference image ``img_a − img_b`` (same shape; e.g. x_{λ=4} − x_{λ=0}: what the concept adds)."""
    if img_a.shape != img_b.shape:
        raise ValueError(f"images differ in shape: {list(img_a.shape)} vs {list(img_b.shape)}")
    return img_a.detach().float() - img_b.detach().float()


def reverse_difference(img_a: torch.Tensor, img_b: torch.Tensor) -> torch.Tensor:
    """The reverse difference ``img_b − img_a`` (what the concept removes, appendix E)."""
    return difference(img_b, img_a)


def difference_energy(img_a: torch.Tensor, img_b: torch.Tensor) -> torch.Tensor:
    """Per-pixel energy of the difference: ``Σ_c (img_a − img_b)²`` over the channel axis.

    Images [3, H, W] give [H, W]; batches [..., 3, H, W] give [..., H, W].
    """
    return difference(img_a, img_b).pow(2).sum(dim=-3)


# ---------------------------------------------------------------------------------------------
# The explainer


def _relevance_module() -> Any:
    # The metrics package owns the relevance functions (method page, section 3.5).
    from viscoin.metrics import relevance

    return relevance


class ConceptExplainer:
    """Explain a VisCoIN model's predictions through its concepts (Captum-style: data per call).

    The model is put in eval mode; every call runs without gradients and returns CPU tensors.
    """

    def __init__(self, model: VisCoIN, batch_size: int = 32, num_workers: int = 0) -> None:
        self.model = model.eval()
        self.batch_size = batch_size
        self.num_workers = num_workers
        self._cache: dict[int, tuple[Dataset, ConceptActivations]] = {}

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    def _images(self, x: torch.Tensor) -> tuple[torch.Tensor, bool]:
        """[3, R, R] or [N, 3, R, R] -> [N, 3, R, R] on the model's device, and whether it was a single image."""
        single = x.ndim == 3
        x = x.unsqueeze(0) if single else x
        return x.to(self.device, torch.float32), single

    # -- relevance --------------------------------------------------------------------------------
    @torch.no_grad()
    def pooled(self, x: torch.Tensor) -> torch.Tensor:
        """Pooled concept activations ``a_j(x)`` [N, K]."""
        x, _ = self._images(x)
        return self.model.theta.pool(self.model.concepts(x)[0]).cpu()

    @torch.no_grad()
    def local_relevance(self, x: torch.Tensor) -> torch.Tensor:
        """Local relevance ``r_{j,x}`` [N, K] of each concept for the predicted class (in [−1, 1])."""
        x, _ = self._images(x)
        return _relevance_module().local_relevance(self.model, x=x).detach().cpu()

    def global_relevance(self, dataset: Dataset | ConceptActivations) -> torch.Tensor:
        """Global relevance ``r_{j,c}`` [C, K] over `dataset`: mean local relevance per true class.

        Reuses the (cached) pass of `activations`, so the most activating samples come for free;
        the averaging is `viscoin.metrics.relevance.global_relevance_from`.
        """
        acts = dataset if isinstance(dataset, ConceptActivations) else self.activations(dataset)
        return _relevance_module().global_relevance_from(acts.relevance, acts.labels, self.model.num_classes)

    @torch.no_grad()
    def top_concepts(
        self,
        x: torch.Tensor,                  # an image [3, R, R] or a batch [N, 3, R, R] in [-1, 1]
        k: int | None = None,             # at most k concepts per image
        threshold: float | None = None,   # only concepts with r_{j,x} > threshold (paper: 0.5)
    ) -> list[dict[str, Any]]:
        """The most relevant concepts of each image for its predicted class.

        One dict per image: ``class`` (ĉ), ``probability`` (g(x)_ĉ), ``probabilities`` [C],
        ``concepts`` int64 [M], ``relevance`` [M], ``activations`` (a_j of those concepts) [M].
        """
        x, _ = self._images(x)
        phi, _ = self.model.concepts(x)
        probs = self.model.theta.linear(self.model.theta.pool(phi)).softmax(dim=1).cpu()
        rel = _relevance_module().local_relevance(self.model, phi=phi).detach().cpu()
        a = self.model.theta.pool(phi).cpu()
        out = []
        for i in range(x.shape[0]):
            c = int(probs[i].argmax())
            sel = select_concepts(rel[i], k, threshold)
            out.append({"class": c, "probability": float(probs[i, c]), "probabilities": probs[i],
                        "concepts": sel["concepts"], "relevance": sel["relevance"],
                        "activations": a[i, sel["concepts"]]})
        return out

    @staticmethod
    def class_top_concepts(
        global_rel: torch.Tensor,         # global relevance [C, K]
        c: int,                           # class
        k: int | None = None,
        threshold: float | None = None,
    ) -> dict[str, torch.Tensor]:
        """The most relevant concepts of class c by global relevance ``r_{j,c}`` (see `select_concepts`)."""
        if global_rel.ndim != 2 or not 0 <= c < global_rel.shape[0]:
            raise ValueError(f"class {c} out of range for global relevance of shape {list(global_rel.shape)}")
        return select_concepts(global_rel[c], k, threshold)

    @staticmethod
    def top_pairs(global_rel: torch.Tensor, m: int) -> list[tuple[int, int, float]]:
        """The m most relevant (class, concept, r_{j,c}) pairs, by decreasing global relevance."""
        flat = global_rel.detach().float().cpu().flatten()
        order = torch.argsort(flat, descending=True, stable=True)[:m]
        k = global_rel.shape[1]
        return [(int(i) // k, int(i) % k, float(flat[i])) for i in order]

    # -- most activating samples ------------------------------------------------------------------
    @torch.no_grad()
    def activations(self, dataset: Dataset, cache: bool = True) -> ConceptActivations:
        """Pooled activations, local relevance and predictions for every sample, in one batched pass.

        Items are dicts with ``image`` and ``label`` (viscoin datasets; use ``augment=False``).
        Cached per dataset object when `cache`.
        """
        key = id(dataset)
        if cache and key in self._cache and self._cache[key][0] is dataset:
            return self._cache[key][1]
        rel_fn = _relevance_module().local_relevance
        acts, labels, indices, rels, preds = [], [], [], [], []
        loader = DataLoader(dataset, batch_size=self.batch_size, shuffle=False, num_workers=self.num_workers)
        start = 0
        for batch in loader:
            x = batch["image"].to(self.device, torch.float32)
            phi, _ = self.model.concepts(x)
            a = self.model.theta.pool(phi)
            acts.append(a.cpu())
            preds.append(self.model.theta.linear(a).argmax(dim=1).cpu())
            rels.append(rel_fn(self.model, phi=phi).detach().cpu())
            labels.append(torch.as_tensor(batch["label"], dtype=torch.int64))
            idx = batch.get("index")
            indices.append(torch.as_tensor(idx, dtype=torch.int64) if idx is not None
                           else torch.arange(start, start + x.shape[0]))
            start += x.shape[0]
        if not acts:
            raise ValueError("the dataset is empty")
        result = ConceptActivations(torch.cat(acts), torch.cat(labels), torch.cat(indices), torch.cat(rels),
                                    torch.cat(preds))
        if cache:
            self._cache[key] = (dataset, result)
        return result

    def most_activating(
        self,
        dataset: Dataset | ConceptActivations,       # a dataset, or its precomputed activations
        concept: int,                                # concept j
        k: int = 8,                                  # how many samples
        per_class: int | Sequence[int] | None = None,  # only samples of this class (or classes)
    ) -> dict[str, torch.Tensor]:
        """The k training samples that activate concept j most, overall or within a class.

        Returns ``{"indices", "activations", "labels"}`` (see `top_activating`).
        """
        acts = dataset if isinstance(dataset, ConceptActivations) else self.activations(dataset)
        return top_activating(acts, concept, k, per_class)

    # -- λ sweeps ---------------------------------------------------------------------------------
    @torch.no_grad()
    def lambda_sweep(
        self,
        x: torch.Tensor,                             # an image [3, R, R] or a batch [N, 3, R, R]
        concept: int,                                # concept j
        lambdas: Sequence[float] = DEFAULT_LAMBDAS,  # multipliers of φ_j(x)
    ) -> torch.Tensor:
        """``G(w̄ + Ω(Φ_λ(x), Φ'(x)))`` for each λ, with φ_j scaled by λ and all else fixed.

        Φ'(x), the other concepts and G's noise (constant) are held fixed, so the images differ
        only by concept j. Returns [L, 3, R, R] for one image, [N, L, 3, R, R] for a batch, in [-1, 1].
        """
        x, single = self._images(x)
        k = self.model.config.num_concepts
        if not 0 <= concept < k:
            raise ValueError(f"concept: expected in [0, {k}), got {concept}")
        if len(lambdas) == 0:
            raise ValueError("lambdas: expected at least one value")
        phi, support = self.model.concepts(x)
        n, num = x.shape[0], len(lambdas)
        lam = torch.as_tensor([float(v) for v in lambdas], dtype=phi.dtype, device=phi.device)
        # [N, L, K, 3, 3]: concept j scaled by each λ, everything else repeated.
        scaled = phi.unsqueeze(1).repeat(1, num, 1, 1, 1)
        scaled[:, :, concept] *= lam.view(1, num, 1, 1)
        sup = None if support is None else support.unsqueeze(1).expand(n, num, -1).reshape(n * num, -1)
        images = []
        flat = scaled.reshape(n * num, *phi.shape[1:])
        for s in range(0, n * num, self.batch_size):
            images.append(self.model.generate(flat[s:s + self.batch_size],
                                              None if sup is None else sup[s:s + self.batch_size]).cpu())
        out = torch.cat(images).view(n, num, *images[0].shape[1:])
        return out[0] if single else out

    @torch.no_grad()
    def reconstruct(self, x: torch.Tensor) -> torch.Tensor:
        """x̃ = G(w̄ + Ω(Φ(x), Φ'(x))) (eq. 1), same batching as `lambda_sweep`."""
        x, single = self._images(x)
        out = torch.cat([self.model.reconstruct(x[s:s + self.batch_size]).cpu()
                         for s in range(0, x.shape[0], self.batch_size)])
        return out[0] if single else out

    # -- differences (appendix E) -----------------------------------------------------------------
    difference = staticmethod(difference)
    reverse_difference = staticmethod(reverse_difference)
    difference_energy = staticmethod(difference_energy)

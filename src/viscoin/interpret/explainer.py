"""Interpreting a trained concept model: relevant concepts, their most activating samples, λ sweeps.

Everything follows the paper's section 3.5 (and figure 4, appendix E):

- pooled activation ``a_j(x) = maxpool(φ_j(x))``, predicted class ``ĉ = argmax g(x)``;
- local relevance ``r_{j,x} = a_j(x) W_{j,ĉ} / max_l |a_l(x) W_{l,ĉ}|`` and global relevance
  ``r_{j,c}`` (mean of ``r_{j,x}`` over the samples of class c) come from the model's contract
  (`ConceptModel.relevance`, `viscoin.model.relevance`), never re-implemented here;
- concepts to show are those with relevance above a threshold (0.5 in the paper's figures) or the
  top-k, each with its most activating training samples (per class or overall); the class-concept
  pairs of a class are its concepts with global relevance above 0.5 (`class_concept_pairs`);
- concept j is visualised on x by multiplying ``φ_j(x)`` by λ, keeping every other activation,
  ``Φ'(x)`` and G's noise fixed: ``G(w̄ + Ω(Φ_λ(x), Φ'(x)))`` for VisCoIN, the decoder's image for
  a baseline. λ = 1 is the reconstruction, λ = 0 removes the concept; difference images between
  two λ (and the reverse difference, and the per-pixel difference energy) show where the concept
  acts (appendix E).

The API is Captum-like: ``ConceptExplainer(model)`` holds the model, each call takes its data.
Results are plain tensors (on the CPU) or dicts of them; plotting lives in `viscoin.interpret.plot`.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch.utils.data import Dataset

from viscoin.model.contract import ConceptModel
from viscoin.model.passes import Encoded, encode_dataset
from viscoin.model.relevance import global_relevance, select_concepts, top_activating

DEFAULT_LAMBDAS: tuple[float, ...] = (0.0, 1.0, 2.0, 4.0)
PAIR_THRESHOLD = 0.5      # the paper's rule: (class c, concept j) is a relevant pair when r_{j,c} > 0.5


# ---------------------------------------------------------------------------------------------
# Pure functions on images: differences (appendix E)


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


class ConceptExplainer:
    """Explain a concept model's predictions through its concepts (Captum-style: data per call).

    The model is put in eval mode; every call runs without gradients and returns CPU tensors.
    """

    def __init__(self, model: ConceptModel, batch_size: int = 32) -> None:
        self.model = model.eval()
        self.batch_size = batch_size
        self._cache: dict[int, tuple[Dataset, Encoded]] = {}

    @property
    def device(self) -> torch.device:
        return self.model.device

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
        return self.model.pool(self.model.encode(x).phi).cpu()

    @torch.no_grad()
    def local_relevance(self, x: torch.Tensor) -> torch.Tensor:
        """Local relevance ``r_{j,x}`` [N, K] of each concept for the predicted class (in [−1, 1])."""
        x, _ = self._images(x)
        return self.model.relevance(self.model.encode(x).phi).cpu()

    def global_relevance(self, dataset: Dataset | Encoded) -> torch.Tensor:
        """Global relevance ``r_{j,c}`` [C, K] over `dataset`: mean local relevance per true class.

        Reuses the (cached) pass of `activations`, so the most activating samples come for free.
        """
        enc = dataset if isinstance(dataset, Encoded) else self.activations(dataset)
        return global_relevance(self.model.relevance(enc.phi), enc.labels, self.model.num_classes)

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
        phi = self.model.encode(x).phi
        probs = self.model.predict_from(phi).softmax(dim=1).cpu()
        rel = self.model.relevance(phi).cpu()
        a = self.model.pool(phi).cpu()
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
    def class_concept_pairs(
        global_rel: torch.Tensor,                # global relevance [C, K]
        threshold: float = PAIR_THRESHOLD,       # a pair when r_{j,c} > threshold (the paper: 0.5)
        per_class: int | None = None,            # at most this many concepts kept per class (None: all)
    ) -> list[dict[str, Any]]:
        """The paper's class-concept pairs, class by class: for each class c, the concepts with global relevance
        ``r_{j,c} > threshold`` by decreasing relevance (ties: lower index first), at most `per_class`.

        One dict per class, in class order: ``class``, ``concepts`` int64 [M], ``relevance`` [M], ``passing``
        (how many concepts pass the threshold, before the cut to `per_class`) and ``best`` ((concept, r) of the
        class's most relevant concept, passing or not)."""
        if global_rel.ndim != 2:
            raise ValueError(f"global relevance: expected [C, K], got {list(global_rel.shape)}")
        if per_class is not None and per_class < 1:
            raise ValueError(f"per_class: expected >= 1, got {per_class}")
        out = []
        for c in range(global_rel.shape[0]):
            sel = select_concepts(global_rel[c], threshold=threshold)
            top = select_concepts(global_rel[c], k=1)
            out.append({"class": c, "concepts": sel["concepts"][:per_class], "relevance": sel["relevance"][:per_class],
                        "passing": len(sel["concepts"]),
                        "best": (int(top["concepts"][0]), float(top["relevance"][0]))})
        return out

    @staticmethod
    def top_pairs(global_rel: torch.Tensor, m: int) -> list[tuple[int, int, float]]:
        """The m most relevant (class, concept, r_{j,c}) pairs, by decreasing global relevance."""
        flat = global_rel.detach().float().cpu().flatten()
        order = torch.argsort(flat, descending=True, stable=True)[:m]
        k = global_rel.shape[1]
        return [(int(i) // k, int(i) % k, float(flat[i])) for i in order]

    # -- most activating samples ------------------------------------------------------------------
    def activations(self, dataset: Dataset, cache: bool = True) -> Encoded:
        """One batched pass over a dataset (`viscoin.model.passes.encode_dataset`): Φ, Φ', g's logits, labels.

        Items are dicts with ``image`` and ``label`` (viscoin datasets; use ``augment=False``).
        Cached per dataset object when `cache`.
        """
        key = id(dataset)
        if cache and key in self._cache and self._cache[key][0] is dataset:
            return self._cache[key][1]
        if len(dataset) == 0:
            raise ValueError("the dataset is empty")
        result = encode_dataset(self.model, dataset, batch_size=self.batch_size)
        if cache:
            self._cache[key] = (dataset, result)
        return result

    def most_activating(
        self,
        dataset: Dataset | Encoded,                  # a dataset, or its encoding (`activations`)
        concept: int,                                # concept j
        k: int = 8,                                  # how many samples
        per_class: int | Sequence[int] | None = None,  # only samples of this class (or classes)
    ) -> dict[str, torch.Tensor]:
        """The k samples that activate concept j most, overall or within a class, by decreasing a_j
        (ties: lower index first). Returns ``{"indices": dataset indices, "activations", "labels"}``."""
        enc = dataset if isinstance(dataset, Encoded) else self.activations(dataset)
        pooled = self.model.pool(enc.phi)
        rows = top_activating(pooled, enc.labels, concept, k, per_class)
        return {"indices": enc.indices[rows], "activations": pooled[rows, concept], "labels": enc.labels[rows]}

    # -- λ sweeps ---------------------------------------------------------------------------------
    @torch.no_grad()
    def lambda_sweep(
        self,
        x: torch.Tensor,                             # an image [3, R, R] or a batch [N, 3, R, R]
        concept: int,                                # concept j
        lambdas: Sequence[float] = DEFAULT_LAMBDAS,  # multipliers of φ_j(x)
    ) -> torch.Tensor:
        """The decoded image for each λ, with φ_j scaled by λ and all else fixed (VisCoIN: ``G(w̄ + Ω(Φ_λ(x), Φ'(x)))``).

        Φ'(x), the other concepts and G's noise (constant) are held fixed, so the images differ
        only by concept j. Returns [L, 3, R, R] for one image, [N, L, 3, R, R] for a batch, in [-1, 1].
        """
        x, single = self._images(x)
        k = self.model.num_concepts
        if not 0 <= concept < k:
            raise ValueError(f"concept: expected in [0, {k}), got {concept}")
        if len(lambdas) == 0:
            raise ValueError("lambdas: expected at least one value")
        enc = self.model.encode(x)
        phi, support = enc.phi, enc.support
        n, num = x.shape[0], len(lambdas)
        lam = torch.as_tensor([float(v) for v in lambdas], dtype=phi.dtype, device=phi.device)
        # [N, L, K, 3, 3]: concept j scaled by each λ, everything else repeated.
        scaled = phi.unsqueeze(1).repeat(1, num, 1, 1, 1)
        scaled[:, :, concept] *= lam.view(1, num, 1, 1)
        sup = None if support is None else support.unsqueeze(1).expand(n, num, -1).reshape(n * num, -1)
        images = []
        flat = scaled.reshape(n * num, *phi.shape[1:])
        for s in range(0, n * num, self.batch_size):
            images.append(self.model.decode(flat[s:s + self.batch_size],
                                              None if sup is None else sup[s:s + self.batch_size]).cpu())
        out = torch.cat(images).view(n, num, *images[0].shape[1:])
        return out[0] if single else out

    @torch.no_grad()
    def reconstruct(self, x: torch.Tensor) -> torch.Tensor:
        """The reconstruction (VisCoIN: x̃ = G(w̄ + Ω(Φ(x), Φ'(x))), eq. 1), same batching as `lambda_sweep`."""
        x, single = self._images(x)
        out = torch.cat([self.model.reconstruct(x[s:s + self.batch_size]).cpu()
                         for s in range(0, x.shape[0], self.batch_size)])
        return out[0] if single else out

    # -- differences (appendix E) -----------------------------------------------------------------
    difference = staticmethod(difference)
    reverse_difference = staticmethod(reverse_difference)
    difference_energy = staticmethod(difference_energy)

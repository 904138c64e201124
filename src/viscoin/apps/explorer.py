"""The model side of `viscoin explore`: pick an image, move its concepts, read a concept's page.

VisCoIN's promise is an intuitive, interactive understanding of concepts (paper section 3.5 and
figure 4): scale the activation ``φ_j(x)`` of concept j by λ, keep
every other activation, ``Φ'(x)`` and G's noise fixed, and watch ``G(w̄ + Ω(Φ_λ(x), Φ'(x)))``
change. `ConceptExplorer` serves exactly that to an app, fast enough for a slider:

- `select` runs f, Ψ, Θ, Ω and G once for an image and caches the result (`Selection`: Φ, Φ', the
  reconstruction, g's and f's predictions, every concept ranked by local relevance);
- `edit` then only runs Ω and G's synthesis for that one image, for any number of concepts at
  once (`Edit`: the image and its difference to the reconstruction);
- `concept_page` shows one concept across the training split: the classes it is most relevant
  for (global relevance), its most activating samples, and its λ sweep on several images.

Relevance, most activating samples, λ sweeps and difference images come from
`viscoin.interpret.ConceptExplainer` and the figures from `viscoin.interpret.plot`; nothing here
re-implements them. Uploads are checked before they are decoded (`UploadError`: too large, not an
image). Results are CPU tensors and uint8 arrays; no web framework is imported here.
"""

from __future__ import annotations

import math
import os
import threading
import warnings
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset

from viscoin.interpret.explain import load_input_image
from viscoin.interpret.explainer import DEFAULT_LAMBDAS, ConceptExplainer, difference
from viscoin.interpret.plot import (
    Row,
    cell_size_for,
    concept_effect_cells,
    effect_column_labels,
    labelled_grid,
    samples_figure,
)
from viscoin.model.contract import ConceptModel
from viscoin.model.loading import load_trained
from viscoin.model.passes import Encoded

DEFAULT_MAX_UPLOAD_MB = 10.0          # `--max-upload-mb`
MAX_UPLOAD_PIXELS = 40_000_000        # width x height of an upload, checked before decoding it
LAMBDA_MAX = 4.0                      # the sliders' range is [0, LAMBDA_MAX]


class UploadError(ValueError):
    """An upload the explorer refuses (too large, not an image); the message is meant for the page."""


@dataclass(frozen=True, eq=False)
class Selection:
    """One image being explored, encoded once so that a slider move only runs Ω and G."""

    source: str                       # what the image is, for the page ("test image 17", a file name)
    image: torch.Tensor               # x [3, R, R] in [-1, 1] (CPU)
    phi: torch.Tensor                 # Φ(x) [1, K, 3, 3] (model's device)
    support: torch.Tensor | None      # Φ'(x) [1, 9K] (None without the support branch)
    reconstruction: torch.Tensor      # x̃ = G(w̄ + Ω(Φ(x), Φ'(x))) [3, R, R] (CPU): every λ = 1
    g_probabilities: torch.Tensor     # g(x) [C]
    f_probabilities: torch.Tensor     # softmax of f(x) [C]
    concepts: torch.Tensor            # every concept, by decreasing local relevance r_{j,x} [K] (int64)
    relevance: torch.Tensor           # their r_{j,x} for g's predicted class [K]
    activations: torch.Tensor         # their pooled activations a_j(x) [K]
    label: int | None = None          # true class, when known (test images)

    @property
    def g_class(self) -> int:
        return int(self.g_probabilities.argmax())

    @property
    def f_class(self) -> int:
        return int(self.f_probabilities.argmax())

    def relevance_of(self, concept: int) -> float:
        """r_{j,x} of concept j."""
        return float(self.relevance[self.concepts == concept][0])


@dataclass(frozen=True, eq=False)
class Edit:
    """The selected image regenerated with some concepts scaled."""

    image: torch.Tensor               # G(w̄ + Ω(Φ_λ(x), Φ'(x))) [3, R, R] in [-1, 1]
    difference: torch.Tensor          # image − reconstruction [3, R, R]: what the change adds (negative: removes)
    factors: dict[int, float]         # the multiplier of each concept that is not at λ = 1


@dataclass(frozen=True, eq=False)
class ConceptPage:
    """One concept over the training split."""

    concept: int
    classes: list[tuple[int, float]]           # (class c, r_{j,c}) by decreasing global relevance
    samples: list[tuple[int, int, float]]      # most activating samples: (dataset index, label, a_j)
    samples_figure: np.ndarray                 # them, captioned (uint8 [H, W, 3])
    sweep_figure: np.ndarray                   # λ sweeps and differences on several images (uint8 [H, W, 3])
    lambdas: tuple[float, ...]


def concept_factors(changes: Iterable[tuple[int, float]], num_concepts: int) -> torch.Tensor:
    """Multipliers [K] of the concept maps for (concept j, λ) pairs; 1 for every other concept.

    A concept named twice gets the product of its λ (each slider scales φ_j once). λ must be a
    finite number >= 0 (0 removes the concept, 1 keeps it).
    """
    factors = torch.ones(num_concepts)
    for j, lam in changes:
        j, lam = int(j), float(lam)
        if not 0 <= j < num_concepts:
            raise ValueError(f"concept: expected in [0, {num_concepts}), got {j}")
        if not math.isfinite(lam) or lam < 0:
            raise ValueError(f"λ of concept {j}: expected a finite number >= 0, got {lam}")
        factors[j] *= lam
    return factors


def spread_indices(n: int, count: int) -> list[int]:
    """`count` indices spread evenly over range(n) (all of them when n <= count), first and last included."""
    if n <= 0 or count <= 0:
        return []
    if n <= count:
        return list(range(n))
    if count == 1:
        return [0]
    return sorted({round(i * (n - 1) / (count - 1)) for i in range(count)})


def check_upload(path: str | os.PathLike, max_bytes: int, name: str | None = None) -> tuple[int, int]:
    """Refuse a file that is larger than `max_bytes`, is not an image, or has too many pixels.

    Only the image's header is read here. Returns (width, height); `UploadError` naming the file
    (by `name`, the name the user gave it) otherwise. An image too large in bytes or in pixels is
    called too large, whatever PIL thinks of it (its decompression-bomb guard refuses huge headers
    before giving their size).
    """
    from PIL import Image, UnidentifiedImageError

    path = Path(path)
    name = name or path.name
    if not path.is_file():
        raise UploadError(f"upload rejected: {name} is not a file")
    size = path.stat().st_size
    if size > max_bytes:
        raise UploadError(f"upload rejected: {name} is too large: {size / 2**20:.1f} MB, over the limit of "
                          f"{max_bytes / 2**20:.3g} MB (--max-upload-mb)")
    if size == 0:
        raise UploadError(f"upload rejected: {name} is empty")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)   # the limit below is ours
            with Image.open(path) as img:
                width, height = img.size
    except Image.DecompressionBombError as exc:   # over PIL's own limit: far over ours
        raise UploadError(f"upload rejected: {name} is too large: more than {MAX_UPLOAD_PIXELS // 1_000_000} "
                          "megapixels") from exc
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError) as exc:
        raise UploadError(f"upload rejected: {name} is not an image (give a PNG, JPEG, WebP, ... file)") from exc
    if width * height > MAX_UPLOAD_PIXELS:
        raise UploadError(f"upload rejected: {name} is too large: {width}x{height} pixels, more than "
                          f"{MAX_UPLOAD_PIXELS // 1_000_000} megapixels")
    return width, height


class ConceptExplorer:
    """Interactive concept editing on a concept model (see the module docstring).

    `test_set` feeds the gallery, `train_set` the concept pages (global relevance and most
    activating samples, as in the paper); either may be None. Thread-safe: an app may call it
    from several requests at once.
    """

    def __init__(
        self,
        model: ConceptModel,
        class_names: Sequence[str],
        test_set: Dataset | None = None,        # items: dicts with "image" and "label" (augment=False)
        train_set: Dataset | None = None,
        gallery_size: int = 48,                 # test images offered in the gallery
        max_upload_mb: float = DEFAULT_MAX_UPLOAD_MB,
        batch_size: int = 32,
    ) -> None:
        if len(class_names) != model.num_classes:
            raise ValueError(f"class_names: expected {model.num_classes} names, got {len(class_names)}")
        if gallery_size < 0:
            raise ValueError(f"gallery_size: expected >= 0, got {gallery_size}")
        if not max_upload_mb > 0:
            raise ValueError(f"--max-upload-mb: expected > 0, got {max_upload_mb}")
        self.model = model.eval()
        self.class_names = [str(n) for n in class_names]
        self.test_set = test_set
        self.train_set = train_set
        self.max_upload_bytes = int(max_upload_mb * 2**20)
        self.explainer = ConceptExplainer(model, batch_size=batch_size)
        self.gallery_indices = spread_indices(len(test_set), gallery_size) if test_set is not None else []
        self._lock = threading.Lock()
        self._acts: Encoded | None = None
        self._global: torch.Tensor | None = None

    @property
    def num_concepts(self) -> int:
        return self.model.num_concepts

    @property
    def resolution(self) -> int:
        return self.model.resolution

    @property
    def device(self) -> torch.device:
        return self.explainer.device

    # -- choosing an image ----------------------------------------------------------------------
    def gallery(self) -> list[tuple[torch.Tensor, str]]:
        """The gallery's test images [3, R, R] with captions (their true class), in `gallery_indices` order."""
        out = []
        for i in self.gallery_indices:
            item = self.test_set[i]
            out.append((item["image"], self.class_names[int(item["label"])]))
        return out

    def select_test(self, index: int) -> Selection:
        """Select test image `index` (a dataset index, e.g. from `gallery_indices`)."""
        if self.test_set is None:
            raise ValueError("no test split is loaded")
        if not 0 <= index < len(self.test_set):
            raise ValueError(f"test image: expected an index in [0, {len(self.test_set)}), got {index}")
        item = self.test_set[index]
        return self.select(item["image"], f"test image {index}", label=int(item["label"]))

    def select_upload(self, path: str | os.PathLike, name: str | None = None) -> Selection:
        """Select an uploaded file; `UploadError` (shown in the page) for a file that is too large or
        not an image. It is resized and center-cropped as the test split is (`viscoin explain` does the same)."""
        name = name or Path(path).name
        check_upload(path, self.max_upload_bytes, name)
        try:
            x = load_input_image(path, self.resolution)
        except ValueError as exc:  # a header that decodes, a body that does not (truncated, corrupt)
            raise UploadError(f"upload rejected: {name} could not be decoded as an image") from exc
        return self.select(x, name)

    @torch.no_grad()
    def select(self, x: torch.Tensor, source: str, label: int | None = None) -> Selection:
        """Encode one image [3, R, R] in [-1, 1]: everything the page shows and a slider needs."""
        r = self.resolution
        if x.shape != (3, r, r):
            raise ValueError(f"image: expected [3, {r}, {r}] in [-1, 1], got {list(x.shape)}")
        x = x.detach().float().cpu()
        batch = x.unsqueeze(0).to(self.device)
        enc = self.model.encode(batch)
        top = self.explainer.top_concepts(batch)[0]                     # every concept, by r_{j,x}
        return Selection(
            source=source, image=x, phi=enc.phi, support=enc.support,
            reconstruction=self.model.decode(enc.phi, enc.support)[0].cpu(),
            g_probabilities=top["probabilities"], f_probabilities=enc.logits_f.float().softmax(dim=1)[0].cpu(),
            concepts=top["concepts"], relevance=top["relevance"], activations=top["activations"], label=label,
        )

    # -- moving concepts --------------------------------------------------------------------------
    def edit(self, selection: Selection, changes: Mapping[int, float] | Iterable[tuple[int, float]]) -> Edit:
        """Regenerate the selected image with φ_j multiplied by λ for each (j, λ) in `changes`.

        Φ', the other concepts and G's noise stay fixed, so only Ω and G's synthesis run, for one
        image. With every λ = 1 this is the reconstruction.
        """
        pairs = list(changes.items()) if isinstance(changes, Mapping) else list(changes)
        factors = concept_factors(pairs, self.num_concepts)
        changed = {int(j): float(factors[j]) for j in torch.nonzero(factors != 1).flatten()}
        if not changed:
            image = selection.reconstruction
        else:
            with torch.inference_mode():
                phi = selection.phi * factors.to(selection.phi).view(1, -1, 1, 1)
                image = self.model.decode(phi, selection.support)[0].cpu()
        return Edit(image=image, difference=difference(image, selection.reconstruction), factors=changed)

    # -- concept pages ----------------------------------------------------------------------------
    def activations(self) -> Encoded:
        """One pass over the whole training split (`ConceptExplainer.activations`, then cached)."""
        if self.train_set is None:
            raise ValueError("no training split is loaded, so there are no concept pages "
                             "(give data.root=FOLDER if the data moved)")
        with self._lock:
            if self._acts is None:
                self._acts = self.explainer.activations(self.train_set)
                self._global = self.explainer.global_relevance(self._acts)
            return self._acts

    def global_relevance(self) -> torch.Tensor:
        """r_{j,c} [C, K] over the training split (paper section 3.5)."""
        self.activations()
        assert self._global is not None
        return self._global

    def concept_page(
        self,
        concept: int,
        samples: int = 8,                            # most activating training samples shown
        sweeps: int = 3,                             # of which the λ sweep is shown on this many
        lambdas: Sequence[float] = DEFAULT_LAMBDAS,
        selection: Selection | None = None,          # also sweep the selected image (first row)
        classes: int = 5,                            # most relevant classes listed
    ) -> ConceptPage:
        """Concept j: the classes it is most relevant for, its most activating training samples,
        and its λ sweep (with difference images, paper appendix E) on several images."""
        k = self.num_concepts
        if not 0 <= concept < k:
            raise ValueError(f"concept: expected in [0, {k}), got {concept}")
        if samples < 1 or sweeps < 0 or classes < 1:
            raise ValueError(f"samples, classes >= 1 and sweeps >= 0 expected, got {samples}, {classes}, {sweeps}")
        acts = self.activations()
        column = self.global_relevance()[:, concept]
        order = torch.argsort(column, descending=True, stable=True)[:classes]
        top_classes = [(int(c), float(column[c])) for c in order]
        ma = self.explainer.most_activating(acts, concept, samples)
        images = torch.stack([self.train_set[int(i)]["image"] for i in ma["indices"]])
        found = [(int(i), int(y), float(a)) for i, y, a in zip(ma["indices"], ma["labels"], ma["activations"])]
        captions = [f"{self.class_names[y][:14]} {a:.2f}" for _, y, a in found]
        samples_fig = samples_figure(f"concept {concept}: most activating training samples (class, a_j)",
                                     images, captions, ncols=min(len(found), 8))

        rows_img, labels = [], []
        if selection is not None:
            rows_img.append(selection.image)
            labels.append(f"selected\n{selection.source[:16]}")
        for (i, y, _), img in list(zip(found, images))[:sweeps]:
            rows_img.append(img)
            labels.append(f"sample {i}\n{self.class_names[y][:16]}")
        if rows_img:
            sweep = self.explainer.lambda_sweep(torch.stack(rows_img), concept, lambdas)   # [M, L, 3, R, R]
            rows = [Row(label, concept_effect_cells(s, lambdas)) for label, s in zip(labels, sweep)]
            sweep_fig = labelled_grid(rows, f"concept {concept}: φ_j scaled by λ (Φ' and noise fixed), differences",
                                      effect_column_labels(lambdas), cell=cell_size_for(self.resolution, target=96))
        else:
            sweep_fig = labelled_grid([Row("no image to sweep")], cell=1)
        return ConceptPage(concept, top_classes, found, samples_fig, sweep_fig, tuple(float(v) for v in lambdas))


def load_explorer(
    checkpoint: str | os.PathLike,               # concept-model folder (RUN/viscoin, viscoin-demo/viscoin)
    data_overrides: Sequence[str] = (),          # data.KEY=VALUE changes to the saved data config
    device: str | torch.device = "cpu",
    **kwargs: Any,                               # ConceptExplorer's options
) -> ConceptExplorer:
    """A `ConceptExplorer` on a saved concept model and the test and training splits it was trained on."""
    trained = load_trained(checkpoint, data_overrides, device)
    return ConceptExplorer(trained.model, trained.classes, trained.dataset("test"), trained.dataset("train"), **kwargs)

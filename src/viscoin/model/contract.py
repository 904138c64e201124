"""The one public contract of every concept model (VisCoIN, FLINT, FLAEM).

A concept model sits on a frozen classifier f. From an image x in [-1, 1] it computes concept
maps Φ(x) [N, K, h, w] (h = w = 3 for VisCoIN, 1 for a concept vector), predicts with one linear
layer on their pooled activations, g(x) = softmax(Wᵀ pool(Φ(x)) + b) (paper eq. 1 and section
3.5), and decodes concept maps back into an image. Metrics, reports and apps use only what is
defined here, never a model's sub-modules:

    enc = model.encode(x)                  # Encoding(logits_f, phi, support, logits_g)
    a = model.pool(enc.phi)                # a_j(x) [N, K]
    logits = model.predict_from(phi)       # g's logits from (edited) concept maps
    r = model.relevance(enc.phi)           # local relevance r_{j,x} [N, K] (section 3.5)
    img = model.decode(phi, enc.support)   # the image of (edited) concept maps [N, 3, R, R]
    p_f = model.classify(img).softmax(1)   # the frozen f on any image

`encode` is differentiable w.r.t. x when x requires gradients (activation maximisation,
`viscoin.interpret.visualise`); otherwise f runs without a graph. `visualisation` names how the
family shows a concept: "decoder" (decode Φ with φ_j scaled by λ: VisCoIN, FLAEM) or
"activation_maximisation" (FLINT).

f is held by reference (not a submodule): it is never trained, wrapped by DDP or saved with the
model, stays in eval mode, and follows the model's device. Its outputs are reached through
`classify`, `classifier_features`, `classifier_stage` and `classifier_embedding`.
"""

from __future__ import annotations

import hashlib
import os
from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, ClassVar, NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from viscoin.model.relevance import local_relevance
from viscoin.pretrained import is_pretrained_name
from viscoin.utils.config import ConfigError
from viscoin.utils.io import CheckpointError


MAX_CONCEPTS = 4096     # K above this is refused before anything is built (the paper's largest: 256)


def check_num_concepts(k: int) -> None:
    """ConfigError naming ``model.num_concepts`` unless 1 <= K <= MAX_CONCEPTS (an integer)."""
    if isinstance(k, bool) or not isinstance(k, int) or not 1 <= k <= MAX_CONCEPTS:
        raise ConfigError(f"model.num_concepts: expected an integer in [1, {MAX_CONCEPTS}], got {k!r}")


class Encoding(NamedTuple):
    """One pass of a concept model over images."""

    logits_f: torch.Tensor             # f(x): the frozen classifier's logits [N, C]
    phi: torch.Tensor                  # Φ(x): concept maps [N, K, h, w], non-negative
    support: torch.Tensor | None       # Φ'(x): what the decoder reads besides Φ (VisCoIN: [N, 9K]); None if nothing
    logits_g: torch.Tensor             # g(x): logits of the interpretable predictor [N, C]


def freeze(module: nn.Module) -> nn.Module:
    """Eval mode, no gradients for its parameters (gradients still flow through it)."""
    if hasattr(module, "freeze"):
        module.freeze()
    module.eval()
    module.requires_grad_(False)
    return module


def state_fingerprint(module: nn.Module) -> str:
    """SHA-256 over a module's state dict (names, dtypes, shapes, bytes): identifies f and G by their weights."""
    h = hashlib.sha256()
    for name, t in module.state_dict().items():
        t = t.detach().cpu().contiguous()
        h.update(f"{name}|{t.dtype}|{list(t.shape)}|".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


class ConceptModel(nn.Module, ABC):
    """Base of every concept model: the frozen classifier f, the checks, and the shared formulas.

    Subclasses define `num_concepts`, `encode`, `predictor_weights` and `decode`; they may
    override `pool` and `predict_from` (defaults: max over space; ``pool(Φ) Wᵀ + b``).
    """

    family: ClassVar[str] = "concept model"   # display name: "VisCoIN", "FLINT", "FLAEM"
    visualisation: ClassVar[str] = "decoder"  # how a concept is shown: "decoder" or "activation_maximisation"

    def __init__(
        self,
        classifier: nn.Module,   # f: viscoin.classifier.Classifier (frozen here)
        resolution: int,         # input resolution R of f (the data resolution)
    ) -> None:
        super().__init__()
        object.__setattr__(self, "f", freeze(classifier))   # by reference: not a submodule
        self.resolution = resolution
        self.num_classes: int = classifier.num_classes

    def _apply(self, fn: Any, *args: Any, **kwargs: Any) -> ConceptModel:
        super()._apply(fn, *args, **kwargs)
        self.f._apply(fn, *args, **kwargs)
        return self

    @property
    def device(self) -> torch.device:
        """Where the model's parameters are."""
        return next(self.parameters()).device

    # -- what every family defines ------------------------------------------------------------------
    @property
    @abstractmethod
    def num_concepts(self) -> int:
        """K."""

    @abstractmethod
    def encode(self, x: torch.Tensor) -> Encoding:
        """f's logits, Φ(x), Φ'(x) and g's logits of images [N, 3, R, R] in [-1, 1]; f's weights get no
        gradients, and x gets them only when it requires them (then f must keep its graph)."""

    @abstractmethod
    def predictor_weights(self) -> tuple[torch.Tensor, torch.Tensor | None]:
        """The linear predictor's weights W [C, K] and bias [C] (None when it has none)."""

    @abstractmethod
    def decode(self, phi: torch.Tensor, support: torch.Tensor | None) -> torch.Tensor:
        """The image [N, 3, R, R] (nominally in [-1, 1]) of concept maps Φ [N, K, h, w] and Φ'."""

    @property
    def decoder_name(self) -> str:
        """What turns concept maps into an image, for captions (VisCoIN: ``G(w̄ + Ω(Φ, Φ'))``)."""
        return f"{self.family}'s decoder"

    def describe(self) -> dict[str, str]:
        """Settings worth showing in a report (name -> value)."""
        return {"family": self.family, "concepts K": str(self.num_concepts), "classes C": str(self.num_classes),
                "resolution": f"{self.resolution}×{self.resolution}"}

    # -- shared formulas ----------------------------------------------------------------------------
    def pool(self, phi: torch.Tensor) -> torch.Tensor:
        """Pooled activations a_j(x) = maxpool(φ_j(x)): [N, K, h, w] -> [N, K]."""
        return phi.amax(dim=(2, 3))

    def predict_from(self, phi: torch.Tensor) -> torch.Tensor:
        """g's logits [N, C] from concept maps Φ (e.g. edited ones)."""
        weight, bias = self.predictor_weights()
        return F.linear(self.pool(phi), weight, bias)

    def logits(self, x: torch.Tensor) -> torch.Tensor:
        """Logits of the interpretable classifier g [N, C]."""
        return self.encode(x).logits_g

    def predict(self, x: torch.Tensor) -> torch.Tensor:
        """g(x): class probabilities [N, C]."""
        return self.encode(x).logits_g.softmax(dim=1)

    def concepts(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Φ(x) and Φ'(x)."""
        enc = self.encode(x)
        return enc.phi, enc.support

    def reconstruct(self, x: torch.Tensor) -> torch.Tensor:
        """The decoder's image of x's own concepts [N, 3, R, R]."""
        enc = self.encode(x)
        return self.decode(enc.phi, enc.support)

    @torch.no_grad()
    def relevance(self, phi: torch.Tensor, classes: torch.Tensor | None = None) -> torch.Tensor:
        """Local relevance r_{j,x} [N, K] of concept maps Φ w.r.t. `classes` [N] (default ĉ = argmax g), section 3.5."""
        weight, bias = self.predictor_weights()
        return local_relevance(self.pool(phi), weight, bias, classes)

    # -- the frozen classifier f --------------------------------------------------------------------
    def classify(self, x: torch.Tensor) -> torch.Tensor:
        """f's logits [N, C] of any images in [-1, 1] (e.g. decoded ones); differentiable w.r.t. x."""
        return self.f(x)

    def classifier_features(self, x: torch.Tensor, taps: Sequence[str] | None = None) -> dict[str, torch.Tensor]:
        """f's taps (default: those f was configured with) and logits from one pass:
        ``{tap: [N, C_t, H_t, W_t], ..., "logits": [N, C]}``."""
        return self.f.features(x) if taps is None else self.f.features_at(x, taps)

    def classifier_stage(self, x: torch.Tensor, stage: str) -> torch.Tensor:
        """Output of f's ResNet stage `stage` (e.g. ``"layer2"``) [N, C_s, H_s, W_s]."""
        return self.f.stage_output(x, stage)

    def classifier_embedding(self, x: torch.Tensor) -> torch.Tensor:
        """f's pooled penultimate features [N, D]."""
        return self.f.embedding(x)

    def classifier_fingerprint(self) -> str:
        """SHA-256 of f's weights (recorded in every checkpoint; loading with another f is refused)."""
        return state_fingerprint(self.f)

    # -- checks -------------------------------------------------------------------------------------
    def check_images(self, x: torch.Tensor) -> None:
        """ValueError unless x is a batch [N, 3, R, R] at the model's resolution."""
        r = self.resolution
        if not isinstance(x, torch.Tensor) or x.ndim != 4 or x.shape[1] != 3 or x.shape[2] != r or x.shape[3] != r:
            shape = list(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__
            raise ValueError(f"x: expected images [N, 3, {r}, {r}] in [-1, 1], got {shape}")


# -- the frozen networks a checkpoint was trained with ----------------------------------------------


def record_network(path: str | os.PathLike, module: nn.Module) -> dict[str, str]:
    """``{"path", "state_sha256"}`` of a frozen network for a checkpoint's ``source`` (shipped networks keep
    their ``viscoin:`` name, valid wherever the package is installed; other paths are made absolute)."""
    where = str(path) if is_pretrained_name(path) else str(Path(path).resolve())
    return {"path": where, "state_sha256": state_fingerprint(module)}


def checked_network(
    checkpoint: str | os.PathLike,              # the checkpoint folder (for messages)
    source: dict[str, Any],                     # its ``source`` section
    name: str,                                  # "classifier" or "generator"
    given: nn.Module | None,                    # a network given by the caller, or None: load the recorded one
    loader: Callable[[str | os.PathLike], nn.Module],  # loads a network folder
) -> nn.Module:
    """The frozen network `name` of a checkpoint, refused when its weights differ from those recorded."""
    entry = source.get(name)
    if not isinstance(entry, dict) or not entry.get("path") or not entry.get("state_sha256"):
        raise CheckpointError(f"{checkpoint}: config.json records no {name} path and SHA-256 (source.{name}); "
                              "the checkpoint is damaged or was not written by viscoin")
    module = loader(entry["path"]) if given is None else given   # the loader resolves a viscoin: name
    expected = entry["state_sha256"]
    if state_fingerprint(module) != expected:
        raise CheckpointError(
            f"{checkpoint}: was trained with a different {name} (weights SHA-256 {expected[:12]}…, "
            f"recorded path {entry['path']}); the {name} given has other weights"
        )
    return module


def check_training_data(
    classifier_info: dict[str, Any],         # config.json of f's checkpoint (`read_classifier_info`)
    classifier_path: str,                    # where f comes from (for messages)
    classes: Sequence[str],                  # the training data's class names, in label order
    resolution: int,                         # data.resolution
    generator_resolution: int | None = None, # G's output resolution (VisCoIN), if any
) -> None:
    """Refuse data that f (or G) was not trained for: other classes or class order, another resolution.

    A relabelled or reordered dataset would leave f's predictions meaningless without an error, and
    an f run at another resolution than it was trained at loses its accuracy silently.
    """
    extra = classifier_info.get("extra") or {}
    saved = extra.get("classes")
    if isinstance(saved, list):
        saved = [str(c) for c in saved]
        if saved != list(classes):
            if len(saved) != len(classes):
                why = f"it has {len(saved)} classes, the data {len(classes)}"
            else:
                i = next(i for i, (a, b) in enumerate(zip(saved, classes)) if a != b)
                why = f"class {i} is {saved[i]!r} for f but {classes[i]!r} in the data"
            raise ConfigError(f"classifier {classifier_path}: was trained on other classes than the data ({why}); "
                              "use the data f was trained on, or train f on this data")
    trained_at = (extra.get("data") or {}).get("resolution")
    if trained_at is not None and int(trained_at) != resolution:
        raise ConfigError(f"data.resolution={resolution}, but the classifier {classifier_path} was trained at "
                          f"{trained_at}x{trained_at}; set data.resolution={trained_at}")
    if generator_resolution is not None and generator_resolution != resolution:
        raise ConfigError(f"data.resolution={resolution}, but the generator draws {generator_resolution}x"
                          f"{generator_resolution} images; use a generator of the data's resolution "
                          f"(or data.resolution={generator_resolution})")

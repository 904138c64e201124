"""What the paper's two baselines, FLINT and FLAEM, share: a vector of K concepts per image.

VisCoIN's appendix B.3.1 re-trains both on the same frozen classifier f and with the same K as
VisCoIN (``docs/baselines.md``, introduction). Unlike VisCoIN, they give one non-negative
number per concept, no spatial map. To obey the concept-model contract
(`viscoin.model.contract.ConceptModel`) unchanged, that vector is carried as concept maps
Φ [N, K, 1, 1]: max-pooling a 1×1 map is the number itself, so every metric's edit of Φ (scale φ_j,
zero φ_j, set φ_j) reaches the predictor and the decoder as it would a map. There is no support
branch: `Encoding.support` is None and `decode` accepts only None.

    x --f (frozen)--> features --extractor--> c [N, K] >= 0 --(as Φ [N, K, 1, 1])
                                                  ├--predictor (dropout + linear, bias)--> g's logits
                                                  └--decoder--> an image [N, 3, R, R]

A family (`viscoin.model.flint.Flint`, `viscoin.model.flaem.Flaem`) defines `extract` (f's logits
and c from images, f without gradients), its `decoder`, the raw terms of its losses
(`loss_terms`) and its config class. Its checkpoint is a folder in viscoin's format
(``config.json`` + ``weights.safetensors``, `viscoin.utils.checkpoint`) holding the extractor,
predictor and decoder, the config, the resolution, and the path and SHA-256 of f's weights;
loading it against another f is refused (`viscoin.model.contract.checked_network`).
"""

from __future__ import annotations

import os
from abc import abstractmethod
from collections.abc import Sequence
from pathlib import Path
from typing import Any, ClassVar, NamedTuple, TypeVar

import torch
from torch import nn

from viscoin.classifier.model import load_classifier
from viscoin.model.concepts import ConceptPredictor
from viscoin.model.contract import ConceptModel, Encoding, checked_network, record_network
from viscoin.utils.checkpoint import load_checkpoint_tensors, read_checkpoint_folder_info, save_checkpoint_folder
from viscoin.utils.config import ConfigError, DictConfig
from viscoin.utils.io import CheckpointError, copy_named_tensors

M = TypeVar("M", bound="VectorConceptModel")


class BaselinePass(NamedTuple):
    """One training pass of a baseline (`VectorConceptModel.forward`): its encoding and reconstruction."""

    encoding: Encoding          # f's logits, Φ [N, K, 1, 1], support None, g's logits (dropout active in training)
    x_rec: torch.Tensor         # the decoder's image of Φ [N, 3, R, R]


class VectorConceptModel(ConceptModel):
    """A concept model whose concepts are K numbers per image, shown to the contract as Φ [N, K, 1, 1].

    Subclasses set `family`, `network` (checkpoint network kind and run sub-folder: ``"flint"``),
    `format_tag`, `config_class`, build ``self.decoder`` in ``__init__`` and define `extract` and
    `loss_terms`. The predictor is VisCoIN's Θ module (`ConceptPredictor`: dropout, then a linear
    layer with bias on max-pooled maps, here the concept vector itself).
    """

    network: ClassVar[str]                      # "flint" / "flaem"
    format_tag: ClassVar[str]                   # "viscoin.flint" / "viscoin.flaem"
    config_class: ClassVar[type[DictConfig]]    # FlintConfig / FlaemConfig

    def __init__(
        self,
        config: Any,             # the family's config (K as ``num_concepts``)
        classifier: nn.Module,   # f: viscoin.classifier.Classifier (frozen here)
        resolution: int,         # input resolution R of f
        dropout: float,          # dropout before the predictor's linear layer
    ) -> None:
        super().__init__(classifier, resolution)
        self.config = config
        self.predictor = ConceptPredictor(config.num_concepts, self.num_classes, dropout, bias=True)   # as published
        self.decoder: nn.Module   # set by the subclass

    @property
    def num_concepts(self) -> int:
        return int(self.config.num_concepts)

    # -- what a family defines ----------------------------------------------------------------------
    @abstractmethod
    def extract(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(f's logits [N, C], concepts c [N, K] >= 0) of checked images (`classifier_taps`: f builds a graph
        only when x requires gradients)."""

    @staticmethod
    @abstractmethod
    def loss_terms(out: BaselinePass, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """The family's unweighted loss terms (float32 scalars) of one training pass on inputs x."""

    def classifier_taps(self, x: torch.Tensor, taps: Sequence[str]) -> tuple[list[torch.Tensor], torch.Tensor]:
        """f's maps at `taps` (in that order) and its logits, from one pass; f keeps a graph only when x
        requires gradients (activation maximisation), its weights never get any."""
        with torch.set_grad_enabled(torch.is_grad_enabled() and x.requires_grad):
            feats = self.classifier_features(x, taps)
        maps = list(feats.values())[:-1]
        if len(maps) != len(taps):
            raise ValueError(f"taps {list(taps)}: two of them name the same layer of f")
        return maps, feats["logits"]

    @torch.no_grad()
    def measure_taps(self, taps: Sequence[str]) -> list[tuple[int, int, int]]:
        """(C, H, W) of f's maps at `taps` for the model's resolution, from one pass of a blank image
        (exact for any backbone and resolution)."""
        p = next(self.f.parameters())
        x = torch.zeros(1, 3, self.resolution, self.resolution, device=p.device, dtype=p.dtype)
        maps, _ = self.classifier_taps(x, taps)
        return [(int(m.shape[1]), int(m.shape[2]), int(m.shape[3])) for m in maps]

    # -- Φ as maps ----------------------------------------------------------------------------------
    def concept_vector(self, phi: torch.Tensor) -> torch.Tensor:
        """Φ [N, K, 1, 1] -> c [N, K]; a ValueError naming Φ for any other shape."""
        k = self.num_concepts
        if not isinstance(phi, torch.Tensor) or phi.ndim != 4 or tuple(phi.shape[1:]) != (k, 1, 1):
            shape = list(phi.shape) if isinstance(phi, torch.Tensor) else type(phi).__name__
            raise ValueError(f"Φ: expected [N, {k}, 1, 1] ({self.family}'s K concepts as 1×1 maps), got {shape}")
        return phi.flatten(1)

    # -- the contract -------------------------------------------------------------------------------
    def encode(self, x: torch.Tensor) -> Encoding:
        """f(x), Φ(x) [N, K, 1, 1] (non-negative), no support (None), g's logits [N, C]."""
        self.check_images(x)
        logits_f, c = self.extract(x)
        assert c.shape == (x.shape[0], self.num_concepts), f"{self.family} concepts: {list(c.shape)}"
        phi = c[:, :, None, None]
        return Encoding(logits_f, phi, None, self.predictor(phi))

    def predictor_weights(self) -> tuple[torch.Tensor, torch.Tensor | None]:
        return self.predictor.linear.weight, self.predictor.linear.bias

    def predict_from(self, phi: torch.Tensor) -> torch.Tensor:
        """g's logits [N, C] from Φ [N, K, 1, 1] (the predictor's dropout acts in training mode only)."""
        self.concept_vector(phi)
        return self.predictor(phi)

    def decode(self, phi: torch.Tensor, support: torch.Tensor | None = None) -> torch.Tensor:
        """The decoder's image [N, 3, R, R] of Φ [N, K, 1, 1]; `support` must be None (no Φ')."""
        if support is not None:
            raise ValueError(f"Φ': {self.family} has no support branch; expected None, got a tensor "
                             f"{list(support.shape)}")
        img = self.decoder(self.concept_vector(phi))
        r = self.resolution
        assert img.shape == (phi.shape[0], 3, r, r), f"{self.family} decoder output {list(img.shape)}, expected [N, 3, {r}, {r}]"
        return img

    def describe(self) -> dict[str, str]:
        return {**super().describe(), "concepts": "one number each (Φ as 1×1 maps)", "support Φ'": "none"}

    # -- checkpoints ------------------------------------------------------------------------------
    def save_checkpoint(
        self,
        out_dir: str | os.PathLike,
        classifier_path: str | os.PathLike,     # where f was loaded from (a folder or ``viscoin:...``)
        extra: dict[str, Any] | None = None,    # data config, class names, test results, ...
    ) -> Path:
        """Save the trainable parts (not f) with the config, the resolution, and f's path and SHA-256."""
        source = {"classifier": record_network(classifier_path, self.f)}
        config = {"model": self.config.to_dict(), "resolution": self.resolution}
        return save_checkpoint_folder(out_dir, self.format_tag, self.network, config, self.state_dict(),
                                      source=source, extra=extra)

    @classmethod
    def read_checkpoint_info(cls, path: str | os.PathLike) -> dict[str, Any]:
        """The checked ``config.json`` of a checkpoint folder of this family."""
        return read_checkpoint_folder_info(path, cls.format_tag, [cls.network],
                                           hint=f"expected a folder written by `viscoin {cls.network} train` "
                                                f"(RUN/{cls.network})")

    @classmethod
    def load_checkpoint(
        cls: type[M],
        path: str | os.PathLike,
        classifier: nn.Module | None = None,    # f; None: load it from the recorded path
        device: str | torch.device = "cpu",
    ) -> M:
        """Load a checkpoint of this family (eval mode); refuses an f whose weights differ from those it was
        trained with (CheckpointError naming the classifier)."""
        info = cls.read_checkpoint_info(path)
        classifier = checked_network(path, info.get("source", {}), "classifier", classifier, load_classifier)
        cfg = info["config"]
        try:
            model_cfg = cls.config_class.from_dict(cfg["model"], where=f"{path}: config.model")
            model = cls(model_cfg, classifier, resolution=int(cfg["resolution"]))   # type: ignore[call-arg]
        except (ConfigError, KeyError, TypeError, ValueError) as exc:
            raise CheckpointError(f"{path}: config.json does not describe a {cls.family} model ({exc})") from exc
        copy_named_tensors(model, load_checkpoint_tensors(info), where=str(path))
        return model.to(device).eval()

    def forward(self, x: torch.Tensor) -> BaselinePass:
        """The training pass: the encoding and the reconstruction, in one call (so DDP sees a single forward)."""
        enc = self.encode(x)
        return BaselinePass(enc, self.decode(enc.phi))


# -- schedules of loss weights and learning rates ------------------------------------------------------

Schedule = tuple[tuple[int, float], ...]   # ((from, value), ...): `value` from epoch (or step) `from` on


def check_schedule(schedule: Schedule, name: str) -> None:
    """ConfigError naming `name` unless the starts are integers >= 1, strictly increasing, and the values >= 0."""
    starts = [s for s, _ in schedule]
    if any(isinstance(s, bool) or not isinstance(s, int) or s < 1 for s in starts):
        raise ConfigError(f"{name}: every start must be an epoch (or step) number >= 1, got {list(starts)}")
    if any(b <= a for a, b in zip(starts, starts[1:])):
        raise ConfigError(f"{name}: the starts must increase, got {list(starts)}")
    if any(v < 0 for _, v in schedule):
        raise ConfigError(f"{name}: values must be >= 0, got {[v for _, v in schedule]}")


def scheduled(schedule: Schedule, position: int, default: float = 0.0) -> float:
    """The value of the last pair whose start is <= `position` (1-based epoch or step); `default` before the first."""
    value = default
    for start, v in schedule:
        if position >= start:
            value = v
    return value

"""The VisCoIN model: frozen classifier f and generator G around the trainable Ψ, Θ, Ω.

    x --f--> taps --Ψ--> Φ(x), Φ'(x) --Θ--> g(x)           (interpretable prediction)
                              └----Ω--> w̄ + offsets --G--> x̃  (reconstruction, eq. 1)

Only Ψ, Θ and Ω are submodules (so only they are trained, wrapped by DDP and checkpointed);
f and G are held by reference, frozen, in eval mode, and follow the model's device. Images are in
[-1, 1] everywhere: f normalises its own input, G outputs [-1, 1].

A checkpoint is a folder (``viscoin.utils.checkpoint``, format tag ``viscoin.model``) holding Ψ, Θ,
Ω, the config, and the paths and a SHA-256 fingerprint of the weights of f and G; loading it
against a different f or G is refused.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from viscoin.model.concepts import CONCEPT_GRID, ConceptExtractor, ConceptPredictor, ConceptTranslator
from viscoin.utils.checkpoint import load_checkpoint_tensors, read_checkpoint_folder_info, save_checkpoint_folder
from viscoin.utils.config import ConfigError, DictConfig
from viscoin.utils.io import CheckpointError, copy_named_tensors

FORMAT = "viscoin.model"


@dataclass(frozen=True)
class VisCoINConfig(DictConfig):
    """Architecture of Ψ, Θ, Ω (paper appendix B.1.1; table 3 for K)."""

    num_concepts: int = 256          # K
    adapter_channels: int = 512      # channels of each tap after its adapter conv in Ψ
    use_support: bool = True         # support branch Φ' (ablation: False)
    support_first: int = 3           # leading W+ vectors predicted from Φ'
    support_last: int = 2            # trailing W+ vectors predicted from Φ'
    dropout: float = 0.01            # dropout on Φ in Θ

    def __post_init__(self) -> None:
        if self.num_concepts < 1:
            raise ConfigError(f"model.num_concepts: expected >= 1, got {self.num_concepts}")
        if self.adapter_channels < 1:
            raise ConfigError(f"model.adapter_channels: expected >= 1, got {self.adapter_channels}")
        if not 0 <= self.dropout < 1:
            raise ConfigError(f"model.dropout: expected in [0, 1), got {self.dropout}")


def state_fingerprint(module: nn.Module) -> str:
    """SHA-256 over a module's state dict (names, dtypes, shapes, bytes): identifies f and G by their weights."""
    h = hashlib.sha256()
    for name, t in module.state_dict().items():
        t = t.detach().cpu().contiguous()
        h.update(f"{name}|{t.dtype}|{list(t.shape)}|".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


class VisCoIN(nn.Module):
    """VisCoIN around a frozen classifier and generator. Inputs are images in [-1, 1], [N, 3, R, R]."""

    def __init__(
        self,
        config: VisCoINConfig,       # architecture of Ψ, Θ, Ω
        classifier: nn.Module,       # f: viscoin.classifier.Classifier (frozen here)
        generator: nn.Module,        # G: viscoin.stylegan.Generator (frozen here)
        resolution: int,             # input resolution of f (the data resolution)
    ) -> None:
        super().__init__()
        self.config = config
        self.resolution = resolution
        # Held by reference: not submodules, so never trained, DDP-wrapped or saved with Ψ, Θ, Ω.
        object.__setattr__(self, "f", _freeze(classifier))
        object.__setattr__(self, "G", _freeze(generator))
        tap_shapes = classifier.tap_shapes(resolution)
        self.num_classes = classifier.num_classes
        self.num_ws, self.w_dim = generator.num_ws, generator.w_dim
        self.psi = ConceptExtractor(tap_shapes, config.num_concepts, config.adapter_channels, config.use_support)
        self.theta = ConceptPredictor(config.num_concepts, self.num_classes, config.dropout)
        self.omega = ConceptTranslator(
            config.num_concepts, self.num_ws, self.w_dim, config.use_support, config.support_first, config.support_last
        )

    # -- f and G follow the model ---------------------------------------------------------------
    def _apply(self, fn: Any, *args: Any, **kwargs: Any) -> VisCoIN:
        super()._apply(fn, *args, **kwargs)
        self.f._apply(fn, *args, **kwargs)
        self.G._apply(fn, *args, **kwargs)
        return self

    @property
    def w_avg(self) -> torch.Tensor:
        """G's frozen average latent w̄ [w_dim]."""
        return self.G.w_avg

    # -- checks -------------------------------------------------------------------------------------
    def _check_images(self, x: torch.Tensor) -> None:
        if x.ndim != 4 or x.shape[1] != 3 or x.shape[2] != self.resolution or x.shape[3] != self.resolution:
            raise ValueError(f"x: expected images [N, 3, {self.resolution}, {self.resolution}] in [-1, 1], "
                             f"got {list(x.shape)}")

    def _check_concepts(self, phi: torch.Tensor, support: torch.Tensor | None) -> None:
        k = self.config.num_concepts
        if phi.ndim != 4 or phi.shape[1:] != (k, CONCEPT_GRID, CONCEPT_GRID):
            raise ValueError(f"Φ: expected [N, {k}, 3, 3], got {list(phi.shape)}")
        if self.config.use_support:
            if support is None or support.shape != (phi.shape[0], 9 * k):
                raise ValueError(f"Φ': expected [{phi.shape[0]}, {9 * k}], got "
                                 f"{None if support is None else list(support.shape)}")

    # -- the public API -----------------------------------------------------------------------------
    def concepts(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Φ(x) [N, K, 3, 3] (non-negative) and Φ'(x) [N, 9K] (None without support branch)."""
        self._check_images(x)
        with torch.no_grad():
            taps = self.f.features(x)
        return self.psi(taps)

    def logits(self, x: torch.Tensor) -> torch.Tensor:
        """Logits of the interpretable classifier g [N, C]."""
        return self.theta(self.concepts(x)[0])

    def predict(self, x: torch.Tensor) -> torch.Tensor:
        """g(x) = softmax(Wᵀ maxpool(Φ(x))): class probabilities [N, C]."""
        return self.logits(x).softmax(dim=1)

    def latents(self, phi: torch.Tensor, support: torch.Tensor | None) -> torch.Tensor:
        """W+ latents w̄ + Ω(Φ, Φ') [N, num_ws, w_dim]."""
        self._check_concepts(phi, support)
        return self.w_avg + self.omega(phi, support)

    def generate(self, phi: torch.Tensor, support: torch.Tensor | None) -> torch.Tensor:
        """G(w̄ + Ω(Φ, Φ')) with constant noise, at f's resolution [N, 3, R, R]."""
        return self._synthesize(self.latents(phi, support))

    def reconstruct(self, x: torch.Tensor) -> torch.Tensor:
        """x̃ = G(w̄ + Ω(Φ(x), Φ'(x))) (eq. 1)."""
        return self.generate(*self.concepts(x))

    def _synthesize(self, ws: torch.Tensor) -> torch.Tensor:
        img = self.G.synthesis(ws, noise_mode="const")
        if img.shape[-1] != self.resolution:
            img = F.interpolate(img, size=(self.resolution, self.resolution), mode="bilinear",
                                align_corners=False, antialias=img.shape[-1] > self.resolution)
        return img

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """Everything one training step needs, in one pass (so DDP sees a single forward)."""
        self._check_images(x)
        with torch.no_grad():
            feats = self.f.features(x)                       # f(x): targets, and Ψ's inputs
        phi, support = self.psi(feats)
        offsets = self.omega(phi, support)                  # [N, num_ws, w_dim]
        x_rec = self._synthesize(self.w_avg + offsets)      # gradients flow through G into Ω
        feats_rec = self.f.features(x_rec)                  # with gradients through f (γ term)
        return {
            "phi": phi,
            "support": support if support is not None else phi.new_zeros(0),
            "logits_g": self.theta(phi),
            "offsets": offsets,
            "x_rec": x_rec,
            "feats": feats,
            "feats_rec": feats_rec,
        }


def _freeze(module: nn.Module) -> nn.Module:
    """Eval mode, no gradients for its parameters (gradients still flow through it)."""
    if hasattr(module, "freeze"):
        module.freeze()
    module.eval()
    module.requires_grad_(False)
    return module


# -- checkpoints -------------------------------------------------------------------------------------


def save_viscoin(
    model: VisCoIN,
    out_dir: str | os.PathLike,
    classifier_path: str | os.PathLike,    # where f was loaded from
    generator_path: str | os.PathLike,     # where G was loaded from
    extra: dict[str, Any] | None = None,
) -> Path:
    """Save Ψ, Θ, Ω with the config and the identity (paths, SHA-256 of the weights) of f and G."""
    from viscoin.pretrained import is_pretrained_name

    def record(path: str | os.PathLike) -> str:  # shipped networks keep their name (valid if the package moves)
        return str(path) if is_pretrained_name(path) else str(Path(path).resolve())

    source = {
        "classifier": {"path": record(classifier_path), "state_sha256": state_fingerprint(model.f)},
        "generator": {"path": record(generator_path), "state_sha256": state_fingerprint(model.G)},
    }
    config = {"model": model.config.to_dict(), "resolution": model.resolution}
    return save_checkpoint_folder(out_dir, FORMAT, "viscoin", config, model.state_dict(), source=source, extra=extra)


def read_viscoin_info(path: str | os.PathLike) -> dict[str, Any]:
    return read_checkpoint_folder_info(path, FORMAT, ["viscoin"], hint="expected a folder written by `viscoin train`")


def load_viscoin(
    path: str | os.PathLike,
    classifier: nn.Module | None = None,     # f; None: load it from the recorded path
    generator: nn.Module | None = None,      # G; None: load it from the recorded path
    device: str | torch.device = "cpu",
) -> VisCoIN:
    """Load a VisCoIN checkpoint; refuses an f or G whose weights differ from those it was trained with."""
    from viscoin.classifier.model import load_classifier
    from viscoin.pretrained import resolve
    from viscoin.stylegan.checkpoint import load_generator

    info = read_viscoin_info(path)
    src = info.get("source", {})
    if classifier is None:
        classifier = load_classifier(resolve(src["classifier"]["path"]))
    if generator is None:
        generator = load_generator(resolve(src["generator"]["path"]))
    for name, module in (("classifier", classifier), ("generator", generator)):
        expected = src.get(name, {}).get("state_sha256")
        if expected is not None and state_fingerprint(module) != expected:
            raise CheckpointError(
                f"{path}: was trained with a different {name} (weights SHA-256 {expected[:12]}…, "
                f"recorded path {src[name].get('path')}); the {name} given has other weights"
            )
    cfg = info["config"]
    try:
        model_cfg = VisCoINConfig.from_dict(cfg["model"], where=f"{path}: config.model")
    except ConfigError as exc:
        raise CheckpointError(str(exc)) from exc
    model = VisCoIN(model_cfg, classifier, generator, resolution=int(cfg["resolution"]))
    copy_named_tensors(model, load_checkpoint_tensors(info), where=str(path))
    return model.to(device).eval()

"""The VisCoIN model: frozen classifier f and generator G around the trainable Ψ, Θ, Ω (paper section 3).

    x --f--> taps --Ψ--> Φ(x), Φ'(x) --Θ--> g(x)           (interpretable prediction, eq. 1)
                              └----Ω--> w̄ + offsets --G--> x̃  (reconstruction, eq. 1)

Only Ψ, Θ and Ω are submodules (so only they are trained, wrapped by DDP and checkpointed);
f and G are held by reference, frozen, in eval mode, and follow the model's device. Images are in
[-1, 1] everywhere: f normalises its own input, G outputs [-1, 1]. VisCoIN obeys the concept-model
contract (`viscoin.model.contract.ConceptModel`); `forward` is the training pass.

A checkpoint is a folder (``viscoin.utils.checkpoint``, format tag ``viscoin.model``) holding Ψ, Θ,
Ω, the config, and the paths and a SHA-256 fingerprint of the weights of f and G; loading it
against a different f or G is refused.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from viscoin.classifier.model import load_classifier
from viscoin.model.concepts import CONCEPT_GRID, ConceptExtractor, ConceptPredictor, ConceptTranslator
from viscoin.model.contract import (
    MAX_CONCEPTS,
    ConceptModel,
    Encoding,
    check_num_concepts,
    checked_network,
    freeze,
    record_network,
    state_fingerprint,
)
from viscoin.stylegan.checkpoint import load_generator
from viscoin.stylegan.generator import random_labels
from viscoin.utils.checkpoint import load_checkpoint_tensors, read_checkpoint_folder_info, save_checkpoint_folder
from viscoin.utils.config import ConfigError, DictConfig
from viscoin.utils.io import CheckpointError, copy_named_tensors

FORMAT = "viscoin.model"


@dataclass(frozen=True)
class VisCoINConfig(DictConfig):
    """Architecture of Ψ, Θ, Ω (paper appendix B.1.1; table 3 for K).

    G's noise inputs: decoding (explanations, visualisations, metrics) always uses G's constant
    noise, so a concept edit is the only thing that changes a picture. In training passes
    ``train_noise: const`` (default) trains Ω for exactly that decoder, so the reconstruction
    loss carries no noise variance; ``random`` samples fresh noise per pass as StyleGAN2's own
    training does, which teaches Ω latents that hold up under any noise.
    """

    num_concepts: int = 256          # K
    adapter_channels: int = 512      # channels of each tap after its adapter conv in Ψ
    use_support: bool = True         # support branch Φ' (ablation: False)
    support_first: int = 3           # leading W+ vectors predicted from Φ'
    support_last: int = 2            # trailing W+ vectors predicted from Φ'
    dropout: float = 0.01            # dropout on Φ in Θ
    predictor_bias: bool = False     # Θ with a bias per class (the paper's g has none)
    train_noise: Literal["const", "random"] = "const"  # G's per-pixel noise in training passes (below)
    omega_init: Literal["default", "zeros"] = "default"  # Ω's initial weights (`ConceptTranslator`)

    def __post_init__(self) -> None:
        check_num_concepts(self.num_concepts)
        if not 1 <= self.adapter_channels <= MAX_CONCEPTS:
            raise ConfigError(f"model.adapter_channels: expected in [1, {MAX_CONCEPTS}], got {self.adapter_channels}")
        if not 0 <= self.dropout < 1:
            raise ConfigError(f"model.dropout: expected in [0, 1), got {self.dropout}")
        if self.omega_init not in ("default", "zeros"):
            raise ConfigError(f"model.omega_init: expected default or zeros, got {self.omega_init!r}")


class TrainingPass(NamedTuple):
    """Everything one training step needs from one forward pass (`VisCoIN.forward`)."""

    phi: torch.Tensor                    # Φ(x) [N, K, 3, 3]
    support: torch.Tensor | None         # Φ'(x) [N, 9K] (None without the support branch)
    logits_g: torch.Tensor               # g's logits [N, C] (Θ's dropout active in training mode)
    offsets: torch.Tensor                # Ω(Φ, Φ') [N, num_ws, w_dim]
    x_rec: torch.Tensor                  # x̃ = G(w̄ + offsets) [N, 3, R, R]
    feats: dict[str, torch.Tensor]       # f's taps and logits of x (no gradients)
    feats_rec: dict[str, torch.Tensor]   # f's taps and logits of x̃ (gradients flow to Ω)


class VisCoIN(ConceptModel):
    """VisCoIN around a frozen classifier and generator. Inputs are images in [-1, 1], [N, 3, R, R]."""

    family = "VisCoIN"

    def __init__(
        self,
        config: VisCoINConfig,       # architecture of Ψ, Θ, Ω
        classifier: nn.Module,       # f: viscoin.classifier.Classifier (frozen here)
        generator: nn.Module,        # G: viscoin.stylegan.Generator (frozen here)
        resolution: int,             # input resolution of f (the data resolution)
    ) -> None:
        super().__init__(classifier, resolution)
        self.config = config
        object.__setattr__(self, "G", freeze(generator))   # by reference, like f
        tap_shapes = classifier.tap_shapes(resolution)
        self.num_ws, self.w_dim = generator.num_ws, generator.w_dim
        self.psi = ConceptExtractor(tap_shapes, config.num_concepts, config.adapter_channels, config.use_support)
        self.theta = ConceptPredictor(config.num_concepts, self.num_classes, config.dropout, config.predictor_bias)
        self.omega = ConceptTranslator(
            config.num_concepts, self.num_ws, self.w_dim, config.use_support, config.support_first, config.support_last,
            config.omega_init,
        )

    def _apply(self, fn: Any, *args: Any, **kwargs: Any) -> VisCoIN:
        super()._apply(fn, *args, **kwargs)   # Ψ, Θ, Ω and f
        self.G._apply(fn, *args, **kwargs)
        return self

    @property
    def num_concepts(self) -> int:
        return self.config.num_concepts

    @property
    def w_avg(self) -> torch.Tensor:
        """G's frozen average latent w̄ [w_dim]."""
        return self.G.w_avg

    @property
    def decoder_name(self) -> str:
        return "G(w̄ + Ω(Φ, Φ'))"

    def describe(self) -> dict[str, str]:
        return {**super().describe(), "support branch Φ'": str(self.config.use_support),
                "generator": f"StyleGAN2 {self.G.img_resolution}×{self.G.img_resolution}, {self.num_ws} W+ vectors"}

    def generator_fingerprint(self) -> str:
        """SHA-256 of G's weights."""
        return state_fingerprint(self.G)

    # -- checks -------------------------------------------------------------------------------------
    def _check_concepts(self, phi: torch.Tensor, support: torch.Tensor | None) -> None:
        k = self.config.num_concepts
        if phi.ndim != 4 or phi.shape[1:] != (k, CONCEPT_GRID, CONCEPT_GRID):
            raise ValueError(f"Φ: expected [N, {k}, 3, 3], got {list(phi.shape)}")
        if self.config.use_support:
            if support is None or support.shape != (phi.shape[0], 9 * k):
                raise ValueError(f"Φ': expected [{phi.shape[0]}, {9 * k}], got "
                                 f"{None if support is None else list(support.shape)}")

    # -- the contract -------------------------------------------------------------------------------
    def encode(self, x: torch.Tensor) -> Encoding:
        """f(x), Φ(x) [N, K, 3, 3] (non-negative), Φ'(x) [N, 9K] (None without support branch), g's logits
        (differentiable w.r.t. x when x requires gradients)."""
        self.check_images(x)
        with torch.set_grad_enabled(torch.is_grad_enabled() and x.requires_grad):  # to x only (f is frozen)
            taps = self.f.features(x)
        phi, support = self.psi(taps)
        return Encoding(taps["logits"], phi, support, self.theta(phi))

    def predictor_weights(self) -> tuple[torch.Tensor, torch.Tensor | None]:
        return self.theta.linear.weight, self.theta.linear.bias

    def pool(self, phi: torch.Tensor) -> torch.Tensor:
        return self.theta.pool(phi)

    def predict_from(self, phi: torch.Tensor) -> torch.Tensor:
        """Θ's logits from concept maps (its dropout acts in training mode only)."""
        return self.theta(phi)

    def decode(self, phi: torch.Tensor, support: torch.Tensor | None) -> torch.Tensor:
        """G(w̄ + Ω(Φ, Φ')) with constant noise, at f's resolution [N, 3, R, R]."""
        return self.synthesize(self.latents(phi, support))

    # -- VisCoIN's own --------------------------------------------------------------------------------
    def latents(self, phi: torch.Tensor, support: torch.Tensor | None) -> torch.Tensor:
        """W+ latents w̄ + Ω(Φ, Φ') [N, num_ws, w_dim]."""
        self._check_concepts(phi, support)
        return self.w_avg + self.omega(phi, support)

    def generate(self, phi: torch.Tensor, support: torch.Tensor | None) -> torch.Tensor:
        """G(w̄ + Ω(Φ, Φ')): the same as `decode`."""
        return self.decode(phi, support)

    def synthesize(self, ws: torch.Tensor, noise_mode: str = "const") -> torch.Tensor:
        """G's image of W+ latents [N, num_ws, w_dim] (constant noise unless told), resized to f's resolution
        [N, 3, R, R]."""
        img = self.G.synthesis(ws, noise_mode=noise_mode)
        if img.shape[-1] != self.resolution:
            img = F.interpolate(img, size=(self.resolution, self.resolution), mode="bilinear",
                                align_corners=False, antialias=img.shape[-1] > self.resolution)
        return img

    @torch.no_grad()
    def sample_images(self, n: int, device: torch.device | str) -> torch.Tensor:
        """n images G(mapping(z, c)), z ~ N(0, I), c a uniform class when G is conditional, truncation 1
        (the synthetic half of a training batch, method section 3.4) [n, 3, R, R]."""
        z = torch.randn(n, self.G.z_dim, device=device)
        c = random_labels(self.G.c_dim, n, device)     # None unless G is conditional
        return self.synthesize(self.G.map(z, c, truncation_psi=1.0), self.config.train_noise)

    def orthogonality_loss(self, reduction: str = "sum") -> torch.Tensor:
        """L_orth of Ψ's concept convolution (eq. 5); reduction "sum" (eq. 5) or "mean" (over K² entries)."""
        return self.psi.orthogonality_loss(reduction)

    def forward(self, x: torch.Tensor) -> TrainingPass:
        """Everything one training step needs, in one pass (so DDP sees a single forward)."""
        self.check_images(x)
        with torch.no_grad():
            feats = self.f.features(x)                       # f(x): targets, and Ψ's inputs
        phi, support = self.psi(feats)
        offsets = self.omega(phi, support)                  # [N, num_ws, w_dim]
        x_rec = self.synthesize(self.w_avg + offsets, self.config.train_noise)  # gradients flow through G into Ω
        feats_rec = self.f.features(x_rec)                  # with gradients through f (γ term)
        return TrainingPass(phi, support, self.theta(phi), offsets, x_rec, feats, feats_rec)


# -- checkpoints -------------------------------------------------------------------------------------


def save_viscoin(
    model: VisCoIN,
    out_dir: str | os.PathLike,
    classifier_path: str | os.PathLike,    # where f was loaded from
    generator_path: str | os.PathLike,     # where G was loaded from
    extra: dict[str, Any] | None = None,
) -> Path:
    """Save Ψ, Θ, Ω with the config and the identity (paths, SHA-256 of the weights) of f and G."""
    source = {"classifier": record_network(classifier_path, model.f),
              "generator": record_network(generator_path, model.G)}
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
    info = read_viscoin_info(path)
    src = info.get("source", {})
    classifier = checked_network(path, src, "classifier", classifier, load_classifier)
    generator = checked_network(path, src, "generator", generator, load_generator)
    cfg = info["config"]
    saved = dict(cfg["model"])
    saved.setdefault("predictor_bias", True)     # checkpoints from before the option all had Θ's bias
    try:
        model_cfg = VisCoINConfig.from_dict(saved, where=f"{path}: config.model")
    except ConfigError as exc:
        raise CheckpointError(str(exc)) from exc
    model = VisCoIN(model_cfg, classifier, generator, resolution=int(cfg["resolution"]))
    copy_named_tensors(model, load_checkpoint_tensors(info), where=str(path))
    return model.to(device).eval()

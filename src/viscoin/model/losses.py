"""VisCoIN's training objective, paper eqs. 2-5 (section 3.4).

    L = L_of + L_rec + L_reg
    L_of  = α · CE(g(x), f(x))                                   soft targets: f's probabilities
    L_rec = ‖x − x̃‖²₂ + ‖x − x̃‖₁ + β · LPIPS(x, x̃) + γ · CE(f(x̃), f(x))
    L_reg = δ · ‖Φ(x)‖₁ + L_orth + ‖Ω(Φ(x), Φ'(x))‖²₂

Reductions (ours where the paper is silent), i.e. what each weight multiplies:

    alpha    CE(g(x), f(x)), summed over classes, mean over the batch
    l2, l1   ‖x − x̃‖², ‖x − x̃‖₁: means over pixels, channels and the batch
    beta     the perceptual distance per image (LPIPS: spatial means summed over layers), batch mean
    gamma    CE(f(x̃), f(x)), summed over classes, mean over the batch
    delta    ‖Φ(x)‖₁: mean over the K·3·3 entries and the batch
    latent   ‖Ω(Φ, Φ')‖²: mean over the num_ws·w_dim entries and the batch
    L_orth   ‖VᵀV − I‖²_F: a sum over the K² entries (eq. 5, weight 1; ≈43 at initialisation for
             K = 256 at the paper's size), or with ``orthogonality_reduction: mean`` their mean

Each term is returned separately for logging; `total` is their sum.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F

from viscoin.model.perceptual import PerceptualDistance
from viscoin.model.viscoin_model import TrainingPass
from viscoin.utils.config import ConfigError, DictConfig


@dataclass(frozen=True)
class LossConfig(DictConfig):
    """Loss weights (paper table 3) and switches."""

    alpha: float = 0.5                   # output fidelity
    beta: float = 3.0                    # perceptual (LPIPS)
    gamma: float = 0.1                   # reconstruction-classification CE(f(x̃), f(x))
    delta: float = 0.2                   # sparsity of Φ
    l2: float = 1.0                      # pixel L2 (paper: 1)
    l1: float = 1.0                      # pixel L1 (paper: 1)
    orthogonality: bool = True           # L_orth on Ψ's concept conv (ablation: False)
    orthogonality_reduction: Literal["sum", "mean"] = "sum"  # L_orth over the K² entries: sum (eq. 5) or mean
    latent: float = 1.0                  # weight of ‖Ω offsets‖² (paper: 1)
    perceptual: Literal["lpips", "classifier"] = "lpips"  # LPIPS-VGG (paper) or distances on f's taps (offline)
    lpips_vgg_path: str | None = None    # VGG16 ImageNet weights for LPIPS; None -> torchvision's cache

    def __post_init__(self) -> None:
        for name in ("alpha", "beta", "gamma", "delta", "l2", "l1", "latent"):
            if getattr(self, name) < 0:
                raise ConfigError(f"loss.{name}: expected >= 0, got {getattr(self, name)}")


def soft_cross_entropy(logits: torch.Tensor, target_probs: torch.Tensor) -> torch.Tensor:
    """−Σ_c p_c log softmax(logits)_c per sample [N]."""
    return -(target_probs * F.log_softmax(logits.float(), dim=1)).sum(dim=1)


def viscoin_losses(
    out: TrainingPass,                     # VisCoIN.forward(x)
    x: torch.Tensor,                       # the inputs [N, 3, R, R]
    cfg: LossConfig,
    perceptual: PerceptualDistance | None, # per-sample distance [N] (None when beta = 0)
    orthogonality: torch.Tensor | None,    # Ψ's L_orth (None when switched off)
) -> dict[str, torch.Tensor]:
    """Every term of eqs. 2-5 (batch means), and `total`."""
    p_f = out.feats["logits"].float().softmax(dim=1).detach()        # f(x), frozen target
    x_rec = out.x_rec.float()
    x = x.float()
    terms: dict[str, torch.Tensor] = {}
    terms["output_fidelity"] = cfg.alpha * soft_cross_entropy(out.logits_g, p_f).mean()
    terms["rec_l2"] = cfg.l2 * (x - x_rec).square().mean()
    terms["rec_l1"] = cfg.l1 * (x - x_rec).abs().mean()
    if cfg.beta > 0:
        if perceptual is None:
            raise ValueError("loss.beta > 0 needs a perceptual distance")
        # f's features of x and x̃ are passed along: the classifier-feature distance reuses them, LPIPS ignores them.
        dist = perceptual(x, x_rec, feats_x=out.feats, feats_y=out.feats_rec)
        terms["rec_perceptual"] = cfg.beta * dist.float().mean()
    terms["rec_classification"] = cfg.gamma * soft_cross_entropy(out.feats_rec["logits"], p_f).mean()
    terms["sparsity"] = cfg.delta * out.phi.float().abs().mean()
    if orthogonality is not None:
        terms["orthogonality"] = orthogonality.float()
    terms["latent"] = cfg.latent * out.offsets.float().square().mean()
    terms["total"] = torch.stack(list(terms.values())).sum()
    return terms

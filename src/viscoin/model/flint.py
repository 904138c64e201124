"""FLINT (Parekh et al., NeurIPS 2021) as the VisCoIN paper re-trains it (VisCoIN appendix B.3.1).

``docs/baselines.md``, section "FLINT", describes the published architecture and losses;
marks there: *(code)* read from the authors' release, *(paper)* VisCoIN's changes, *(ours)*.

    x --f (frozen)--> layer3, layer4.-2 --Ψ--> Φ(x) [N, K] >= 0 (a vector: carried as [N, K, 1, 1])
                                               ├--Θ: dropout 0.01 + linear with bias--> g's logits
                                               └--decoder: linear + upsample-convs--> an image [N, 3, R, R]

- Ψ ("Concept extractor"): each tap through a 3×3 conv (bias, ReLU, no BatchNorm) to M channels;
  the strides bring every tap to the size of the smallest (stride 2 for ``layer3`` and 1 for the
  input of ``layer4``'s last block with any ResNet at any resolution *(ours)*); concatenate, 3×3
  conv to 256 + ReLU, adaptive average pool to 3×3, flatten, linear to K, ReLU.
- Θ ("Predictor"): dropout 0.01, then linear K → C with bias.
- Decoder ("Decoder"): linear K → 128·(R/32)², reshape; nearest upsampling ×2 twice; three rounds of
  [3×3 conv + BatchNorm + ReLU, nearest upsampling ×2] (128→128, 128→128, 128→64); a final 3×3
  conv 64→3 with **no** output activation. Its output is unbounded: training pulls it towards the
  input range [-1, 1] (reconstruction MSE), nothing clamps it; whoever shows it clamps it.
- Losses ("Losses"), raw terms (`Flint.loss_terms`) weighted by `FlintLossConfig`'s schedules:
  output fidelity softCE(g, f) with f's logits detached, reconstruction MSE in [-1, 1] (the space
  f reads, *ours*), sparsity mean |Φ|, diversity = per-sample entropy of softmax(|Φ|) minus the
  entropy of softmax(batch-mean |Φ|). f's own cross-entropy drops out (f is frozen).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from viscoin.classifier.model import resolve_tap
from viscoin.model.baseline import (
    BaselinePass,
    Schedule,
    VectorConceptModel,
    check_schedule,
    scheduled,
)
from viscoin.model.contract import MAX_CONCEPTS, check_num_concepts
from viscoin.model.losses import soft_cross_entropy
from viscoin.utils.config import ConfigError, DictConfig

FORMAT = "viscoin.flint"
FUSED_CHANNELS = 256      # the 3×3 conv after the concatenation (code)
POOL_GRID = 3             # adaptive average pool before the linear layer to K (code)
DECODER_CHANNELS = 128    # the decoder's channels before its last round (code)
DECODER_LAST = 64         # channels of its last round (code)
DECODER_FACTOR = 32       # the decoder starts at R/32 and upsamples ×32 (code: 7 → 224)


@dataclass(frozen=True)
class FlintConfig(DictConfig):
    """FLINT's architecture (baselines.md, "FLINT"; K as VisCoIN's, appendix B.3.1)."""

    num_concepts: int = 256                        # K (VisCoIN's K for the dataset)
    channels: int = 256                            # M: channels of each tap after its conv (code: 256 on CUB, 64 on small data)
    dropout: float = 0.01                          # dropout before the predictor's linear layer (code)
    taps: tuple[str, ...] = ("layer3", "layer4.-2")  # f's layers read: layer3's output, the input of layer4's last block

    def __post_init__(self) -> None:
        check_num_concepts(self.num_concepts)
        if isinstance(self.channels, bool) or not 1 <= self.channels <= MAX_CONCEPTS:
            raise ConfigError(f"model.channels: expected in [1, {MAX_CONCEPTS}], got {self.channels}")
        if not 0 <= self.dropout < 1:
            raise ConfigError(f"model.dropout: expected in [0, 1), got {self.dropout}")
        if isinstance(self.taps, str) or not self.taps or not all(isinstance(t, str) for t in self.taps):
            raise ConfigError(f"model.taps: expected a non-empty list of tap names (e.g. [layer3, layer4.-2]), "
                              f"got {self.taps!r}")
        object.__setattr__(self, "taps", tuple(self.taps))


@dataclass(frozen=True)
class FlintLossConfig(DictConfig):
    """Weights of FLINT's loss terms, each a schedule ``[[from, weight], ...]`` (weight 0 before the first start).

    Starts count in the trainer's `schedule_unit` (epochs from 1, or optimiser steps from 1). The
    defaults are the released code's CIFAR-10 schedule (baselines.md, "Losses"; its code has no CUB
    branch): reconstruction 2 always, fidelity 0.6 from epoch 3, sparsity 0.001 from epoch 2 then
    0.15 from epoch 3, diversity 0.2 from epoch 4.
    """

    reconstruction: Schedule = ((1, 2.0),)
    fidelity: Schedule = ((3, 0.6),)
    sparsity: Schedule = ((2, 0.001), (3, 0.15))
    diversity: Schedule = ((4, 0.2),)

    def __post_init__(self) -> None:
        for name in ("reconstruction", "fidelity", "sparsity", "diversity"):
            check_schedule(getattr(self, name), f"loss.{name}")

    def weights(self, position: int) -> dict[str, float]:
        """The weight of each term at 1-based epoch (or step) `position`."""
        return {name: scheduled(getattr(self, name), position)
                for name in ("fidelity", "reconstruction", "sparsity", "diversity")}


class FlintExtractor(nn.Module):
    """Ψ: f's taps -> concepts [N, K] >= 0 (baselines.md, "Concept extractor")."""

    def __init__(
        self,
        tap_shapes: list[tuple[int, int, int]],   # (C, H, W) of each tap at the model's resolution, in tap order
        channels: int,                            # M
        num_concepts: int,                        # K
    ) -> None:
        super().__init__()
        self.size = min(h for _, h, _ in tap_shapes)      # every tap is brought to the smallest tap's side
        self.strides = [math.ceil(h / self.size) for _, h, _ in tap_shapes]   # ResNet50 at 224: 14 -> 2, 7 -> 1
        self.convs = nn.ModuleList(nn.Conv2d(c, channels, 3, stride=s, padding=1)
                                   for (c, _, _), s in zip(tap_shapes, self.strides))
        self.fuse = nn.Conv2d(channels * len(tap_shapes), FUSED_CHANNELS, 3, padding=1)
        self.linear = nn.Linear(FUSED_CHANNELS * POOL_GRID * POOL_GRID, num_concepts)

    def forward(self, maps: list[torch.Tensor]) -> torch.Tensor:
        parts = []
        for conv, m in zip(self.convs, maps):
            h = F.relu(conv(m))
            if h.shape[-2:] != (self.size, self.size):   # an odd side may miss by one after the stride
                h = F.adaptive_avg_pool2d(h, self.size)
            parts.append(h)
        h = F.relu(self.fuse(torch.cat(parts, dim=1)))               # [N, 256, s, s]
        h = F.adaptive_avg_pool2d(h, POOL_GRID).flatten(1)           # [N, 2304]
        return F.relu(self.linear(h))                                # [N, K]


def _conv_round(c_in: int, c_out: int) -> list[nn.Module]:
    return [nn.Conv2d(c_in, c_out, 3, padding=1), nn.BatchNorm2d(c_out), nn.ReLU(),
            nn.Upsample(scale_factor=2, mode="nearest")]


class FlintDecoder(nn.Module):
    """Concepts [N, K] -> image [N, 3, R, R], unbounded (baselines.md, "Decoder"); R a multiple of 32."""

    def __init__(self, num_concepts: int, resolution: int) -> None:
        super().__init__()
        if resolution % DECODER_FACTOR or resolution < DECODER_FACTOR:
            raise ValueError(f"FLINT's decoder: resolution {resolution} is not supported; it starts from R/32 and "
                             f"upsamples ×32, so R must be a multiple of 32 (e.g. 32, 64, 224, 256)")
        self.start = resolution // DECODER_FACTOR
        self.linear = nn.Linear(num_concepts, DECODER_CHANNELS * self.start * self.start)
        self.body = nn.Sequential(
            nn.Upsample(scale_factor=2, mode="nearest"),
            nn.Upsample(scale_factor=2, mode="nearest"),
            *_conv_round(DECODER_CHANNELS, DECODER_CHANNELS),
            *_conv_round(DECODER_CHANNELS, DECODER_CHANNELS),
            *_conv_round(DECODER_CHANNELS, DECODER_LAST),
            nn.Conv2d(DECODER_LAST, 3, 3, padding=1),
        )

    def forward(self, c: torch.Tensor) -> torch.Tensor:
        h = self.linear(c).view(c.shape[0], DECODER_CHANNELS, self.start, self.start)
        return self.body(h)


class Flint(VectorConceptModel):
    """FLINT around a frozen classifier f: Ψ, Θ and the decoder; Φ [N, K, 1, 1]; images [N, 3, R, R] in [-1, 1]."""

    family = "FLINT"
    visualisation = "activation_maximisation"   # how FLINT shows a concept (baselines.md, "Visualising a concept")
    network = "flint"
    format_tag = FORMAT
    config_class = FlintConfig

    def __init__(
        self,
        config: FlintConfig,       # architecture
        classifier: nn.Module,     # f: viscoin.classifier.Classifier (frozen here)
        resolution: int,           # input resolution R of f (a multiple of 32 for the decoder)
    ) -> None:
        super().__init__(config, classifier, resolution, config.dropout)
        arch = classifier.config.arch
        try:
            for tap in config.taps:
                resolve_tap(tap, arch)
        except ConfigError as exc:
            raise ConfigError(f"model.taps: {str(exc).removeprefix('classifier.taps: ')}") from exc
        self.decoder = FlintDecoder(config.num_concepts, resolution)
        self.tap_shapes = self.measure_taps(config.taps)
        self.psi = FlintExtractor(self.tap_shapes, config.channels, config.num_concepts)

    def extract(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        maps, logits = self.classifier_taps(x, self.config.taps)
        return logits, self.psi(maps)

    def describe(self) -> dict[str, str]:
        taps = ", ".join(f"{t} {c}×{h}×{w}" for t, (c, h, w) in zip(self.config.taps, self.tap_shapes))
        return {**super().describe(), "taps read": taps, "tap channels M": str(self.config.channels),
                "decoder": f"linear to 128×{self.decoder.start}×{self.decoder.start}, upsample ×32 with convs, "
                           "no output activation"}

    @staticmethod
    def loss_terms(out: BaselinePass, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """FLINT's raw terms (baselines.md, "Losses"), batch means in float32:
        fidelity softCE(g, f) (f detached), reconstruction MSE in [-1, 1], sparsity mean |Φ|,
        diversity entropy(softmax |Φ|) per sample minus entropy(softmax of the batch-mean |Φ|)."""
        enc = out.encoding
        p_f = enc.logits_f.float().softmax(dim=1).detach()
        a = enc.phi.float().flatten(1).abs()                          # |Φ| [N, K]
        mean = a.mean(dim=0, keepdim=True)                            # [1, K]
        return {
            "fidelity": soft_cross_entropy(enc.logits_g, p_f).mean(),
            "reconstruction": (out.x_rec.float() - x.float()).square().mean(),
            "sparsity": a.mean(),
            "diversity": soft_cross_entropy(a, a.softmax(dim=1)).mean() - soft_cross_entropy(mean, mean.softmax(dim=1)).mean(),
        }


# -- checkpoints (format ``viscoin.flint``: Ψ, Θ and the decoder, the config, f's path and SHA-256) ----------

save_flint = Flint.save_checkpoint             # save_flint(model, out_dir, classifier_path, extra=None) -> folder
read_flint_info = Flint.read_checkpoint_info   # read_flint_info(path) -> checked config.json
load_flint = Flint.load_checkpoint             # load_flint(path, classifier=None, device="cpu"); refuses another f

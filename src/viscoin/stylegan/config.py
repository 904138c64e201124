"""Typed configs of the StyleGAN2-ADA generator and discriminator.

The fields and defaults are those of the official networks' constructor arguments
(NVIDIA's stylegan2-ada-pytorch, Karras et al., NeurIPS 2020), grouped into nested dataclasses instead of kwargs dicts.
`*.from_official(init_kwargs)` reads the ``_init_kwargs`` stored in an official pickle,
`*.to_official()` gives them back.

Every dimension is checked against a sane upper bound (`MAX_RESOLUTION`, ...) when a config is
made, so that a corrupt or hostile file cannot make viscoin allocate terabytes: the bounds are
several times the largest official StyleGAN2-ADA networks.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Literal

from viscoin.utils.config import ConfigError, DictConfig, config_from_dict

Activation = Literal["linear", "relu", "lrelu", "tanh", "sigmoid", "elu", "selu", "softplus", "swish"]

# Upper bounds of the dimensions (official networks: 1024 px, 512 channels and features, 8 layers).
MAX_RESOLUTION = 4096        # img_resolution
MAX_IMG_CHANNELS = 16        # img_channels
MAX_FEATURES = 8192          # z_dim, w_dim, feature widths of the FC layers, cmap_dim
MAX_LABELS = 100_000         # c_dim (classes)
MAX_LAYERS = 64              # FC layers of a mapping network, frozen D layers
MAX_CHANNEL_BASE = 2**20     # channel_base (official: 16384 or 32768)
MAX_CHANNELS = 4096          # channel_max (official: 512)
MAX_KERNEL = 15              # convolution kernel size (official: 3)
MAX_FILTER_TAPS = 16         # resampling filter taps (official: 4)
MAX_FP16_RES = 16            # num_fp16_res
MAX_MBSTD = 4096             # minibatch-stddev group size and channels


def _check_resolution(res: int, name: str) -> None:
    if res < 4 or res & (res - 1) != 0:
        raise ConfigError(f"{name}: expected a power of two >= 4, got {res}")
    if res > MAX_RESOLUTION:
        raise ConfigError(f"{name}: expected a power of two <= {MAX_RESOLUTION}, got {res:,}")


def _check_positive(value: int, name: str, allow_zero: bool = False, upper: int | None = None) -> None:
    if value < 0 or (value == 0 and not allow_zero) or (upper is not None and value > upper):
        low = ">= 0" if allow_zero else "> 0"
        raise ConfigError(f"{name}: expected {low}{f' and <= {upper:,}' if upper is not None else ''}, got {value:,}")


def _check_features(value: int | None, name: str) -> None:
    if value is not None:
        _check_positive(value, name, upper=MAX_FEATURES)


def _check_gain(value: float, name: str) -> None:
    if not (math.isfinite(value) and value > 0):
        raise ConfigError(f"{name}: expected a finite number > 0, got {value}")


def _check_clamp(value: float | None, name: str) -> None:
    if value is not None and not (math.isfinite(value) and value > 0):
        raise ConfigError(f"{name}: expected a finite number > 0 or null, got {value}")


def _check_filter(taps: tuple[int | float, ...], name: str) -> None:
    if not 0 < len(taps) <= MAX_FILTER_TAPS or not all(math.isfinite(t) for t in taps) or sum(taps) == 0:
        raise ConfigError(
            f"{name}: expected 1 to {MAX_FILTER_TAPS} finite taps with a non-zero sum, got {list(taps)[:MAX_FILTER_TAPS]}"
            + (" ..." if len(taps) > MAX_FILTER_TAPS else "")
        )


@dataclass(frozen=True)
class MappingConfig:
    """Mapping network z (+ c) -> w. Official `mapping_kwargs`."""

    num_layers: int = 8                          # number of FC layers (the paper's VisCoIN generators use 2)
    embed_features: int | None = None            # label embedding width; None -> w_dim
    layer_features: int | None = None            # hidden width; None -> w_dim
    activation: Activation = "lrelu"             # activation of the FC layers
    lr_multiplier: float = 0.01                  # equalised learning-rate multiplier of the FC layers
    w_avg_beta: float | None = 0.995             # decay of the tracked average w (None: not tracked)

    def __post_init__(self) -> None:
        _check_positive(self.num_layers, "mapping.num_layers", upper=MAX_LAYERS)
        _check_features(self.embed_features, "mapping.embed_features")
        _check_features(self.layer_features, "mapping.layer_features")
        _check_gain(self.lr_multiplier, "mapping.lr_multiplier")
        if self.w_avg_beta is not None and not 0 <= self.w_avg_beta <= 1:
            raise ConfigError(f"mapping.w_avg_beta: expected a number in [0, 1] or null, got {self.w_avg_beta}")


@dataclass(frozen=True)
class SynthesisConfig:
    """Synthesis network W+ -> image. Official `synthesis_kwargs` (network, block and layer kwargs)."""

    channel_base: int = 32768                    # channels at resolution r: min(channel_base // r, channel_max)
    channel_max: int = 512                       # upper bound of the channel count
    num_fp16_res: int = 0                        # number of highest resolutions that may run in float16
    architecture: Literal["orig", "skip", "resnet"] = "skip"  # how the blocks produce the image
    resample_filter: tuple[float, ...] = (1, 3, 3, 1)  # low-pass taps for up-sampling
    conv_clamp: float | None = None              # clamp of conv outputs (None: no clamp)
    fp16_channels_last: bool = False             # channels-last memory layout for float16 blocks
    kernel_size: int = 3                         # convolution kernel size
    use_noise: bool = True                       # per-layer noise inputs
    activation: Activation = "lrelu"             # activation of the conv layers

    def __post_init__(self) -> None:
        _check_positive(self.channel_base, "synthesis.channel_base", upper=MAX_CHANNEL_BASE)
        _check_positive(self.channel_max, "synthesis.channel_max", upper=MAX_CHANNELS)
        _check_positive(self.num_fp16_res, "synthesis.num_fp16_res", allow_zero=True, upper=MAX_FP16_RES)
        _check_positive(self.kernel_size, "synthesis.kernel_size", upper=MAX_KERNEL)
        _check_filter(self.resample_filter, "synthesis.resample_filter")
        _check_clamp(self.conv_clamp, "synthesis.conv_clamp")


@dataclass(frozen=True)
class GeneratorConfig(DictConfig):
    """StyleGAN2 generator G = synthesis(mapping(z, c))."""

    z_dim: int = 512                             # input latent size (0 allowed when c_dim > 0)
    c_dim: int = 0                               # conditioning label size (0: unconditional)
    w_dim: int = 512                             # intermediate latent size
    img_resolution: int = 256                    # output resolution, a power of two from 4
    img_channels: int = 3                        # output channels
    mapping: MappingConfig = field(default_factory=MappingConfig)
    synthesis: SynthesisConfig = field(default_factory=SynthesisConfig)

    def __post_init__(self) -> None:
        _check_resolution(self.img_resolution, "img_resolution")
        _check_positive(self.z_dim, "z_dim", allow_zero=True, upper=MAX_FEATURES)
        _check_positive(self.c_dim, "c_dim", allow_zero=True, upper=MAX_LABELS)
        _check_positive(self.w_dim, "w_dim", upper=MAX_FEATURES)
        _check_positive(self.img_channels, "img_channels", upper=MAX_IMG_CHANNELS)
        if self.z_dim == 0 and self.c_dim == 0:
            raise ConfigError("z_dim and c_dim: at least one must be > 0")

    @property
    def num_ws(self) -> int:
        """Number of W+ vectors: one per conv layer plus one for the last ToRGB."""
        return 2 * int(math.log2(self.img_resolution)) - 2

    def channels(self, res: int) -> int:
        """Channel count of the block at resolution `res`."""
        return min(self.synthesis.channel_base // res, self.synthesis.channel_max)

    @classmethod
    def from_official(cls, init_kwargs: dict[str, Any], where: str = "G init_kwargs") -> GeneratorConfig:
        """From the `_init_kwargs` of an official `Generator` (any subset of its kwargs)."""
        data = {str(k): v for k, v in dict(init_kwargs).items()}
        mapping = dict(data.pop("mapping_kwargs", None) or {})
        synthesis = dict(data.pop("synthesis_kwargs", None) or {})
        data["mapping"] = mapping
        data["synthesis"] = synthesis
        return config_from_dict(cls, data, where)

    def to_official(self) -> dict[str, Any]:
        """The equivalent official `Generator` init kwargs (full form)."""
        d = self.to_dict()
        return {
            "z_dim": d["z_dim"],
            "c_dim": d["c_dim"],
            "w_dim": d["w_dim"],
            "img_resolution": d["img_resolution"],
            "img_channels": d["img_channels"],
            "mapping_kwargs": d["mapping"],
            "synthesis_kwargs": d["synthesis"],
        }


@dataclass(frozen=True)
class DiscriminatorBlockConfig:
    """Official discriminator `block_kwargs`."""

    activation: Activation = "lrelu"             # activation of the conv layers
    resample_filter: tuple[float, ...] = (1, 3, 3, 1)  # low-pass taps for down-sampling
    fp16_channels_last: bool = False             # channels-last memory layout for float16 blocks
    freeze_layers: int = 0                       # first layers stored as buffers instead of parameters

    def __post_init__(self) -> None:
        _check_filter(self.resample_filter, "block.resample_filter")
        _check_positive(self.freeze_layers, "block.freeze_layers", allow_zero=True, upper=MAX_LAYERS)


@dataclass(frozen=True)
class DiscriminatorMappingConfig:
    """Label mapping of a conditional discriminator (official D `mapping_kwargs`). No w_avg."""

    num_layers: int = 8                          # number of FC layers
    embed_features: int | None = None            # label embedding width; None -> cmap_dim
    layer_features: int | None = None            # hidden width; None -> cmap_dim
    activation: Activation = "lrelu"             # activation of the FC layers
    lr_multiplier: float = 0.01                  # equalised learning-rate multiplier

    def __post_init__(self) -> None:
        _check_positive(self.num_layers, "mapping.num_layers", allow_zero=True, upper=MAX_LAYERS)
        _check_features(self.embed_features, "mapping.embed_features")
        _check_features(self.layer_features, "mapping.layer_features")
        _check_gain(self.lr_multiplier, "mapping.lr_multiplier")


@dataclass(frozen=True)
class EpilogueConfig:
    """Official discriminator `epilogue_kwargs` (the 4x4 head)."""

    mbstd_group_size: int | None = 4             # minibatch-stddev group size (None: whole batch)
    mbstd_num_channels: int = 1                  # number of stddev features appended (0: no mbstd)
    activation: Activation = "lrelu"             # activation of conv and fc

    def __post_init__(self) -> None:
        if self.mbstd_group_size is not None:
            _check_positive(self.mbstd_group_size, "epilogue.mbstd_group_size", upper=MAX_MBSTD)
        _check_positive(self.mbstd_num_channels, "epilogue.mbstd_num_channels", allow_zero=True, upper=MAX_MBSTD)


@dataclass(frozen=True)
class DiscriminatorConfig(DictConfig):
    """StyleGAN2 discriminator (official default: 'resnet' architecture)."""

    c_dim: int = 0                               # conditioning label size (0: unconditional)
    img_resolution: int = 256                    # input resolution, a power of two from 4
    img_channels: int = 3                        # input channels
    architecture: Literal["orig", "skip", "resnet"] = "resnet"  # block architecture
    channel_base: int = 32768                    # channels at resolution r: min(channel_base // r, channel_max)
    channel_max: int = 512                       # upper bound of the channel count
    num_fp16_res: int = 0                        # number of highest resolutions that may run in float16
    conv_clamp: float | None = None              # clamp of conv outputs (None: no clamp)
    cmap_dim: int | None = None                  # label projection width; None -> channels at 4x4
    block: DiscriminatorBlockConfig = field(default_factory=DiscriminatorBlockConfig)
    mapping: DiscriminatorMappingConfig = field(default_factory=DiscriminatorMappingConfig)
    epilogue: EpilogueConfig = field(default_factory=EpilogueConfig)

    def __post_init__(self) -> None:
        _check_resolution(self.img_resolution, "img_resolution")
        _check_positive(self.c_dim, "c_dim", allow_zero=True, upper=MAX_LABELS)
        _check_positive(self.img_channels, "img_channels", upper=MAX_IMG_CHANNELS)
        _check_positive(self.channel_base, "channel_base", upper=MAX_CHANNEL_BASE)
        _check_positive(self.channel_max, "channel_max", upper=MAX_CHANNELS)
        _check_positive(self.num_fp16_res, "num_fp16_res", allow_zero=True, upper=MAX_FP16_RES)
        _check_features(self.cmap_dim, "cmap_dim")
        _check_clamp(self.conv_clamp, "conv_clamp")

    def channels(self, res: int) -> int:
        """Channel count at resolution `res`."""
        return min(self.channel_base // res, self.channel_max)

    @property
    def resolved_cmap_dim(self) -> int:
        """Width of the label projection (0 for an unconditional D)."""
        if self.c_dim == 0:
            return 0
        return self.channels(4) if self.cmap_dim is None else self.cmap_dim

    @classmethod
    def from_official(cls, init_kwargs: dict[str, Any], where: str = "D init_kwargs") -> DiscriminatorConfig:
        """From the `_init_kwargs` of an official `Discriminator` (any subset of its kwargs)."""
        data = {str(k): v for k, v in dict(init_kwargs).items()}
        data["block"] = dict(data.pop("block_kwargs", None) or {})
        data["mapping"] = dict(data.pop("mapping_kwargs", None) or {})
        data["epilogue"] = dict(data.pop("epilogue_kwargs", None) or {})
        return config_from_dict(cls, data, where)

    def to_official(self) -> dict[str, Any]:
        """The equivalent official `Discriminator` init kwargs (full form)."""
        d = self.to_dict()
        d["block_kwargs"] = d.pop("block")
        d["mapping_kwargs"] = d.pop("mapping")
        d["epilogue_kwargs"] = d.pop("epilogue")
        return d

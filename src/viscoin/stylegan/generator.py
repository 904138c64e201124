"""StyleGAN2 generator (Karras et al. 2020), equivalent to the stylegan2-ada-pytorch networks.

G(z, c) = synthesis(mapping(z, c)). The mapping network lives in `layers.py` (it is shared
with the conditional discriminator); this file holds the synthesis side, in dependency order:
`SynthesisLayer` -> `ToRGBLayer` -> `SynthesisBlock` -> `SynthesisNetwork` -> `Generator`.

Parameter names and state-dict order match the official networks
(stylegan2-ada-pytorch, Karras et al., NeurIPS 2020), and the forward pass follows the op order
of the official float32 reference, so official weights give the same images on the CPU (bit-identical
where the goldens were made; other CPUs round float32 matrix products differently in the last bits).

Precision: float32 by default, on every device. `fp16=True` runs the blocks at the
`num_fp16_res` highest resolutions in float16, as the official training does.

Noise: `noise_mode=None` (our default) means 'random' in training mode and 'const' in eval mode,
so a frozen G is deterministic; 'const', 'random' and 'none' can be asked for explicitly.

Section numbers (§) refer to ``docs/stylegan2-ada-format.md``, the clean-room description of the
official networks and their checkpoint format in this repository.
"""

from __future__ import annotations

import math

import numpy as np
import torch
from torch import nn

from viscoin.stylegan import ops
from viscoin.stylegan.config import GeneratorConfig
from viscoin.stylegan.layers import Conv2dLayer, FullyConnectedLayer, MappingNetwork

NOISE_MODES = ("const", "random", "none")


def _resolve_noise_mode(noise_mode: str | None, training: bool) -> str:
    if noise_mode is None:
        return "random" if training else "const"
    if noise_mode not in NOISE_MODES:
        raise ValueError(f"noise_mode: expected one of {NOISE_MODES} or None, got {noise_mode!r}")
    return noise_mode


class SynthesisLayer(nn.Module):
    """Modulated 3x3 conv + noise + bias/activation (format spec §3.7)."""

    def __init__(
        self,
        in_channels: int,                          # input channels
        out_channels: int,                         # output channels
        w_dim: int,                                # intermediate latent size
        resolution: int,                           # output resolution
        kernel_size: int = 3,                      # convolution kernel size
        up: int = 1,                               # up-sampling factor (2 for each block's conv0)
        use_noise: bool = True,                    # add a per-pixel noise input
        activation: str = "lrelu",                 # activation function
        resample_filter: tuple[float, ...] = (1, 3, 3, 1),  # low-pass taps for up-sampling
        conv_clamp: float | None = None,           # clamp of the output (None: no clamp)
        channels_last: bool = False,               # store the weight channels-last
    ) -> None:
        super().__init__()
        self.in_channels = in_channels
        self.out_channels = out_channels
        self.resolution = resolution
        self.up = up
        self.use_noise = use_noise
        self.activation = activation
        self.conv_clamp = conv_clamp
        self.padding = kernel_size // 2
        self.act_gain = ops.activation_gain(activation)
        memory_format = torch.channels_last if channels_last else torch.contiguous_format
        # Creation order gives the official state-dict order: weight, noise_strength, bias,
        # resample_filter, noise_const, affine.*.
        self.weight = nn.Parameter(
            torch.randn([out_channels, in_channels, kernel_size, kernel_size]).to(memory_format=memory_format)
        )
        if use_noise:
            self.noise_strength = nn.Parameter(torch.zeros([]))
        self.bias = nn.Parameter(torch.zeros([out_channels]))
        self.register_buffer("resample_filter", ops.setup_filter(resample_filter))
        if use_noise:
            self.register_buffer("noise_const", torch.randn([resolution, resolution]))
        self.affine = FullyConnectedLayer(w_dim, in_channels, bias_init=1)

    def forward(
        self,
        x: torch.Tensor,                # [N, in_channels, resolution // up, resolution // up]
        w: torch.Tensor,                # [N, w_dim]
        noise_mode: str = "const",      # 'const', 'random' or 'none'
        fused_modconv: bool = True,     # per-sample weights (True) or scaled activations (False)
        gain: float = 1.0,              # extra output gain (resnet blocks use sqrt(0.5))
    ) -> torch.Tensor:
        n = x.shape[0]
        in_res = self.resolution // self.up
        assert x.shape[1:] == (self.in_channels, in_res, in_res), (x.shape, self.in_channels, in_res)
        styles = self.affine(w)  # [N, in_channels]

        noise = None
        if self.use_noise and noise_mode == "random":
            noise = torch.randn([n, 1, self.resolution, self.resolution], device=x.device) * self.noise_strength
        elif self.use_noise and noise_mode == "const":
            noise = self.noise_const * self.noise_strength

        x = ops.modulated_conv2d(
            x,
            self.weight,
            styles,
            noise=noise,
            up=self.up,
            padding=self.padding,
            resample_filter=self.resample_filter,
            fused=fused_modconv,
        )
        act_gain = self.act_gain * gain
        act_clamp = self.conv_clamp * gain if self.conv_clamp is not None else None
        return ops.bias_act(x, self.bias.to(x.dtype), self.activation, gain=act_gain, clamp=act_clamp)

    def extra_repr(self) -> str:
        return (
            f"in_channels={self.in_channels}, out_channels={self.out_channels}, "
            f"resolution={self.resolution}, up={self.up}, activation={self.activation}"
        )


class ToRGBLayer(nn.Module):
    """Modulated 1x1 conv to image channels, no demodulation (format spec §3.8)."""

    def __init__(
        self,
        in_channels: int,                  # input channels
        out_channels: int,                 # image channels
        w_dim: int,                        # intermediate latent size
        kernel_size: int = 1,              # convolution kernel size
        conv_clamp: float | None = None,   # clamp of the output (None: no clamp)
        channels_last: bool = False,       # store the weight channels-last
    ) -> None:
        super().__init__()
        self.in_channels = in_channels
        self.conv_clamp = conv_clamp
        memory_format = torch.channels_last if channels_last else torch.contiguous_format
        self.weight = nn.Parameter(
            torch.randn([out_channels, in_channels, kernel_size, kernel_size]).to(memory_format=memory_format)
        )
        self.bias = nn.Parameter(torch.zeros([out_channels]))
        self.affine = FullyConnectedLayer(w_dim, in_channels, bias_init=1)
        self.weight_gain = 1 / math.sqrt(in_channels * kernel_size**2)

    def forward(
        self,
        x: torch.Tensor,               # [N, in_channels, H, W]
        w: torch.Tensor,               # [N, w_dim]
        fused_modconv: bool = True,    # per-sample weights (True) or scaled activations (False)
    ) -> torch.Tensor:
        styles = self.affine(w) * self.weight_gain
        x = ops.modulated_conv2d(x, self.weight, styles, demodulate=False, fused=fused_modconv)
        return ops.bias_act(x, self.bias.to(x.dtype), clamp=self.conv_clamp)


class SynthesisBlock(nn.Module):
    """One resolution of the synthesis network: (conv0 with 2x up-sampling,) conv1, ToRGB (§3.8)."""

    def __init__(
        self,
        in_channels: int,                          # input channels, 0 for the 4x4 block (learned constant)
        out_channels: int,                         # output channels
        w_dim: int,                                # intermediate latent size
        resolution: int,                           # resolution of this block
        img_channels: int,                         # image channels
        is_last: bool,                             # last block (always has a ToRGB)
        architecture: str = "skip",                # 'orig', 'skip' or 'resnet'
        resample_filter: tuple[float, ...] = (1, 3, 3, 1),  # low-pass taps
        conv_clamp: float | None = None,           # clamp of conv outputs
        use_fp16: bool = False,                    # this block may run in float16
        fp16_channels_last: bool = False,          # channels-last layout when in float16
        kernel_size: int = 3,                      # conv kernel size
        use_noise: bool = True,                    # noise inputs
        activation: str = "lrelu",                 # activation function
    ) -> None:
        super().__init__()
        if architecture not in ("orig", "skip", "resnet"):
            raise ValueError(f"architecture: expected 'orig', 'skip' or 'resnet', got {architecture!r}")
        self.in_channels = in_channels
        self.out_channels = out_channels
        self.resolution = resolution
        self.img_channels = img_channels
        self.is_last = is_last
        self.architecture = architecture
        self.use_fp16 = use_fp16
        self.channels_last = use_fp16 and fp16_channels_last
        self.register_buffer("resample_filter", ops.setup_filter(resample_filter))
        layer_kwargs = dict(
            kernel_size=kernel_size,
            use_noise=use_noise,
            activation=activation,
            resample_filter=resample_filter,
            conv_clamp=conv_clamp,
            channels_last=self.channels_last,
        )
        self.num_conv = 0
        self.num_torgb = 0
        if in_channels == 0:
            self.const = nn.Parameter(torch.randn([out_channels, resolution, resolution]))
        else:
            self.conv0 = SynthesisLayer(in_channels, out_channels, w_dim, resolution, up=2, **layer_kwargs)
            self.num_conv += 1
        self.conv1 = SynthesisLayer(out_channels, out_channels, w_dim, resolution, **layer_kwargs)
        self.num_conv += 1
        if is_last or architecture == "skip":
            self.torgb = ToRGBLayer(
                out_channels, img_channels, w_dim, conv_clamp=conv_clamp, channels_last=self.channels_last
            )
            self.num_torgb += 1
        if in_channels != 0 and architecture == "resnet":
            self.skip = Conv2dLayer(
                in_channels,
                out_channels,
                kernel_size=1,
                bias=False,
                up=2,
                resample_filter=resample_filter,
                channels_last=self.channels_last,
            )

    def forward(
        self,
        x: torch.Tensor | None,          # [N, in_channels, res/2, res/2] features, None for the 4x4 block
        img: torch.Tensor | None,        # [N, img_channels, res/2, res/2] running image, or None
        ws: torch.Tensor,                # [N, num_conv + num_torgb, w_dim]
        noise_mode: str = "const",       # 'const', 'random' or 'none'
        fp16: bool = False,              # run in float16 if this block is a float16 block
        fused_modconv: bool | None = None,  # None: fused in eval mode for float32 (or batch 1)
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        n = ws.shape[0]
        assert ws.shape[1] == self.num_conv + self.num_torgb, (ws.shape, self.num_conv, self.num_torgb)
        w_iter = iter(ws.unbind(dim=1))
        dtype = torch.float16 if (self.use_fp16 and fp16) else torch.float32
        memory_format = torch.channels_last if (self.channels_last and dtype == torch.float16) else None
        if fused_modconv is None:
            fused_modconv = (not self.training) and (dtype == torch.float32 or n == 1)

        if self.in_channels == 0:
            x = self.const.to(dtype).unsqueeze(0).repeat([n, 1, 1, 1])
        else:
            assert x is not None
            half = self.resolution // 2
            assert x.shape[1:] == (self.in_channels, half, half), (x.shape, self.in_channels, half)
            x = x.to(dtype)
        if memory_format is not None:
            x = x.to(memory_format=memory_format)

        if self.in_channels == 0:
            x = self.conv1(x, next(w_iter), noise_mode=noise_mode, fused_modconv=fused_modconv)
        elif self.architecture == "resnet":
            y = self.skip(x, gain=math.sqrt(0.5))
            x = self.conv0(x, next(w_iter), noise_mode=noise_mode, fused_modconv=fused_modconv)
            x = self.conv1(x, next(w_iter), noise_mode=noise_mode, fused_modconv=fused_modconv, gain=math.sqrt(0.5))
            x = y.add_(x)
        else:
            x = self.conv0(x, next(w_iter), noise_mode=noise_mode, fused_modconv=fused_modconv)
            x = self.conv1(x, next(w_iter), noise_mode=noise_mode, fused_modconv=fused_modconv)

        if img is not None and self.architecture == "skip":
            half = self.resolution // 2
            assert img.shape[1:] == (self.img_channels, half, half), (img.shape, self.img_channels, half)
            img = ops.upsample2d(img, self.resample_filter)
        if self.num_torgb:
            y = self.torgb(x, next(w_iter), fused_modconv=fused_modconv)
            y = y.to(dtype=torch.float32, memory_format=torch.contiguous_format)
            img = img.add_(y) if img is not None else y

        # Under autocast (VisCoIN's bf16 training) the convs choose their own dtype.
        assert x.dtype == dtype or torch.is_autocast_enabled(x.device.type), (x.dtype, dtype)
        return x, img

    def extra_repr(self) -> str:
        return f"resolution={self.resolution}, architecture={self.architecture}, use_fp16={self.use_fp16}"


class SynthesisNetwork(nn.Module):
    """W+ -> image: a chain of synthesis blocks from 4x4 up to `img_resolution`."""

    def __init__(self, config: GeneratorConfig) -> None:
        super().__init__()
        syn = config.synthesis
        self.w_dim = config.w_dim
        self.img_resolution = config.img_resolution
        self.img_resolution_log2 = int(math.log2(config.img_resolution))
        self.img_channels = config.img_channels
        self.block_resolutions = [2**i for i in range(2, self.img_resolution_log2 + 1)]
        fp16_resolution = max(2 ** (self.img_resolution_log2 + 1 - syn.num_fp16_res), 8)

        self.num_ws = 0
        for res in self.block_resolutions:
            in_channels = config.channels(res // 2) if res > 4 else 0
            block = SynthesisBlock(
                in_channels,
                config.channels(res),
                w_dim=config.w_dim,
                resolution=res,
                img_channels=config.img_channels,
                is_last=res == self.img_resolution,
                architecture=syn.architecture,
                resample_filter=syn.resample_filter,
                conv_clamp=syn.conv_clamp,
                use_fp16=res >= fp16_resolution,
                fp16_channels_last=syn.fp16_channels_last,
                kernel_size=syn.kernel_size,
                use_noise=syn.use_noise,
                activation=syn.activation,
            )
            self.num_ws += block.num_conv
            if res == self.img_resolution:
                self.num_ws += block.num_torgb
            setattr(self, f"b{res}", block)
        assert self.num_ws == config.num_ws, (self.num_ws, config.num_ws)

    def forward(
        self,
        ws: torch.Tensor,                    # [N, num_ws, w_dim] (W+) or [N, w_dim] (one w for every layer)
        noise_mode: str | None = None,       # 'const', 'random', 'none'; None: random if training else const
        fp16: bool = False,                  # float16 for the high-resolution blocks
        fused_modconv: bool | None = None,   # None: the official automatic choice
    ) -> torch.Tensor:                       # [N, img_channels, R, R] float32, nominally in [-1, 1]
        if ws.ndim == 2:
            if ws.shape[1] != self.w_dim:
                raise ValueError(f"w: expected shape [N, {self.w_dim}], got {list(ws.shape)}")
            ws = ws.unsqueeze(1).repeat([1, self.num_ws, 1])
        if ws.ndim != 3 or ws.shape[1:] != (self.num_ws, self.w_dim):
            raise ValueError(
                f"ws: expected shape [N, {self.num_ws}, {self.w_dim}] (W+) or [N, {self.w_dim}], got {list(ws.shape)}"
            )
        noise_mode = _resolve_noise_mode(noise_mode, self.training)
        ws = ws.to(torch.float32)
        x = img = None
        w_idx = 0
        for res in self.block_resolutions:
            block: SynthesisBlock = getattr(self, f"b{res}")
            block_ws = ws.narrow(1, w_idx, block.num_conv + block.num_torgb)
            x, img = block(x, img, block_ws, noise_mode=noise_mode, fp16=fp16, fused_modconv=fused_modconv)
            w_idx += block.num_conv
        assert img is not None and img.shape[1:] == (self.img_channels, self.img_resolution, self.img_resolution)
        return img


class Generator(nn.Module):
    """StyleGAN2 generator. Build it from a `GeneratorConfig`; load weights with `viscoin.stylegan.load_generator`.

    Exposes `z_dim`, `c_dim`, `w_dim`, `num_ws`, `img_resolution`, `img_channels` and `w_avg`.
    Runs from z (`forward`), from w (`synthesis(w)`, [N, w_dim]) and from W+
    (`synthesis(ws)`, [N, num_ws, w_dim]); gradients flow from the image back to W+.
    """

    def __init__(self, config: GeneratorConfig) -> None:
        super().__init__()
        if not isinstance(config, GeneratorConfig):
            raise TypeError(f"Generator expects a GeneratorConfig, got {type(config).__name__}")
        self.config = config
        self.z_dim = config.z_dim
        self.c_dim = config.c_dim
        self.w_dim = config.w_dim
        self.img_resolution = config.img_resolution
        self.img_channels = config.img_channels
        # Created before `mapping`: the official state dict lists synthesis.* first.
        self.synthesis = SynthesisNetwork(config)
        self.num_ws = self.synthesis.num_ws
        m = config.mapping
        self.mapping = MappingNetwork(
            z_dim=config.z_dim,
            c_dim=config.c_dim,
            w_dim=config.w_dim,
            num_ws=self.num_ws,
            num_layers=m.num_layers,
            embed_features=m.embed_features,
            layer_features=m.layer_features,
            activation=m.activation,
            lr_multiplier=m.lr_multiplier,
            w_avg_beta=m.w_avg_beta,
        )

    @property
    def w_avg(self) -> torch.Tensor:
        """[w_dim] tracked average of the mapping output (the truncation centre; VisCoIN's w̄)."""
        if not hasattr(self.mapping, "w_avg"):
            raise AttributeError("this generator does not track w_avg (mapping.w_avg_beta is None)")
        return self.mapping.w_avg

    @property
    def device(self) -> torch.device:
        return self.synthesis.b4.const.device

    def forward(
        self,
        z: torch.Tensor,                         # [N, z_dim] latents
        c: torch.Tensor | None = None,           # [N, c_dim] labels (conditional generators only)
        truncation_psi: float = 1.0,             # truncation towards w_avg (1 = none)
        truncation_cutoff: int | None = None,    # truncate only the first this many ws
        noise_mode: str | None = None,           # 'const', 'random', 'none'; None: random if training else const
        fp16: bool = False,                      # float16 for the high-resolution blocks
        fused_modconv: bool | None = None,       # None: the official automatic choice
        update_w_avg: bool = True,               # in training mode, track w_avg from this batch
    ) -> torch.Tensor:                           # [N, img_channels, R, R]
        ws = self.map(z, c, truncation_psi, truncation_cutoff, update_w_avg=update_w_avg)
        return self.synthesis(ws, noise_mode=noise_mode, fp16=fp16, fused_modconv=fused_modconv)

    def map(
        self,
        z: torch.Tensor,
        c: torch.Tensor | None = None,
        truncation_psi: float = 1.0,
        truncation_cutoff: int | None = None,
        update_w_avg: bool = True,
    ) -> torch.Tensor:
        """z (+ c) -> W+ [N, num_ws, w_dim], with input checks that name the problem."""
        if self.z_dim > 0 and (z is None or z.ndim != 2 or z.shape[1] != self.z_dim):
            raise ValueError(f"z: expected shape [N, {self.z_dim}], got {None if z is None else list(z.shape)}")
        if self.c_dim > 0:
            if c is None or c.ndim != 2 or c.shape[1] != self.c_dim:
                raise ValueError(
                    f"c: this generator is conditional and expects labels of shape [N, {self.c_dim}], "
                    f"got {None if c is None else list(c.shape)}"
                )
        elif c is not None and c.numel() > 0:
            raise ValueError(f"c: this generator is unconditional (c_dim=0), got labels of shape {list(c.shape)}")
        return self.mapping(
            z, c if self.c_dim > 0 else None, truncation_psi, truncation_cutoff, update_w_avg=update_w_avg
        )


def z_from_seed(seed: int, z_dim: int) -> torch.Tensor:
    """[1, z_dim] float32 latent of `seed`, drawn as NVIDIA's `generate.py` does (numpy RandomState)."""
    return torch.from_numpy(np.random.RandomState(seed).randn(1, z_dim)).to(torch.float32)


def random_labels(
    c_dim: int,                              # the generator's label size (0: unconditional)
    n: int,                                  # number of labels
    device: torch.device | str = "cpu",
    generator: torch.Generator | None = None,
) -> torch.Tensor | None:
    """[n, c_dim] one-hot labels of classes drawn uniformly, or None for an unconditional generator.

    VisCoIN's training batch (paper section 3.4) adds synthetic images G(mapping(z)),
    z ~ N(0, I); a class-conditional G also needs a class for each z, every class equally likely.
    """
    if c_dim == 0:
        return None
    classes = torch.randint(c_dim, (n,), generator=generator)
    return torch.nn.functional.one_hot(classes, c_dim).to(device=device, dtype=torch.float32)

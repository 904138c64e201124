"""StyleGAN2-ADA discriminator (clean-room; Karras et al., CVPR 2020 and NeurIPS 2020).

Layout: a chain of `DiscriminatorBlock`s ``b{R}``, ``b{R/2}``, ..., ``b8`` that each halve the
resolution, an optional label `MappingNetwork` (conditional D only), and the 4x4 head
`DiscriminatorEpilogue` ``b4`` (minibatch stddev, conv, fc, out, label projection).

Module, parameter and buffer names, and the state-dict order, are those of the official
networks (training spec §1.7), so an official state dict loads with ``strict=True``. The op
order follows the spec (and ``stylegan2-ada-format.md`` §3), which makes the float32 CPU forward
agree with the official ``force_fp32=True`` forward bit for bit.

Section numbers (§) refer to ``docs/stylegan2-ada-training.md``, the clean-room description of the
official networks and training in this repository.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from viscoin.stylegan import ops
from viscoin.stylegan.config import DiscriminatorConfig
from viscoin.stylegan.layers import Conv2dLayer, FullyConnectedLayer, MappingNetwork

_ARCHITECTURES = ("orig", "skip", "resnet")


def _mbstd_group(group_size: int | None, batch: int) -> int:
    """Effective minibatch-stddev group size: min(group_size, N), or N when group_size is None."""
    return batch if group_size is None else min(group_size, batch)


def _check_mbstd_batch(group_size: int | None, batch: int) -> None:
    """Raise a ValueError when the batch cannot be split into minibatch-stddev groups."""
    group = _mbstd_group(group_size, batch)
    if batch < 1 or batch % group != 0:
        raise ValueError(
            f"batch size {batch} is not divisible by the minibatch-stddev group size {group} "
            f"(mbstd_group_size={group_size}; the group is min(mbstd_group_size, batch)). "
            f"Use a batch size that is a multiple of {group}, or change epilogue.mbstd_group_size."
        )


class MinibatchStdLayer(nn.Module):
    """Appends the per-group standard deviation of the features as extra channels (training spec §1.4, step 2).

    The batch is viewed as [G, N/G, ...] with the group index outermost, so sample i belongs to group
    i mod (N/G): groups are strided (samples j, j + N/G, j + 2N/G, ...), not consecutive.
    """

    def __init__(
        self,
        group_size: int | None,   # samples per group; None = the whole batch (clipped to N at run time)
        num_channels: int = 1,    # number of stddev features F appended (the C channels are split into F parts)
    ) -> None:
        super().__init__()
        if group_size is not None and group_size < 1:
            raise ValueError(f"mbstd group_size must be >= 1 or None, got {group_size}")
        if num_channels < 1:
            raise ValueError(f"mbstd num_channels must be >= 1, got {num_channels}")
        self.group_size = group_size
        self.num_channels = num_channels

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        assert x.ndim == 4, x.shape
        n, c, h, w = x.shape                                   # x: [N, C, H, W]
        f = self.num_channels
        if c % f != 0:
            raise ValueError(f"minibatch stddev: {c} channels cannot be split into {f} stddev features")
        _check_mbstd_batch(self.group_size, n)
        g = _mbstd_group(self.group_size, n)
        y = x.reshape(g, -1, f, c // f, h, w)                 # [G, n, F, C/F, H, W]; sample i = (i // n, i % n)
        y = y - y.mean(dim=0)                                  # deviation from the group mean
        y = y.square().mean(dim=0)                             # [n, F, C/F, H, W] biased variance
        y = (y + 1e-8).sqrt()                                  # stddev
        y = y.mean(dim=[2, 3, 4])                              # [n, F] average over channels and pixels
        y = y.reshape(-1, f, 1, 1)                             # [n, F, 1, 1]
        y = y.repeat(g, 1, h, w)                               # [N, F, H, W]; sample i gets row i mod n
        return torch.cat([x, y], dim=1)                        # [N, C + F, H, W]

    def extra_repr(self) -> str:
        return f"group_size={self.group_size}, num_channels={self.num_channels}"


class DiscriminatorBlock(nn.Module):
    """One resolution level r -> r/2 of the discriminator (training spec §1.3).

    Layers, in creation (and layer-index) order: ``fromrgb`` (first block, or every block of the
    'skip' architecture), ``conv0`` (3x3), ``conv1`` (3x3, down 2), ``skip`` ('resnet' only: 1x1,
    down 2, no bias, linear). Layer k < freeze_layers (k counted across all blocks) is frozen.
    """

    def __init__(
        self,
        in_channels: int,                             # channels of the incoming features; 0 for the first block
        tmp_channels: int,                            # channels at this resolution (fromrgb/conv0 output)
        out_channels: int,                            # channels at half this resolution (block output)
        resolution: int,                              # input resolution r of this block
        img_channels: int,                            # channels of the input image
        first_layer_idx: int,                         # global index of this block's first layer (for freezing)
        architecture: str = "resnet",                 # 'orig', 'skip' or 'resnet'
        activation: str = "lrelu",                    # activation of the conv layers
        resample_filter: tuple[float, ...] = (1, 3, 3, 1),  # low-pass taps for down-sampling
        conv_clamp: float | None = None,              # clamp of conv outputs (None: no clamp)
        use_fp16: bool = False,                       # may run in float16 (when the forward asks for it)
        fp16_channels_last: bool = False,             # channels-last layout in float16 mode
        freeze_layers: int = 0,                       # layers with global index below this are frozen
    ) -> None:
        assert in_channels in (0, tmp_channels), (in_channels, tmp_channels)
        if architecture not in _ARCHITECTURES:
            raise ValueError(f"unknown architecture {architecture!r}; expected one of {list(_ARCHITECTURES)}")
        super().__init__()
        self.in_channels = in_channels
        self.tmp_channels = tmp_channels
        self.out_channels = out_channels
        self.resolution = resolution
        self.img_channels = img_channels
        self.first_layer_idx = first_layer_idx
        self.architecture = architecture
        self.use_fp16 = use_fp16
        self.channels_last = use_fp16 and fp16_channels_last
        self.register_buffer("resample_filter", ops.setup_filter(resample_filter))

        self.num_layers = 0

        def next_trainable() -> bool:
            trainable = first_layer_idx + self.num_layers >= freeze_layers
            self.num_layers += 1
            return trainable

        if in_channels == 0 or architecture == "skip":
            self.fromrgb = Conv2dLayer(
                img_channels, tmp_channels, kernel_size=1, activation=activation, conv_clamp=conv_clamp,
                channels_last=self.channels_last, trainable=next_trainable(),
            )
        self.conv0 = Conv2dLayer(
            tmp_channels, tmp_channels, kernel_size=3, activation=activation, conv_clamp=conv_clamp,
            channels_last=self.channels_last, trainable=next_trainable(),
        )
        self.conv1 = Conv2dLayer(
            tmp_channels, out_channels, kernel_size=3, activation=activation, down=2,
            resample_filter=resample_filter, conv_clamp=conv_clamp,
            channels_last=self.channels_last, trainable=next_trainable(),
        )
        if architecture == "resnet":
            self.skip = Conv2dLayer(
                tmp_channels, out_channels, kernel_size=1, bias=False, down=2,
                resample_filter=resample_filter, channels_last=self.channels_last, trainable=next_trainable(),
            )

    def forward(
        self,
        x: torch.Tensor | None,   # [N, in_channels, r, r] features; None for the first block
        img: torch.Tensor | None, # [N, img_channels, r, r] image (first block, and every block for 'skip')
        fp16: bool = False,       # run in float16 if this block is an fp16 block
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        r = self.resolution
        dtype = torch.float16 if self.use_fp16 and fp16 else torch.float32
        memory_format = torch.channels_last if self.channels_last and fp16 else torch.contiguous_format

        if x is not None:
            assert x.shape[1:] == (self.in_channels, r, r), (x.shape, self.in_channels, r)
            x = x.to(dtype=dtype, memory_format=memory_format)

        # From the image: first block (all architectures) and every block of 'skip'.
        if self.in_channels == 0 or self.architecture == "skip":
            assert img is not None and img.shape[1:] == (self.img_channels, r, r), (
                None if img is None else img.shape, self.img_channels, r,
            )
            img = img.to(dtype=dtype, memory_format=memory_format)
            y = self.fromrgb(img)                                   # [N, tmp, r, r]
            x = x + y if x is not None else y
            img = ops.downsample2d(img, self.resample_filter) if self.architecture == "skip" else None
        assert x is not None

        # Main path.
        if self.architecture == "resnet":
            y = self.skip(x, gain=math.sqrt(0.5))                   # [N, out, r/2, r/2]
            x = self.conv0(x)                                       # [N, tmp, r, r]
            x = self.conv1(x, gain=math.sqrt(0.5))                  # [N, out, r/2, r/2]
            x = y + x
        else:
            x = self.conv0(x)                                       # [N, tmp, r, r]
            x = self.conv1(x)                                       # [N, out, r/2, r/2]

        assert x.dtype == dtype and x.shape[1:] == (self.out_channels, r // 2, r // 2), (x.dtype, x.shape)
        return x, img

    def extra_repr(self) -> str:
        return (
            f"resolution={self.resolution}, architecture={self.architecture}, "
            f"channels={self.in_channels}->{self.tmp_channels}->{self.out_channels}, use_fp16={self.use_fp16}"
        )


class DiscriminatorEpilogue(nn.Module):
    """The 4x4 head ``b4`` (training spec §1.4). Always runs in float32.

    (fromrgb for 'skip') -> minibatch stddev -> conv 3x3 -> fc -> out -> projection on cmap.
    Extension beyond the official network: for img_resolution 4 there is no block before the
    head, so the head then owns a ``fromrgb`` for every architecture (the official D cannot run at 4 px).
    """

    def __init__(
        self,
        in_channels: int,                   # channels C at 4x4
        cmap_dim: int,                      # label projection width; 0 = unconditional
        resolution: int,                    # must be 4
        img_channels: int,                  # channels of the input image
        architecture: str = "resnet",       # 'orig', 'skip' or 'resnet'
        mbstd_group_size: int | None = 4,   # minibatch-stddev group size (None: whole batch)
        mbstd_num_channels: int = 1,        # stddev features appended (0: no mbstd layer)
        activation: str = "lrelu",          # activation of conv and fc
        conv_clamp: float | None = None,    # clamp of the conv output (None: no clamp)
        has_fromrgb: bool | None = None,    # build fromrgb; None -> only for 'skip'
    ) -> None:
        assert resolution == 4, resolution
        if architecture not in _ARCHITECTURES:
            raise ValueError(f"unknown architecture {architecture!r}; expected one of {list(_ARCHITECTURES)}")
        super().__init__()
        self.in_channels = in_channels
        self.cmap_dim = cmap_dim
        self.resolution = resolution
        self.img_channels = img_channels
        self.architecture = architecture
        self.has_fromrgb = architecture == "skip" if has_fromrgb is None else has_fromrgb

        if self.has_fromrgb:
            self.fromrgb = Conv2dLayer(img_channels, in_channels, kernel_size=1, activation=activation)
        self.mbstd = MinibatchStdLayer(mbstd_group_size, mbstd_num_channels) if mbstd_num_channels > 0 else None
        self.conv = Conv2dLayer(
            in_channels + mbstd_num_channels, in_channels, kernel_size=3, activation=activation, conv_clamp=conv_clamp
        )
        self.fc = FullyConnectedLayer(in_channels * resolution**2, in_channels, activation=activation)
        self.out = FullyConnectedLayer(in_channels, 1 if cmap_dim == 0 else cmap_dim)

    def forward(
        self,
        x: torch.Tensor | None,            # [N, C, 4, 4] features (None only when fromrgb makes them)
        img: torch.Tensor | None,          # [N, img_channels, 4, 4] image (fromrgb only)
        cmap: torch.Tensor | None = None,  # [N, cmap_dim] label projection (conditional only)
    ) -> torch.Tensor:
        r = self.resolution
        if x is not None:
            assert x.shape[1:] == (self.in_channels, r, r), (x.shape, self.in_channels)
            x = x.to(dtype=torch.float32, memory_format=torch.contiguous_format)
        if self.has_fromrgb:
            assert img is not None and img.shape[1:] == (self.img_channels, r, r), (
                None if img is None else img.shape, self.img_channels,
            )
            img = img.to(dtype=torch.float32, memory_format=torch.contiguous_format)
            y = self.fromrgb(img)                                  # [N, C, 4, 4]
            x = x + y if x is not None else y
        assert x is not None

        if self.mbstd is not None:
            x = self.mbstd(x)                                      # [N, C + F, 4, 4]
        x = self.conv(x)                                           # [N, C, 4, 4]
        x = self.fc(x.flatten(1))                                  # [N, 16C] -> [N, C]
        x = self.out(x)                                            # [N, 1] or [N, cmap_dim]

        if self.cmap_dim > 0:
            assert cmap is not None and cmap.shape == (x.shape[0], self.cmap_dim), (
                None if cmap is None else cmap.shape, self.cmap_dim,
            )
            x = (x * cmap).sum(dim=1, keepdim=True) * (1 / math.sqrt(self.cmap_dim))

        assert x.dtype == torch.float32 and x.shape[1:] == (1,), (x.dtype, x.shape)
        return x                                                   # [N, 1]

    def extra_repr(self) -> str:
        return f"resolution={self.resolution}, architecture={self.architecture}, cmap_dim={self.cmap_dim}"


class Discriminator(nn.Module):
    """StyleGAN2-ADA discriminator: image (+ label) -> one raw logit per sample (training spec §1).

    Children, in state-dict order: ``b{R}`` ... ``b8``, ``mapping`` (c_dim > 0 only), ``b4``.
    """

    def __init__(
        self,
        config: DiscriminatorConfig,   # full network configuration
    ) -> None:
        super().__init__()
        if config.architecture not in _ARCHITECTURES:
            raise ValueError(f"unknown architecture {config.architecture!r}; expected one of {list(_ARCHITECTURES)}")
        self.config = config
        self.c_dim = config.c_dim
        self.img_resolution = config.img_resolution
        self.img_channels = config.img_channels
        self.cmap_dim = config.resolved_cmap_dim
        log2_res = int(math.log2(config.img_resolution))
        self.block_resolutions = [2**i for i in range(log2_res, 2, -1)]   # R, R/2, ..., 8
        fp16_resolution = max(2 ** (log2_res + 1 - config.num_fp16_res), 8)

        block = config.block
        layer_idx = 0
        for res in self.block_resolutions:
            in_channels = config.channels(res) if res < config.img_resolution else 0
            b = DiscriminatorBlock(
                in_channels=in_channels,
                tmp_channels=config.channels(res),
                out_channels=config.channels(res // 2),
                resolution=res,
                img_channels=config.img_channels,
                first_layer_idx=layer_idx,
                architecture=config.architecture,
                activation=block.activation,
                resample_filter=block.resample_filter,
                conv_clamp=config.conv_clamp,
                use_fp16=res >= fp16_resolution,
                fp16_channels_last=block.fp16_channels_last,
                freeze_layers=block.freeze_layers,
            )
            setattr(self, f"b{res}", b)
            layer_idx += b.num_layers

        if config.c_dim > 0:
            m = config.mapping
            self.mapping = MappingNetwork(
                z_dim=0,
                c_dim=config.c_dim,
                w_dim=self.cmap_dim,
                num_ws=None,
                num_layers=m.num_layers,
                embed_features=m.embed_features,
                layer_features=m.layer_features,
                activation=m.activation,
                lr_multiplier=m.lr_multiplier,
                w_avg_beta=None,
            )

        ep = config.epilogue
        self.b4 = DiscriminatorEpilogue(
            in_channels=config.channels(4),
            cmap_dim=self.cmap_dim,
            resolution=4,
            img_channels=config.img_channels,
            architecture=config.architecture,
            mbstd_group_size=ep.mbstd_group_size,
            mbstd_num_channels=ep.mbstd_num_channels,
            activation=ep.activation,
            conv_clamp=config.conv_clamp,
            has_fromrgb=config.architecture == "skip" or config.img_resolution == 4,
        )

    def _check_inputs(self, img: torch.Tensor, c: torch.Tensor | None) -> None:
        """Raise a ValueError naming the problem for an image or label batch this D cannot take."""
        R, C = self.img_resolution, self.img_channels
        if not isinstance(img, torch.Tensor) or img.ndim != 4:
            shape = tuple(img.shape) if isinstance(img, torch.Tensor) else type(img).__name__
            raise ValueError(f"expected images of shape [N, {C}, {R}, {R}], got {shape}")
        n, ch, h, w = img.shape
        if ch != C:
            raise ValueError(
                f"expected images with {C} channels ([N, {C}, {R}, {R}]), got {ch} channels {tuple(img.shape)}"
            )
        if (h, w) != (R, R):
            raise ValueError(
                f"expected images of resolution {R}x{R} ([N, {C}, {R}, {R}]), got {h}x{w} {tuple(img.shape)}"
            )
        if self.c_dim > 0:
            if c is None:
                raise ValueError(
                    f"this discriminator is conditional (c_dim={self.c_dim}): labels c of shape "
                    f"[N, {self.c_dim}] are required, got None"
                )
            if c.ndim != 2 or tuple(c.shape) != (n, self.c_dim):
                raise ValueError(f"expected labels c of shape [{n}, {self.c_dim}], got {tuple(c.shape)}")
        elif c is not None and c.numel() != 0:
            raise ValueError(
                f"this discriminator is unconditional (c_dim=0) but got labels of shape {tuple(c.shape)}; pass c=None"
            )
        if self.b4.mbstd is not None:
            _check_mbstd_batch(self.b4.mbstd.group_size, n)

    def forward(
        self,
        img: torch.Tensor,              # [N, img_channels, R, R] images (nominally in [-1, 1])
        c: torch.Tensor | None = None,  # [N, c_dim] labels; None for an unconditional D
        fp16: bool = False,             # run the fp16 blocks in float16 (official training default)
    ) -> torch.Tensor:
        self._check_inputs(img, c)
        x = None
        for res in self.block_resolutions:
            x, img = getattr(self, f"b{res}")(x, img, fp16=fp16)  # x: [N, ch(res/2), res/2, res/2]

        cmap = None
        if self.c_dim > 0:
            assert c is not None
            cmap = self.mapping(None, c)                            # [N, cmap_dim]
        return self.b4(x, img, cmap)                                # [N, 1]

    def extra_repr(self) -> str:
        return (
            f"c_dim={self.c_dim}, img_resolution={self.img_resolution}, img_channels={self.img_channels}, "
            f"architecture={self.config.architecture}"
        )

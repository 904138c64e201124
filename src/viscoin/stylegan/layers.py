"""Layers shared by the StyleGAN2 generator and discriminator.

Equalised learning rate (Karras et al. 2018): weights are stored N(0, 1) / lr_multiplier and
scaled at run time by lr_multiplier / sqrt(fan_in). Parameter and buffer names, and their
order, match the official networks' state dicts so that official checkpoints copy over by name
(the official stylegan2-ada-pytorch networks of Karras et al., NeurIPS 2020; `viscoin.stylegan.official`).

Section numbers (§) refer to ``docs/stylegan2-ada-format.md``, the clean-room description of the
official networks and their checkpoint format in this repository.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import nn

from viscoin.stylegan import ops


class FullyConnectedLayer(nn.Module):
    """Dense layer with equalised learning rate (format spec §3.2)."""

    def __init__(
        self,
        in_features: int,               # input size
        out_features: int,              # output size
        bias: bool = True,              # add a bias
        activation: str = "linear",     # activation function
        lr_multiplier: float = 1.0,     # learning-rate multiplier
        bias_init: float = 0.0,         # initial bias value
    ) -> None:
        super().__init__()
        self.in_features = in_features
        self.out_features = out_features
        self.activation = activation
        ops.activation_gain(activation)  # validates the name
        self.weight = nn.Parameter(torch.randn([out_features, in_features]) / lr_multiplier)
        self.bias = nn.Parameter(torch.full([out_features], float(bias_init))) if bias else None
        self.weight_gain = lr_multiplier / math.sqrt(in_features)
        self.bias_gain = lr_multiplier

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        assert x.ndim == 2 and x.shape[1] == self.in_features, (x.shape, self.in_features)
        w = self.weight.to(x.dtype) * self.weight_gain
        b = self.bias
        if b is not None:
            b = b.to(x.dtype)
            if self.bias_gain != 1:
                b = b * self.bias_gain
        if self.activation == "linear" and b is not None:
            return torch.addmm(b.unsqueeze(0), x, w.t())
        x = x.matmul(w.t())
        return ops.bias_act(x, b, activation=self.activation)

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, activation={self.activation}"


class Conv2dLayer(nn.Module):
    """Convolution with equalised learning rate and optional FIR up/down-sampling (training spec §1.2)."""

    def __init__(
        self,
        in_channels: int,                             # input channels
        out_channels: int,                            # output channels
        kernel_size: int,                             # square kernel size
        bias: bool = True,                            # add a bias
        activation: str = "linear",                   # activation function
        up: int = 1,                                  # up-sampling factor
        down: int = 1,                                # down-sampling factor
        resample_filter: Sequence[float] = (1, 3, 3, 1),  # low-pass taps for resampling
        conv_clamp: float | None = None,              # clamp of the output (None: no clamp)
        channels_last: bool = False,                  # store the weight channels-last
        trainable: bool = True,                       # False: weight and bias are buffers (frozen)
    ) -> None:
        super().__init__()
        self.in_channels = in_channels
        self.out_channels = out_channels
        self.kernel_size = kernel_size
        self.activation = activation
        self.up = up
        self.down = down
        self.conv_clamp = conv_clamp
        self.padding = kernel_size // 2
        self.weight_gain = 1 / math.sqrt(in_channels * kernel_size**2)
        self.act_gain = ops.activation_gain(activation)
        # Registered first so that a frozen layer's state dict reads resample_filter, weight, bias.
        self.register_buffer("resample_filter", ops.setup_filter(resample_filter))
        memory_format = torch.channels_last if channels_last else torch.contiguous_format
        weight = torch.randn([out_channels, in_channels, kernel_size, kernel_size]).to(memory_format=memory_format)
        bias_t = torch.zeros([out_channels]) if bias else None
        if trainable:
            self.weight = nn.Parameter(weight)
            self.bias = nn.Parameter(bias_t) if bias_t is not None else None
        else:
            self.register_buffer("weight", weight)
            if bias_t is not None:
                self.register_buffer("bias", bias_t)
            else:
                self.bias = None

    def forward(self, x: torch.Tensor, gain: float = 1.0) -> torch.Tensor:
        assert x.ndim == 4 and x.shape[1] == self.in_channels, (x.shape, self.in_channels)
        w = self.weight * self.weight_gain
        b = self.bias.to(x.dtype) if self.bias is not None else None
        x = ops.conv2d_resample(
            x, w.to(x.dtype), self.resample_filter, up=self.up, down=self.down, padding=self.padding
        )
        act_gain = self.act_gain * gain
        act_clamp = self.conv_clamp * gain if self.conv_clamp is not None else None
        return ops.bias_act(x, b, activation=self.activation, gain=act_gain, clamp=act_clamp)

    def extra_repr(self) -> str:
        return (
            f"in_channels={self.in_channels}, out_channels={self.out_channels}, kernel_size={self.kernel_size}, "
            f"activation={self.activation}, up={self.up}, down={self.down}"
        )


class MappingNetwork(nn.Module):
    """z (and label c) -> w, with tracking of the average w and truncation (format spec §3.4).

    Used as G's mapping network and, without `num_ws`/`w_avg_beta`, as a conditional
    discriminator's label mapping.
    """

    def __init__(
        self,
        z_dim: int,                           # input latent size, 0 = no latent
        c_dim: int,                           # conditioning label size, 0 = no label
        w_dim: int,                           # output size
        num_ws: int | None,                   # number of w copies to output; None = return [N, w_dim]
        num_layers: int = 8,                  # number of FC layers
        embed_features: int | None = None,    # label embedding width; None -> w_dim
        layer_features: int | None = None,    # hidden width; None -> w_dim
        activation: str = "lrelu",            # activation of the FC layers
        lr_multiplier: float = 0.01,          # learning-rate multiplier of the FC layers
        w_avg_beta: float | None = 0.995,     # decay of the tracked average w; None = not tracked
    ) -> None:
        super().__init__()
        self.z_dim = z_dim
        self.c_dim = c_dim
        self.w_dim = w_dim
        self.num_ws = num_ws
        self.num_layers = num_layers
        self.w_avg_beta = w_avg_beta
        if embed_features is None:
            embed_features = w_dim
        if c_dim == 0:
            embed_features = 0
        if layer_features is None:
            layer_features = w_dim
        features = [z_dim + embed_features] + [layer_features] * (num_layers - 1) + [w_dim]
        if c_dim > 0:
            self.embed = FullyConnectedLayer(c_dim, embed_features)
        for idx in range(num_layers):
            layer = FullyConnectedLayer(
                features[idx], features[idx + 1], activation=activation, lr_multiplier=lr_multiplier
            )
            setattr(self, f"fc{idx}", layer)
        if num_ws is not None and w_avg_beta is not None:
            self.register_buffer("w_avg", torch.zeros([w_dim]))

    def forward(
        self,
        z: torch.Tensor | None,                 # [N, z_dim] latents
        c: torch.Tensor | None = None,          # [N, c_dim] labels
        truncation_psi: float = 1.0,            # 1 = no truncation, 0 = w_avg
        truncation_cutoff: int | None = None,   # truncate only the first this many ws
        update_w_avg: bool = True,              # in training mode, update w_avg from this batch
    ) -> torch.Tensor:
        x = None
        if self.z_dim > 0:
            assert z is not None and z.ndim == 2 and z.shape[1] == self.z_dim, (
                None if z is None else z.shape,
                self.z_dim,
            )
            x = ops.normalize_2nd_moment(z.to(torch.float32))
        if self.c_dim > 0:
            assert c is not None and c.ndim == 2 and c.shape[1] == self.c_dim, (
                None if c is None else c.shape,
                self.c_dim,
            )
            y = ops.normalize_2nd_moment(self.embed(c.to(torch.float32)))
            x = torch.cat([x, y], dim=1) if x is not None else y
        assert x is not None
        for idx in range(self.num_layers):
            x = getattr(self, f"fc{idx}")(x)

        if self.w_avg_beta is not None and self.training and update_w_avg:
            with torch.no_grad():
                self.w_avg.copy_(x.detach().mean(dim=0).lerp(self.w_avg, self.w_avg_beta))

        if self.num_ws is not None:
            x = x.unsqueeze(1).repeat([1, self.num_ws, 1])
        if truncation_psi != 1:
            if self.w_avg_beta is None or self.num_ws is None:
                raise ValueError("truncation needs a mapping network that tracks w_avg")
            if truncation_cutoff is None:
                x = self.w_avg.lerp(x, truncation_psi)
            else:
                x[:, :truncation_cutoff] = self.w_avg.lerp(x[:, :truncation_cutoff], truncation_psi)
        return x

    def extra_repr(self) -> str:
        return f"z_dim={self.z_dim}, c_dim={self.c_dim}, w_dim={self.w_dim}, num_ws={self.num_ws}"

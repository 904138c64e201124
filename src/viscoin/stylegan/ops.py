"""Functional building blocks of StyleGAN2, in plain PyTorch (no custom CUDA kernels).

Each op follows the operation order of the official reference path, so that results agree
with it bit for bit on the CPU in float32 (tests/test_generator.py checks this against golden
outputs of the official code; re-ordering moves results by float32 rounding only). All ops are
differentiable.

Section numbers (§) refer to ``docs/stylegan2-ada-format.md``, the clean-room description of the
official networks and their checkpoint format in this repository.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F

# Activation functions: (function, default gain). Gains keep the signal variance of N(0,1) inputs.
_SQRT2 = math.sqrt(2.0)
ACTIVATIONS = {
    "linear": (lambda x: x, 1.0),
    "relu": (F.relu, _SQRT2),
    "lrelu": (lambda x: F.leaky_relu(x, 0.2), _SQRT2),
    "tanh": (torch.tanh, 1.0),
    "sigmoid": (torch.sigmoid, 1.0),
    "elu": (F.elu, 1.0),
    "selu": (F.selu, 1.0),
    "softplus": (F.softplus, 1.0),
    "swish": (lambda x: torch.sigmoid(x) * x, _SQRT2),
}


def activation_gain(activation: str) -> float:
    """Default output gain of `activation` (float64; torch rounds it to float32 when applied)."""
    if activation not in ACTIVATIONS:
        raise ValueError(f"unknown activation {activation!r}; expected one of {sorted(ACTIVATIONS)}")
    return ACTIVATIONS[activation][1]


def bias_act(
    x: torch.Tensor,                 # [N, C, ...] input
    b: torch.Tensor | None = None,   # [C] bias, added along dim 1
    activation: str = "linear",      # name of the activation function
    gain: float | None = None,       # output gain; None -> the activation's default gain
    clamp: float | None = None,      # clamp the output to [-clamp, +clamp]; None -> no clamp
) -> torch.Tensor:
    """Bias, activation, gain, clamp -- in this order (format spec §3.3)."""
    if activation not in ACTIVATIONS:
        raise ValueError(f"unknown activation {activation!r}; expected one of {sorted(ACTIVATIONS)}")
    fn, default_gain = ACTIVATIONS[activation]
    if b is not None:
        assert b.ndim == 1 and b.shape[0] == x.shape[1], (b.shape, x.shape)
        x = x + b.reshape([1, -1] + [1] * (x.ndim - 2))
    x = fn(x)
    gain = default_gain if gain is None else gain
    if gain != 1:
        x = x * gain
    if clamp is not None and clamp >= 0:
        x = x.clamp(-clamp, clamp)
    return x


def normalize_2nd_moment(x: torch.Tensor, dim: int = 1, eps: float = 1e-8) -> torch.Tensor:
    """x / sqrt(mean(x^2) + eps) along `dim` (the mapping network's input normalisation)."""
    return x * (x.square().mean(dim=dim, keepdim=True) + eps).rsqrt()


def setup_filter(taps: Sequence[float], device: torch.device | str | None = None) -> torch.Tensor:
    """2-D low-pass filter from 1-D taps: outer product, normalised to sum 1. [k, k] float32.

    (The official code keeps filters of 8 or more taps separable; 2-D is used for all sizes here.)
    """
    f = torch.as_tensor(list(taps), dtype=torch.float32, device=device)
    assert f.ndim == 1 and f.numel() > 0
    f = f.ger(f)
    return f / f.sum()


def upfirdn2d(
    x: torch.Tensor,                          # [N, C, H, W] input
    f: torch.Tensor,                          # [fh, fw] FIR filter
    up: int = 1,                              # zero-insertion factor
    down: int = 1,                            # decimation factor
    padding: Sequence[int] = (0, 0, 0, 0),    # (x0, x1, y0, y1) zero padding after up-sampling
    gain: float = 1.0,                        # overall gain of the filter
    strided: bool = False,                    # down-sample by a strided conv (computes only the kept outputs)
) -> torch.Tensor:
    """Up-sample (zero insertion), pad, filter with `f` (true convolution), down-sample.

    Format spec §3.6. Negative padding crops. ``strided=True`` gives the same values up to float
    rounding (the conv backend may sum in another order) at 1/down^2 of the conv's work; the
    networks keep the default, the reference op order.
    """
    assert x.ndim == 4 and f.ndim == 2, (x.shape, f.shape)
    n, c, h, w = x.shape
    x0, x1, y0, y1 = (int(p) for p in padding)
    if up > 1:
        x = x.reshape(n, c, h, 1, w, 1)
        x = F.pad(x, [0, up - 1, 0, 0, 0, up - 1])
        x = x.reshape(n, c, h * up, w * up)
    x = F.pad(x, [max(x0, 0), max(x1, 0), max(y0, 0), max(y1, 0)])
    x = x[:, :, max(-y0, 0) : x.shape[2] - max(-y1, 0), max(-x0, 0) : x.shape[3] - max(-x1, 0)]
    f = f * (gain ** (f.ndim / 2))
    f = f.to(x.dtype).flip([0, 1])
    f = f[None, None].repeat(c, 1, 1, 1)
    if strided and down > 1:
        return F.conv2d(x, f, stride=down, groups=c)
    x = F.conv2d(x, f, groups=c)
    if down > 1:
        x = x[:, :, ::down, ::down]
    return x


def upsample2d(x: torch.Tensor, f: torch.Tensor, up: int = 2, gain: float | None = None) -> torch.Tensor:
    """Up-sample by `up` with filter `f` keeping the image size exactly x`up` (skip-architecture images)."""
    fw = f.shape[-1]
    pad = [(fw + up - 1) // 2, (fw - up) // 2] * 2
    return upfirdn2d(x, f, up=up, padding=pad, gain=up * up if gain is None else gain)


def upsample2d_polyphase(x: torch.Tensor, f: torch.Tensor, up: int = 2, gain: float | None = None) -> torch.Tensor:
    """`upsample2d` without multiplying the inserted zeros: the same values up to float rounding.

    Zero insertion makes output pixel (up*m + py, up*k + px) a sum over the input near (m, k) with
    only every `up`-th filter tap: each of the up^2 output phases is a small correlation of the
    un-upsampled input (about fw/up taps per axis, one kernel size for all phases, the taps a
    phase lacks set to 0). One grouped conv computes the up^2 phases as channels, a reshape
    interleaves them (`pixel_shuffle`, written as a permute, which copies faster on the CPU).
    12 taps at 2x: 7x7 = 49 multiply-adds per output pixel instead of 12x12 = 144.
    """
    assert x.ndim == 4 and f.ndim == 2 and f.shape[0] == f.shape[1], (x.shape, f.shape)
    n, c, h, w = x.shape
    k = f.shape[-1]
    p0 = (k + up - 1) // 2                       # upsample2d's leading padding (after zero insertion)
    f = f * ((up * up if gain is None else gain) ** (f.ndim / 2))
    f = F.pad(f.to(x.dtype), [0, 1, 0, 1])       # [k+1, k+1]: index k reads 0 (taps a phase lacks)
    # upsample2d: out[up*m + ph] = sum_d x[m + d] * f[k - 1 - p0 + ph - up*d]  (1-D, per axis)
    d_lo = -(p0 // up)                           # ceil(-p0 / up)
    d_hi = (k - 1 - p0 + up - 1) // up
    d = torch.arange(d_lo, d_hi + 1, device=x.device)
    ph = torch.arange(up, device=x.device)
    idx = k - 1 - p0 + ph[:, None] - up * d[None, :]               # [up, taps]
    idx = torch.where((idx >= 0) & (idx < k), idx, torch.full_like(idx, k))
    wt = f[idx[:, None, :, None], idx[None, :, None, :]]          # [up(py), up(px), taps(y), taps(x)]
    wt = wt.reshape(up * up, 1, *wt.shape[2:]).repeat(c, 1, 1, 1)  # [C*up^2, 1, taps, taps]
    if -d_lo == d_hi:                                              # zero padding by the conv (no copy)
        x = F.conv2d(x, wt, padding=d_hi, groups=c)                # [N, C*up^2, H, W]: channel c*up^2 + py*up + px
    else:
        x = F.conv2d(F.pad(x, [-d_lo, d_hi, -d_lo, d_hi]), wt, groups=c)
    x = x.reshape(n, c, up, up, h, w).permute(0, 1, 4, 2, 5, 3)    # [N, C, H, py, W, px]
    return x.reshape(n, c, up * h, up * w)                         # [N, C, up*H, up*W]


def downsample2d(x: torch.Tensor, f: torch.Tensor, down: int = 2) -> torch.Tensor:
    """Down-sample by `down` with filter `f` to exactly 1/`down` of the size."""
    fw = f.shape[-1]
    pad = [(fw - down + 1) // 2, (fw - down) // 2] * 2
    return upfirdn2d(x, f, down=down, padding=pad)


def conv2d_resample(
    x: torch.Tensor,                  # [N, groups*Cin, H, W] input
    w: torch.Tensor,                  # [groups*Cout, Cin, kh, kw] weight (correlation, never flipped)
    f: torch.Tensor | None = None,    # [fh, fw] low-pass filter for resampling
    up: int = 1,                      # up-sampling factor
    down: int = 1,                    # down-sampling factor
    padding: int = 0,                 # padding of the conv, as if no resampling happened
    groups: int = 1,                  # conv groups
) -> torch.Tensor:
    """2-D correlation combined with FIR up- or down-sampling, in the official op order.

    - k=1, down: filter + decimate, then the 1x1 conv;  k=1, up: the 1x1 conv, then up-sample;
    - down: pad + filter once, then a strided conv (format spec §3.12 / training spec §1.2);
    - up: a transposed conv with stride `up`, then filter (format spec §3.7).
    """
    assert x.ndim == 4 and w.ndim == 4, (x.shape, w.shape)
    assert up == 1 or down == 1, "up- and down-sampling at once is not supported"
    out_ch, in_per_group, kh, kw = w.shape
    if up == 1 and down == 1:
        return F.conv2d(x, w, padding=padding, groups=groups)
    assert f is not None, "resampling needs a filter"
    fh, fw = f.shape
    px0 = px1 = py0 = py1 = padding
    if up > 1:
        px0 += (fw + up - 1) // 2
        px1 += (fw - up) // 2
        py0 += (fh + up - 1) // 2
        py1 += (fh - up) // 2
    if down > 1:
        px0 += (fw - down + 1) // 2
        px1 += (fw - down) // 2
        py0 += (fh - down + 1) // 2
        py1 += (fh - down) // 2

    if kw == 1 and kh == 1 and down > 1:
        x = upfirdn2d(x, f, down=down, padding=[px0, px1, py0, py1])
        return F.conv2d(x, w, groups=groups)
    if kw == 1 and kh == 1 and up > 1:
        x = F.conv2d(x, w, groups=groups)
        return upfirdn2d(x, f, up=up, padding=[px0, px1, py0, py1], gain=up * up)
    if down > 1:
        x = upfirdn2d(x, f, padding=[px0, px1, py0, py1])
        return F.conv2d(x, w, stride=down, groups=groups)

    # Up-sampling with a kernel larger than 1x1: transposed convolution, then the FIR filter.
    if groups == 1:
        wt = w.transpose(0, 1)
    else:
        wt = w.reshape(groups, out_ch // groups, in_per_group, kh, kw)
        wt = wt.transpose(1, 2).reshape(groups * in_per_group, out_ch // groups, kh, kw)
    px0 -= kw - 1
    px1 -= kw - up
    py0 -= kh - 1
    py1 -= kh - up
    pxt = max(min(-px0, -px1), 0)
    pyt = max(min(-py0, -py1), 0)
    x = F.conv_transpose2d(x, wt, stride=up, padding=[pyt, pxt], groups=groups)
    return upfirdn2d(x, f, padding=[px0 + pxt, px1 + pxt, py0 + pyt, py1 + pyt], gain=up * up)


def modulated_conv2d(
    x: torch.Tensor,                       # [N, Cin, H, W] input features
    weight: torch.Tensor,                  # [Cout, Cin, kh, kw] shared weight
    styles: torch.Tensor,                  # [N, Cin] per-sample modulation
    noise: torch.Tensor | None = None,     # [N or 1, 1 or Cout, H', W'] added after the conv
    up: int = 1,                           # up-sampling factor
    down: int = 1,                         # down-sampling factor
    padding: int = 0,                      # conv padding
    resample_filter: torch.Tensor | None = None,  # [fh, fw] low-pass filter
    demodulate: bool = True,               # normalise each output channel's weights (StyleGAN2 eq. 3)
    fused: bool = True,                    # grouped conv with per-sample weights (True) or scaled activations
) -> torch.Tensor:
    """StyleGAN2 modulated convolution (format spec §3.7 fused, §3.9 non-fused)."""
    n = x.shape[0]
    out_ch, in_ch, kh, kw = weight.shape
    assert x.ndim == 4 and x.shape[1] == in_ch, (x.shape, weight.shape)
    assert styles.shape == (n, in_ch), (styles.shape, (n, in_ch))

    # Pre-normalise to keep float16 in range; demodulation cancels the scale (up to its eps).
    if x.dtype == torch.float16 and demodulate:
        weight = weight * (1 / math.sqrt(in_ch * kh * kw) / weight.norm(float("inf"), dim=[1, 2, 3], keepdim=True))
        styles = styles / styles.norm(float("inf"), dim=1, keepdim=True)

    w = None
    dcoefs = None
    if demodulate or fused:
        w = weight.unsqueeze(0) * styles.reshape(n, 1, -1, 1, 1)  # [N, Cout, Cin, kh, kw]
    if demodulate:
        dcoefs = (w.square().sum(dim=[2, 3, 4]) + 1e-8).rsqrt()  # [N, Cout]
    if demodulate and fused:
        w = w * dcoefs.reshape(n, -1, 1, 1, 1)

    if not fused:
        x = x * styles.to(x.dtype).reshape(n, -1, 1, 1)
        x = conv2d_resample(x, weight.to(x.dtype), resample_filter, up=up, down=down, padding=padding)
        if demodulate and noise is not None:
            return torch.addcmul(noise.to(x.dtype), x, dcoefs.to(x.dtype).reshape(n, -1, 1, 1))
        if demodulate:
            return x * dcoefs.to(x.dtype).reshape(n, -1, 1, 1)
        if noise is not None:
            return x.add_(noise.to(x.dtype))
        return x

    x = x.reshape(1, -1, *x.shape[2:])
    w = w.reshape(-1, in_ch, kh, kw)
    x = conv2d_resample(x, w.to(x.dtype), resample_filter, up=up, down=down, padding=padding, groups=n)
    x = x.reshape(n, -1, *x.shape[2:])
    if noise is not None:
        x = x.add_(noise)
    return x

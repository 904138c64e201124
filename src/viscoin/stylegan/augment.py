"""Adaptive discriminator augmentation (ADA, Karras et al. 2020) for StyleGAN2 training.

Clean-room, from the ADA paper (Karras et al., NeurIPS 2020, section 2 and appendix B), a
faithful subset of it: the twelve 'bgc' augmentations, each decided independently per sample with probability
``mult * p`` and the identity when not chosen, differentiable in the images, applied to every
image the discriminator sees (reals and fakes, G and D steps, R1 through it).

- pixel blitting (xflip, rotate90, xint) as exact pixel operations: flips, `rot90` and integer
  shifts with reflect padding (§3.5 step 2);
- geometric (scale, pre-rotation, aniso, post-rotation, xfrac) as one composed affine matrix per
  sample, reflect padding and a bilinear `grid_sample`, optionally at 2x with the sym6 low-pass
  filter of §3.2 (§3.5 step 4); only the samples with a non-identity matrix are resampled;
- colour (brightness, contrast, lumaflip, hue, saturation) as 4x4 matrices on (r, g, b, 1),
  exactly as §3.1-3.2 (§3.5 step 3).

`AugmentPipe` holds the overall strength `p` as a buffer (saved with the networks), and
`AdaController` adjusts it from the sign of D's outputs on real images (§3.4).

Random numbers come from torch's global generator (the trainer re-seeds it every iteration).
On CUDA, the backward passes of `grid_sample` and `index_copy` are not deterministic, so
``run.deterministic=true`` is for CPU runs.

Section numbers (§) refer to ``docs/stylegan2-ada-training.md``, the clean-room description of the
official networks and training in this repository.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Callable, Literal

import torch
import torch.nn.functional as F
from torch import nn

from viscoin.stylegan import ops
from viscoin.utils.config import ConfigError, DictConfig

# Symlet-6 scaling-filter taps normalised to sum 1 (public wavelet coefficients, §3.2 step 2).
SYM6 = (0.0108923, 0.0024683, -0.0834316, -0.0341616, 0.3472289, 0.5569464,
        0.2389522, -0.0513625, -0.0148919, 0.0316253, 0.00125, -0.0055159)

BLIT = ("xflip", "rotate90", "xint")
GEOM = ("scale", "rotate", "aniso", "xfrac")
COLOUR = ("brightness", "contrast", "lumaflip", "hue", "saturation")


@dataclass(frozen=True)
class AugmentConfig(DictConfig):
    """ADA settings: the controller (§3.4) and the pipeline's multipliers and strengths (§3.1).

    The twelve multipliers scale `p` into each augmentation's probability; all 1 is the official
    'bgc' pipeline, 0 disables one (the VisCoIN paper used ``xflip: 0.1`` for Stanford Cars).
    """

    mode: Literal["ada", "fixed", "noaug"] = "ada"  # ada: p adapted; fixed: p constant; noaug: no pipe
    p: float = 0.0                                  # initial p (ada) or the constant p (fixed)
    target: float = 0.6                             # ADA target of E[sign(D(real))]
    interval: int = 4                               # adjust p every this many iterations
    kimg: float | Literal["auto"] = "auto"          # p can move by 1 in this many kimg (auto: 500; 100 fine-tuning)
    # probability multipliers ('bgc')
    xflip: float = 1.0                              # x-flip (a flip is drawn with prob 1/2 when chosen)
    rotate90: float = 1.0                           # rotation by a multiple of 90 degrees
    xint: float = 1.0                               # integer translation
    scale: float = 1.0                              # isotropic scaling
    rotate: float = 1.0                             # arbitrary rotation (split in a pre and a post rotation)
    aniso: float = 1.0                              # anisotropic scaling
    xfrac: float = 1.0                              # fractional translation
    brightness: float = 1.0                         # additive brightness
    contrast: float = 1.0                           # multiplicative contrast
    lumaflip: float = 1.0                           # luma flip (Householder reflection of the grey axis)
    hue: float = 1.0                                # hue rotation around the grey axis
    saturation: float = 1.0                         # saturation scaling
    # strengths
    xint_max: float = 0.125                         # integer translation: up to this fraction of the size
    scale_std: float = 0.2                          # log2 std of the isotropic scale
    rotate_max: float = 1.0                         # rotation angle up to this fraction of pi
    aniso_std: float = 0.2                          # log2 std of the anisotropic scale
    xfrac_std: float = 0.125                        # std of the fractional translation (fraction of the size)
    brightness_std: float = 0.2                     # std of the brightness offset
    contrast_std: float = 0.5                       # log2 std of the contrast factor
    hue_max: float = 1.0                            # hue angle up to this fraction of pi
    saturation_std: float = 1.0                     # log2 std of the saturation factor
    supersample: bool = True                        # geometric resampling at 2x with the sym6 low-pass filter

    def __post_init__(self) -> None:
        for name in (*BLIT, *GEOM, *COLOUR):
            if not 0 <= getattr(self, name) <= 1:
                raise ConfigError(f"augment.{name}: expected a multiplier in [0, 1], got {getattr(self, name)}")
        if self.p < 0:
            raise ConfigError(f"augment.p: expected >= 0, got {self.p}")
        if not 0 <= self.target <= 1:
            raise ConfigError(f"augment.target: expected a value in [0, 1], got {self.target}")
        if self.interval < 1:
            raise ConfigError(f"augment.interval: expected >= 1, got {self.interval}")
        if self.kimg != "auto" and not self.kimg > 0:
            raise ConfigError(f"augment.kimg: expected > 0 or 'auto', got {self.kimg}")


# ----------------------------------------------------------------------------------------------
# Matrices (per sample, [N, 3, 3] on centred pixel coordinates or [N, 4, 4] on (r, g, b, 1))


def _rotation2d(theta: torch.Tensor) -> torch.Tensor:
    c, s = theta.cos(), theta.sin()
    z, o = torch.zeros_like(theta), torch.ones_like(theta)
    return torch.stack([c, -s, z, s, c, z, z, z, o], dim=1).reshape(-1, 3, 3)


def _scale2d(sx: torch.Tensor, sy: torch.Tensor) -> torch.Tensor:
    z, o = torch.zeros_like(sx), torch.ones_like(sx)
    return torch.stack([sx, z, z, z, sy, z, z, z, o], dim=1).reshape(-1, 3, 3)


def _translate2d(tx: torch.Tensor, ty: torch.Tensor) -> torch.Tensor:
    z, o = torch.zeros_like(tx), torch.ones_like(tx)
    return torch.stack([o, z, tx, z, o, ty, z, z, o], dim=1).reshape(-1, 3, 3)


def geometric_inverse(
    scale: torch.Tensor,        # [N] isotropic scale (1 = none)
    rot_pre: torch.Tensor,      # [N] pre-rotation angle, radians
    aniso: torch.Tensor,        # [N] anisotropic scale: x by aniso, y by 1/aniso
    rot_post: torch.Tensor,     # [N] post-rotation angle, radians
    tx: torch.Tensor,           # [N] fractional translation in pixels, x
    ty: torch.Tensor,           # [N] fractional translation in pixels, y
) -> torch.Tensor:              # [N, 3, 3]
    """Inverse of the forward map translate . rotate_post . aniso . rotate_pre . scale (§3.2).

    It maps output pixel coordinates (origin at the image centre, x right, y down) to source ones.
    """
    m = _scale2d(1 / scale, 1 / scale)
    m = m @ _rotation2d(-rot_pre)
    m = m @ _scale2d(1 / aniso, aniso)
    m = m @ _rotation2d(-rot_post)
    return m @ _translate2d(-tx, -ty)


_LUMA = torch.tensor([1.0, 1.0, 1.0, 0.0]) / math.sqrt(3)  # the grey axis, homogeneous (r, g, b, 1)


def colour_matrix(
    brightness: torch.Tensor,   # [N] added to every channel (0 = none)
    contrast: torch.Tensor,     # [N] multiplies every channel around 0 (1 = none)
    lumaflip: torch.Tensor,     # [N] 1: reflect along the grey axis, 0: none
    hue: torch.Tensor,          # [N] rotation angle around the grey axis, radians (0 = none)
    saturation: torch.Tensor,   # [N] scale of the chroma (distance from the grey axis; 1 = none)
) -> torch.Tensor:              # [N, 4, 4]
    """Compose the colour transforms in the order of §3.2, each new one multiplied on the left."""
    n, dev = brightness.shape[0], brightness.device
    eye = torch.eye(4, device=dev).expand(n, 4, 4)
    v = _LUMA.to(dev)
    vv = torch.outer(v, v)
    m = eye.clone()
    shift = eye.clone()
    shift[:, :3, 3] = brightness[:, None]
    m = shift @ m
    m = torch.diag_embed(torch.stack([contrast, contrast, contrast, torch.ones_like(contrast)], 1)) @ m
    m = (eye - 2 * vv * lumaflip[:, None, None]) @ m
    # Rodrigues' rotation around v: cos I + sin [v]x + (1 - cos) v v^T, on the 3x3 block.
    c, s = hue.cos()[:, None, None], hue.sin()[:, None, None]
    cross = torch.tensor([[0.0, -1, 1], [1, 0, -1], [-1, 1, 0]], device=dev) / math.sqrt(3)
    rot = eye.clone()
    rot[:, :3, :3] = c * torch.eye(3, device=dev) + s * cross + (1 - c) * vv[:3, :3]
    m = rot @ m
    sat = eye.clone()
    sat[:, :3, :3] = vv[:3, :3] + saturation[:, None, None] * (torch.eye(3, device=dev) - vv[:3, :3])
    return sat @ m


# ----------------------------------------------------------------------------------------------
# Exact pixel ops and the resampler


def _reflect_index(i: torch.Tensor, n: int) -> torch.Tensor:
    """Indices mirrored into [0, n) without repeating the edge (numpy/torch 'reflect')."""
    if n == 1:
        return torch.zeros_like(i)
    i = i % (2 * n - 2)
    return torch.where(i >= n, 2 * n - 2 - i, i)


def shift_reflect(x: torch.Tensor, dx: torch.Tensor, dy: torch.Tensor) -> torch.Tensor:
    """Shift each image by integer (dx, dy) pixels [N] (content moves right/down), reflect-padded."""
    n, _, h, w = x.shape
    ix = _reflect_index(torch.arange(w, device=x.device)[None, :] - dx[:, None], w)  # [N, W]
    iy = _reflect_index(torch.arange(h, device=x.device)[None, :] - dy[:, None], h)  # [N, H]
    batch = torch.arange(n, device=x.device)[:, None, None]
    out = x.permute(0, 2, 3, 1)[batch, iy[:, :, None], ix[:, None, :]]  # [N, H, W, C]
    return out.permute(0, 3, 1, 2).contiguous()


def affine_resample(
    x: torch.Tensor,              # [N, C, H, W]
    inverse: torch.Tensor,        # [N, 3, 3] output -> source map on centred pixel coordinates
    supersample: bool = True,     # resample at 2x between sym6 up- and down-sampling
    filtering: Literal["polyphase", "direct"] = "polyphase",  # how the 2x path filters (same values)
    crop: bool | None = None,     # polyphase: up-sample each image's reachable window (None: see below)
) -> torch.Tensor:
    """Warp every image by its matrix: reflect padding, bilinear `grid_sample` (§3.2 / §3.5 step 4).

    Centre. §3.2 puts the origin at the image centre c = ((W-1)/2, (H-1)/2), but the official 2x
    path turns a rotation or scaling about c into one about c - (1/4, 1/4) (pixel indices): it
    converts the matrix to the 2x image by conjugating it with a 2x scale and then with a
    (-1/2, -1/2) translation at the 2x rate, and hands that to `affine_grid` (align_corners=False).
    Followed through, the output sub-pixel at 1x position P (relative to c) is mapped as P + 1/4
    and the source read 1/4 px lower: ``src = A (P + 1/4) + t - 1/4``. Translations are unchanged.
    The 2x path here uses that centre, so it equals the official one up to float rounding. The
    quarter pixel mostly offsets the phase of the sym6 filters (the taps' centre of mass is 5.1,
    not the 5.5 that the up- and down-sampling's padding assumes), so the unfiltered 1x path keeps
    c: on image content that is the closer of the two to the official output.

    Filtering. "direct" is the textbook form: zero insertion and a 12x12 conv at 2x, and a 12x12
    conv at 2x whose every second output is kept. "polyphase" (the default) computes the same sums
    without the zero products and the discarded outputs, ~4x fewer multiply-adds on either side:
    `ops.upsample2d_polyphase` and a stride-2 conv; it also skips the 2x grid's outermost row and
    column, which the down-sampling filter never reads. The two agree to float32 rounding
    (tests/test_augment.py).

    Crop. The padding is the batch's largest (the batch shares one tensor), about twice the area
    one image's samples reach. With ``crop`` the polyphase path up-samples, image by image, only
    the window of the padded image that its samples read, with the filter's support: the values
    read are the same sums of the same pixels, so the output is too (up to float rounding). It
    trades one batched conv for N small ones. ``crop=None`` crops on the CPU for images of 48 px
    and more when no gradient flows to `x` (D's steps on reals and on detached fakes, 3 of the
    pipe's 4 calls per training iteration). Measured (batch 16, p = 0.6, the geometric step):
    forward 64 px ~1.5x, 128 px ~1.4x faster; 16 px 1.5x slower; with gradients 1.3-1.7x faster
    single-threaded but up to 2x slower with two threads on a busy 2-core machine (many small
    parallel ops), hence not by default. Not worth it where kernel launches cost (CUDA).
    """
    n, _, h, w = x.shape
    dev, inverse = x.device, inverse.to(x.device, torch.float32)
    cx, cy = (w - 1) / 2, (h - 1) / 2
    if filtering not in ("polyphase", "direct"):
        raise ValueError(f"affine_resample: filtering must be 'polyphase' or 'direct', got {filtering!r}")

    # 1. Reflect-pad, as the official pipeline does: map the corner pixels' centres through the
    #    matrix (about the nominal centre), take the largest excursion beyond them on each side, add
    #    the support of the filters (6 px; 1 px for the 1x path's bilinear), clip to
    #    [0, size - 1] (what 'reflect' allows) and round up.
    corners = torch.tensor([[-cx, -cy, 1], [cx, -cy, 1], [cx, cy, 1], [-cx, cy, 1]], device=dev).T
    src = inverse @ corners                                          # [N, 3, 4]
    margin = 6 if supersample else 1
    ext = torch.stack([-src[:, 0].min() - cx, -src[:, 1].min() - cy, src[:, 0].max() - cx, src[:, 1].max() - cy])
    ext = torch.minimum((ext + margin).clamp(min=0), torch.tensor([w - 1, h - 1, w - 1, h - 1], device=dev))
    left, top, right, bottom = (int(v) for v in ext.ceil().tolist())
    x = F.pad(x, [left, right, top, bottom], mode="reflect")          # [N, C, Hp, Wp]
    hp, wp = x.shape[2:]

    if supersample and filtering == "polyphase":
        if crop is None:
            crop = dev.type == "cpu" and min(h, w) >= 48 and not (x.requires_grad and torch.is_grad_enabled())
        return _resample_2x_polyphase(x, inverse, left, top, h, w, crop)

    # 2. Output sample positions in 1x pixel coordinates relative to the centre (2x: sub-pixels at
    #    +-1/4, plus a 3 px rim that the down-sampling filter reads), mapped to the source and
    #    normalised. At 2x, 1x pixel index i sits at 2x index 2i + 1/2 (sym6 up-sampling).
    factor, rim = (2, 6) if supersample else (1, 0)
    ox, oy = (cx - 0.25, cy - 0.25) if supersample else (cx, cy)    # the centre (see the docstring)
    ks = (torch.arange(-rim, factor * w + rim, device=dev) - (factor - 1) / 2) / factor - ox
    js = (torch.arange(-rim, factor * h + rim, device=dev) - (factor - 1) / 2) / factor - oy
    gy, gx = torch.meshgrid(js, ks, indexing="ij")
    pts = torch.stack([gx, gy, torch.ones_like(gx)], dim=-1).reshape(-1, 3)   # [P, 3]
    src = pts @ inverse.transpose(1, 2)                                        # [N, P, 3]
    sx = (src[..., 0] + ox + left) * factor + (factor - 1) / 2                 # pixel coords at the sampling rate
    sy = (src[..., 1] + oy + top) * factor + (factor - 1) / 2
    grid = torch.stack([(2 * sx + 1) / (factor * wp) - 1, (2 * sy + 1) / (factor * hp) - 1], dim=-1)
    grid = grid.reshape(n, js.numel(), ks.numel(), 2).to(x.dtype)

    if supersample:
        f = ops.setup_filter(SYM6, device=dev)
        x = ops.upsample2d(x, f)                                   # convolution with the filter, gain 4
    x = F.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
    if supersample:
        # Correlation with the same filter (so the pair is zero-phase); crops the rim back to H x W.
        x = ops.upfirdn2d(x, f.flip([0, 1]), down=2, padding=[5 - rim] * 4)
    return x


def _resample_2x_polyphase(
    x: torch.Tensor,              # [N, C, Hp, Wp] the reflect-padded images
    inverse: torch.Tensor,        # [N, 3, 3] float32, as for `affine_resample`
    left: int,                    # padding added on the left of x
    top: int,                     # padding added on top of x
    h: int,                       # output height (before padding)
    w: int,                       # output width
    crop: bool,                   # up-sample each image's reachable window only (see `affine_resample`)
) -> torch.Tensor:                # [N, C, H, W]
    """`affine_resample`'s 2x path (steps 2-3) with polyphase filtering: the same sums as "direct"."""
    n, _, hp, wp = x.shape
    dev = x.device
    ox, oy = (w - 1) / 2 - 0.25, (h - 1) / 2 - 0.25                # the centre (see `affine_resample`)

    # 2. The 2x output samples that the down-sampling filter reads: 2x indices -5 .. 2W+4 (the
    #    direct path's 6 px rim less its outermost sample, which the filter never reads), in 1x
    #    units relative to the centre (1x pixel index i sits at 2x index 2i + 1/2). The affine map
    #    is applied per axis and broadcast (the positions form a grid; no [P, 3] @ [3, 3] product).
    ks = (torch.arange(-5, 2 * w + 5, device=dev) - 0.5) / 2 - ox   # [Wo = 2W + 10]
    js = (torch.arange(-5, 2 * h + 5, device=dev) - 0.5) / 2 - oy   # [Ho = 2H + 10]
    m = inverse[:, :2, :, None, None]                               # [N, 2, 3, 1, 1]
    src = m[:, :, 0] * ks + m[:, :, 1] * js[:, None] + m[:, :, 2]   # [N, 2, Ho, Wo]: source x, y (1x, centred)
    sx = (src[:, 0] + ox + left) * 2 + 0.5                          # [N, Ho, Wo] 2x pixel coords in the padded image
    sy = (src[:, 1] + oy + top) * 2 + 0.5

    # The window (1x pixels of the padded image) that each image's up-sampling computes: all of
    # it, or with `crop` the pixels that the 2x samples read. Bilinear reads 2x pixels floor(s)
    # and floor(s) + 1 (one more each way for rounding), clipped to the image: outside it both
    # read zeros. 2x pixel 2i + (0 or 1) sums 1x pixels i - 3 .. i + 3 (the taps of its phase).
    if crop:
        sxf, syf = sx.flatten(1), sy.flatten(1)
        reach = torch.stack([sxf.amin(1), sxf.amax(1), syf.amin(1), syf.amax(1)]).floor()          # [4, N]
        reach = reach + torch.tensor([-1.0, 2.0, -1.0, 2.0], device=dev)[:, None]  # 2x pixels read, with slack
        x0, x1 = (reach[:2].clamp(0, 2 * wp - 1) // 2 + torch.tensor([[-3.0], [3.0]], device=dev)).clamp(0, wp - 1)
        y0, y1 = (reach[2:].clamp(0, 2 * hp - 1) // 2 + torch.tensor([[-3.0], [3.0]], device=dev)).clamp(0, hp - 1)
    else:
        x0 = y0 = torch.zeros(n, device=dev)
        x1, y1 = torch.full((n,), wp - 1.0, device=dev), torch.full((n,), hp - 1.0, device=dev)
    ww, wh = (x1 - x0 + 1)[:, None, None], (y1 - y0 + 1)[:, None, None]   # [N, 1, 1] window size
    sx = sx - 2 * x0[:, None, None]                                 # 2x pixel coords in the window
    sy = sy - 2 * y0[:, None, None]
    grid = torch.stack([(2 * sx + 1) / (2 * ww) - 1, (2 * sy + 1) / (2 * wh) - 1], dim=-1).to(x.dtype)  # [N, Ho, Wo, 2]

    # 3. Up-sample, resample, down-sample.
    f = ops.setup_filter(SYM6, device=dev)
    if crop:
        windows = torch.stack([x0, x1, y0, y1], 1).long().tolist()
        x = torch.cat([
            F.grid_sample(ops.upsample2d_polyphase(xi[None, :, ya:yb + 1, xa:xb + 1], f),  # [1, C, 2wh, 2ww]
                          grid[i:i + 1], mode="bilinear", padding_mode="zeros", align_corners=False)
            for i, (xi, (xa, xb, ya, yb)) in enumerate(zip(x.unbind(0), windows))
        ])                                                          # [N, C, Ho, Wo]
    else:
        x = ops.upsample2d_polyphase(x, f)                         # [N, C, 2Hp, 2Wp], as upsample2d
        x = F.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=False)  # [N, C, Ho, Wo]
    # Correlation with the same filter (so the pair is zero-phase), evaluated at the even positions
    # only (a stride-2 conv, no padding): [N, C, H, W].
    return ops.upfirdn2d(x, f.flip([0, 1]), down=2, strided=True)


# ----------------------------------------------------------------------------------------------
# The pipeline


class AugmentPipe(nn.Module):
    """The 'bgc' ADA pipeline (§3.1-3.2, §3.5). `p` is a buffer; multipliers and strengths come from the config.

    `filtering` picks how the 2x geometric path filters (see `affine_resample`; the same values,
    "direct" is the slower textbook form, kept for comparison).
    """

    def __init__(self, cfg: AugmentConfig = AugmentConfig(),
                 filtering: Literal["polyphase", "direct"] = "polyphase") -> None:
        super().__init__()
        if filtering not in ("polyphase", "direct"):
            raise ValueError(f"AugmentPipe: filtering must be 'polyphase' or 'direct', got {filtering!r}")
        self.cfg = cfg
        self.filtering = filtering
        self.register_buffer("p", torch.tensor(float(cfg.p)))

    def _chosen(self, n: int, mult: float, device: torch.device) -> torch.Tensor:
        """[N] bool: sample i gets the augmentation with probability mult * p (independently)."""
        return torch.rand(n, device=device) < mult * self.p

    def _pick(self, mult: float, value: torch.Tensor, identity: torch.Tensor) -> torch.Tensor:
        """Per sample: `value` if the augmentation is chosen, else its identity value."""
        return torch.where(self._chosen(value.shape[0], mult, value.device), value, identity)

    @staticmethod
    def _lognormal(n: int, std: float, device: torch.device) -> torch.Tensor:
        return torch.exp2(torch.randn(n, device=device) * std)       # 2^N(0, std^2)

    @staticmethod
    def _angle(n: int, max_fraction: float, device: torch.device) -> torch.Tensor:
        return (torch.rand(n, device=device) * 2 - 1) * math.pi * max_fraction  # U(-pi, pi) * max_fraction

    def forward(self, images: torch.Tensor) -> torch.Tensor:   # [N, C, H, W] in [-1, 1] -> same
        cfg, x = self.cfg, images
        n, c, h, w = x.shape
        dev = x.device

        # Pixel blitting, exact.
        if cfg.xflip > 0:
            flip = torch.randint(2, (n,), device=dev) * self._chosen(n, cfg.xflip, dev)
            x = torch.where(flip[:, None, None, None] == 1, x.flip(3), x)
        if cfg.rotate90 > 0:
            if h != w:
                raise ValueError(f"augment.rotate90 needs square images, got {h}x{w}")
            k = torch.randint(4, (n,), device=dev) * self._chosen(n, cfg.rotate90, dev)
            y = x
            for quarter in (1, 2, 3):
                y = torch.where(k[:, None, None, None] == quarter, x.rot90(quarter, [2, 3]), y)
            x = y
        if cfg.xint > 0:
            t = (torch.rand(n, 2, device=dev) * 2 - 1) * cfg.xint_max * self._chosen(n, cfg.xint, dev)[:, None]
            x = shift_reflect(x, (t[:, 0] * w).round().long(), (t[:, 1] * h).round().long())

        # Geometric: one affine matrix per sample; only non-identity samples are resampled.
        one, zero = torch.ones(n, device=dev), torch.zeros(n, device=dev)
        if any(getattr(cfg, name) > 0 for name in GEOM):
            scale, aniso, rot_pre, rot_post, tx, ty = one, one, zero, zero, zero, zero
            if cfg.scale > 0:
                scale = self._pick(cfg.scale, self._lognormal(n, cfg.scale_std, dev), one)
            if cfg.rotate > 0:
                p_rot = 1 - torch.sqrt((1 - cfg.rotate * self.p).clamp(0, 1))  # two draws: P(any) = mult * p
                rot_pre = torch.where(torch.rand(n, device=dev) < p_rot, self._angle(n, cfg.rotate_max, dev), zero)
            if cfg.aniso > 0:
                aniso = self._pick(cfg.aniso, self._lognormal(n, cfg.aniso_std, dev), one)
            if cfg.rotate > 0:
                rot_post = torch.where(torch.rand(n, device=dev) < p_rot, self._angle(n, cfg.rotate_max, dev), zero)
            if cfg.xfrac > 0:
                t = torch.randn(n, 2, device=dev) * cfg.xfrac_std * self._chosen(n, cfg.xfrac, dev)[:, None]
                tx, ty = t[:, 0] * w, t[:, 1] * h
            active = (scale != 1) | (rot_pre != 0) | (aniso != 1) | (rot_post != 0) | (tx != 0) | (ty != 0)
            idx = active.nonzero()[:, 0]
            if idx.numel() > 0:
                inv = geometric_inverse(scale[idx], rot_pre[idx], aniso[idx], rot_post[idx], tx[idx], ty[idx])
                x = x.index_copy(0, idx, affine_resample(x[idx], inv, cfg.supersample, self.filtering))

        # Colour: one 4x4 matrix per sample on (r, g, b, 1); hue and saturation need RGB.
        if any(getattr(cfg, name) > 0 for name in COLOUR):
            b, con, flip, hue, sat = zero, one, zero, zero, one
            if cfg.brightness > 0:
                b = self._pick(cfg.brightness, torch.randn(n, device=dev) * cfg.brightness_std, zero)
            if cfg.contrast > 0:
                con = self._pick(cfg.contrast, self._lognormal(n, cfg.contrast_std, dev), one)
            if cfg.lumaflip > 0:
                flip = self._pick(cfg.lumaflip, torch.randint(2, (n,), device=dev).float(), zero)
            if cfg.hue > 0 and c == 3:
                hue = self._pick(cfg.hue, self._angle(n, cfg.hue_max, dev), zero)
            if cfg.saturation > 0 and c == 3:
                sat = self._pick(cfg.saturation, self._lognormal(n, cfg.saturation_std, dev), one)
            m = colour_matrix(b, con, flip, hue, sat).to(x.dtype)
            if c == 3:
                x = (m[:, :3, :3] @ x.reshape(n, 3, h * w) + m[:, :3, 3:]).reshape(n, 3, h, w)
            elif c == 1:
                mean = m[:, :3, :].mean(dim=1)                      # [N, 4]: mean of the first three rows
                x = x * mean[:, :3].sum(dim=1)[:, None, None, None] + mean[:, 3][:, None, None, None]
            else:
                raise ValueError(f"augment: colour transforms need 1 or 3 channels, got {c}")
        return x

    def extra_repr(self) -> str:
        return f"p={float(self.p):.4f}"


# ----------------------------------------------------------------------------------------------
# The ADA heuristic


class AdaController:
    """Adjusts the pipe's `p` towards E[sign(D(real))] = target (§3.4).

    `observe` every real-image logit D produces; `update` every `interval` iterations moves p by
    ``sign(r_t - target) * batch_size * interval / (kimg * 1000)``, clamped below at 0 (no upper
    clamp). `state_dict` holds the statistics gathered since the last update (for exact resume);
    p itself lives in the pipe's state.
    """

    def __init__(
        self,
        pipe: AugmentPipe,              # the pipe whose p is adjusted
        batch_size: int,                # images per iteration over all devices
        target: float | None = 0.6,     # None: fixed p (statistics are still gathered, for the logs)
        interval: int = 4,              # iterations between adjustments
        kimg: float = 500.0,            # p moves by 1 in this many thousand images
    ) -> None:
        self.pipe = pipe
        self.batch_size = batch_size
        self.target = target
        self.interval = interval
        self.kimg = kimg
        self.sign_sum = 0.0
        self.count = 0.0
        self._pending: list[torch.Tensor] = []

    def observe(self, real_logits: torch.Tensor) -> None:
        """Record the signs of D's outputs on (augmented) real images."""
        d = real_logits.detach().float()
        self._pending.append(torch.stack([d.sign().sum(), torch.tensor(float(d.numel()), device=d.device)]))

    def _flush(self, all_reduce: Callable[[torch.Tensor], torch.Tensor] | None) -> None:
        if self._pending:
            stats = torch.stack(self._pending).sum(dim=0)
            self._pending = []
        else:
            stats = torch.zeros(2, device=self.pipe.p.device)
        if all_reduce is not None:
            stats = all_reduce(stats)
        self.sign_sum += float(stats[0])
        self.count += float(stats[1])

    def update(self, all_reduce: Callable[[torch.Tensor], torch.Tensor] | None = None) -> float | None:
        """r_t since the last update (None if nothing was observed); adjusts p when a target is set.

        `all_reduce` sums a tensor over processes (multi-device runs); every rank must call this.
        """
        self._flush(all_reduce)
        if self.count == 0:
            return None
        rt = self.sign_sum / self.count
        if self.target is not None:
            step = math.copysign(1.0, rt - self.target) if rt != self.target else 0.0
            adjust = step * self.batch_size * self.interval / (self.kimg * 1000)
            self.pipe.p.copy_((self.pipe.p + adjust).clamp(min=0))
        self.sign_sum, self.count = 0.0, 0.0
        return rt

    def state_dict(self, all_reduce: Callable[[torch.Tensor], torch.Tensor] | None = None) -> dict[str, Any]:
        self._flush(all_reduce)
        return {"sign_sum": self.sign_sum, "count": self.count}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self._pending = []
        self.sign_sum = float(state["sign_sum"])
        self.count = float(state["count"])

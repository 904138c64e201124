"""ADA augmentation pipe and controller (training spec §3): identity, per-sample decisions, exact
blits, geometry conventions, colour matrices on known colours, gradients, and the p heuristic."""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import pytest
import torch

from viscoin.stylegan import ops
from viscoin.stylegan.augment import (
    BLIT,
    COLOUR,
    GEOM,
    SYM6,
    AdaController,
    AugmentConfig,
    AugmentPipe,
    _resample_2x_polyphase,
    affine_resample,
    colour_matrix,
    geometric_inverse,
    shift_reflect,
)
from viscoin.utils.config import ConfigError

ALL = (*BLIT, *GEOM, *COLOUR)


def only(name: str, p: float = 1.0, **strengths: float) -> AugmentPipe:
    """A pipe with a single augmentation enabled (multiplier 1) at strength p."""
    mults = {n: 1.0 if n == name else 0.0 for n in ALL}
    return AugmentPipe(AugmentConfig(p=p, **mults, **strengths))


def smooth(n: int = 4, size: int = 32) -> torch.Tensor:
    yy, xx = torch.meshgrid(torch.arange(size).float(), torch.arange(size).float(), indexing="ij")
    img = torch.stack([torch.sin(xx / 5) + torch.cos(yy / 7), torch.cos(xx / 4 + yy / 9), torch.sin((xx + yy) / 6)])
    return (0.45 * img)[None].repeat(n, 1, 1, 1) + 0.05 * torch.arange(n).float()[:, None, None, None]


def changed(a: torch.Tensor, b: torch.Tensor, tol: float = 1e-4) -> torch.Tensor:
    """[N] bool: which samples differ."""
    return (a - b).flatten(1).abs().max(dim=1).values > tol


def test_p0_is_the_identity_and_the_default_is_bgc():
    cfg = AugmentConfig()
    assert all(getattr(cfg, n) == 1.0 for n in ALL)  # 'bgc': all twelve multipliers at 1
    x = torch.rand(16, 3, 16, 16) * 2 - 1
    torch.manual_seed(0)
    out = AugmentPipe(cfg)(x)  # p = 0
    assert (out - x).abs().max().item() < 1e-5


@pytest.mark.parametrize("name", ALL)
def test_each_augmentation_changes_images_when_chosen_and_passes_gradients(name):
    torch.manual_seed(1)
    pipe = only(name)
    x = smooth(16).requires_grad_(True)
    out = pipe(x)
    assert out.shape == x.shape
    assert changed(out, x).sum() >= 4, name  # xflip/lumaflip draw the identity half of the time
    weights = torch.randn_like(out)
    (out * weights).sum().backward()
    assert x.grad is not None and torch.isfinite(x.grad).all() and x.grad.abs().sum() > 0


@pytest.mark.parametrize("name", ["xint", "scale", "brightness", "hue"])
def test_decisions_are_per_sample_with_probability_mult_times_p(name):
    torch.manual_seed(2)
    n = 400
    pipe = only(name, p=0.5)
    x = smooth(n, size=8)
    rate = changed(pipe(x), x, 1e-6).float().mean().item()
    # Chosen with probability 0.5 per sample; a chosen sample is (almost) always changed.
    assert 0.38 < rate < 0.62, rate


def test_xflip_multiplier_is_respected():
    torch.manual_seed(3)
    n = 4000
    x = torch.arange(4.0).repeat(n, 3, 4, 1)  # [N, 3, 4, 4], asymmetric in x
    pipe = AugmentPipe(AugmentConfig(p=1.0, **{k: 0.0 for k in ALL if k != "xflip"}, xflip=0.1))
    flipped = changed(pipe(x), x).float().mean().item()
    assert abs(flipped - 0.05) < 0.015, flipped  # chosen with 0.1, then a flip with 1/2


def test_blits_are_exact_pixel_operations():
    x = torch.rand(3, 3, 8, 8)
    out = shift_reflect(x, torch.tensor([0, 2, -1]), torch.tensor([0, 1, 3]))
    assert torch.equal(out[0], x[0])
    padded = torch.nn.functional.pad(x[1:2], [2, 0, 1, 0], mode="reflect")[..., :8, :8]
    assert torch.equal(out[1:2], padded)  # content moved right by 2, down by 1, reflected in
    padded = torch.nn.functional.pad(x[2:3], [0, 1, 3, 0], mode="reflect")[..., :8, 1:]
    assert torch.equal(out[2:3], padded)
    torch.manual_seed(4)
    pipe = only("rotate90")
    y = torch.rand(32, 3, 6, 6)
    out = pipe(y)
    for i in range(32):
        assert any(torch.equal(out[i], y[i].rot90(k, [1, 2])) for k in range(4))
    pipe = only("xflip")
    out = pipe(y)
    for i in range(32):
        assert torch.equal(out[i], y[i]) or torch.equal(out[i], y[i].flip(2))


@pytest.mark.parametrize("supersample", [False, True])
def test_geometric_path_conventions(supersample):
    x = smooth(2)
    one, zero = torch.ones(2), torch.zeros(2)
    ident = affine_resample(x, geometric_inverse(one, zero, one, zero, zero, zero), supersample)
    assert (ident - x).abs().max() < 1e-5
    # A one-pixel translation equals the exact shift (away from the reflected border).
    shifted = affine_resample(x, geometric_inverse(one, zero, one, zero, one, zero), supersample)
    exact = shift_reflect(x, torch.ones(2, dtype=torch.long), torch.zeros(2, dtype=torch.long))
    assert (shifted - exact)[..., 4:-4, 4:-4].abs().max() < 1e-4
    # A quarter turn is a rot90: exactly at 1x (about the image centre); at 2x up to the filtering
    # (§3.2 measured 0.05 on smooth images), the official 1/4 px centre offset and the sym6 phase
    # nearly cancelling (see `affine_resample`).
    turned = affine_resample(x, geometric_inverse(one, zero + math.pi / 2, one, zero, zero, zero), supersample)
    err = min((turned - x.rot90(k, [2, 3]))[..., 4:-4, 4:-4].abs().max().item() for k in (1, 3))
    assert err < (0.05 if supersample else 1e-4), err
    # Scaling by 2 about the centre magnifies: the centre pixels spread outwards.
    big = affine_resample(x, geometric_inverse(one * 2, zero, one, zero, zero, zero), supersample)
    c = x.shape[-1] // 2
    ref = torch.nn.functional.interpolate(x[..., c - 8 : c + 8, c - 8 : c + 8], scale_factor=2, mode="bilinear",
                                          align_corners=False)
    assert (big - ref)[..., 4:-4, 4:-4].abs().max() < 0.06


def _reference_geometric(x: np.ndarray, inverse: np.ndarray, half_pixel_step: bool = True) -> np.ndarray:
    """The official 2x geometric path (§3.2), step by step in float64, independent of `affine_resample`.

    x [C, H, W]; `inverse` [3, 3] maps output to source pixel coordinates relative to ((W-1)/2, (H-1)/2).
    The matrix is brought to the 2x grid as the official code does: re-centred on the padded image,
    conjugated by a 2x scale, then by a (-1/2, -1/2) translation at the 2x rate (`half_pixel_step`;
    without it the centre is the nominal one), and applied to `affine_grid`'s positions
    (align_corners=False: pixel k of an n-pixel axis sits at k - (n-1)/2 from its centre).
    """
    c, h, w = x.shape
    f = np.asarray(SYM6, np.float64) / sum(SYM6)
    cx, cy = (w - 1) / 2, (h - 1) / 2
    # 1. Reflect-pad: corner pixels through the inverse, excursion beyond them + 6, clip to [0, size-1], ceil.
    corners = inverse @ np.array([[-cx, cx, cx, -cx], [-cy, -cy, cy, cy], [1, 1, 1, 1]])
    need = [-corners[0].min() - cx, -corners[1].min() - cy, corners[0].max() - cx, corners[1].max() - cy]
    left, top, right, bottom = (math.ceil(min(max(v + 6, 0), lim)) for v, lim in zip(need, [w - 1, h - 1] * 2))
    x = np.pad(x, [(0, 0), (top, bottom), (left, right)], mode="reflect")
    hp, wp = x.shape[1:]

    # 2. Upsample x2: zero insertion, pad (6, 5), convolution with the 12 taps, gain 2 per axis:
    #    out[j] = 2 * sum_i x[i] f[5 + j - 2i]  (as a [2n, n] matrix per axis).
    def up(n: int) -> np.ndarray:
        k = 5 + np.arange(2 * n)[:, None] - 2 * np.arange(n)[None, :]
        return np.where((k >= 0) & (k < 12), 2 * f[k.clip(0, 11)], 0.0)

    x = np.einsum("ya,cab,xb->cyx", up(hp), x, up(wp))

    # 3. The output grid at 2x, 3 px (1x) wider on each side; each position through the converted matrix.
    ho, wo = 2 * (h + 6), 2 * (w + 6)
    qy, qx = np.meshgrid(np.arange(ho) - (ho - 1) / 2, np.arange(wo) - (wo - 1) / 2, indexing="ij")
    step = 0.5 if half_pixel_step else 0.0
    p1 = (np.stack([qx, qy]) + step) / 2                                      # to 1x units
    src = np.einsum("ij,jyx->iyx", inverse[:2, :2], p1) + inverse[:2, 2, None, None]
    src += np.array([(left - right) / 2, (top - bottom) / 2])[:, None, None]  # re-centred on the padded image
    sx = 2 * src[0] - step + (2 * wp - 1) / 2                                 # back to 2x, as pixel indices
    sy = 2 * src[1] - step + (2 * hp - 1) / 2
    # Bilinear, zeros outside.
    x0, y0 = np.floor(sx).astype(int), np.floor(sy).astype(int)
    out = np.zeros((c, ho, wo))
    for dy, wy in ((0, 1 - (sy - y0)), (1, sy - y0)):
        for dx, wx in ((0, 1 - (sx - x0)), (1, sx - x0)):
            yy, xx = y0 + dy, x0 + dx
            inside = (yy >= 0) & (yy < 2 * hp) & (xx >= 0) & (xx < 2 * wp)
            out += np.where(inside, x[:, yy.clip(0, 2 * hp - 1), xx.clip(0, 2 * wp - 1)], 0.0) * wy * wx

    # 4. Downsample x2: correlation with the taps, the rim and one more pixel cropped:
    #    y[m] = sum_k out[2m + 1 + k] f[k]  (as an [n, 2n + 12] matrix per axis).
    def down(n: int) -> np.ndarray:
        k = np.arange(2 * n + 12)[None, :] - 2 * np.arange(n)[:, None] - 1
        return np.where((k >= 0) & (k < 12), f[k.clip(0, 11)], 0.0)

    return np.einsum("ya,cab,xb->cyx", down(h), out, down(w))


# The ways `affine_resample` computes the 2x path: the same maths, different work (and float rounding).
FILTERINGS = {"direct": {"filtering": "direct"}, "polyphase": {"crop": False}, "polyphase+crop": {"crop": True}}


@pytest.mark.parametrize("variant", FILTERINGS)
def test_geometric_resampling_matches_the_official_centre(variant):
    """At fixed parameters the 2x path equals the official one; its centre is 1/4 px off the nominal one."""
    x = -np.ones((1, 16, 16))
    x[:, 5:11, 4:12] = 1.0  # a sharp-edged, off-centre rectangle, so a 1/4 px shift shows
    cases = {  # scale, pre-rotation, aniso, post-rotation, tx, ty
        "rotation": (1.0, 0.5, 1.0, 0.0, 0.0, 0.0),
        "quarter turn": (1.0, math.pi / 2, 1.0, 0.0, 0.0, 0.0),
        "scale": (1.3, 0.0, 1.0, 0.0, 0.0, 0.0),
        "aniso": (1.0, 0.0, 0.7, 0.0, 0.0, 0.0),
        "all": (0.8, -2.0, 1.25, 0.9, 1.3, -0.7),
    }
    params = torch.tensor(list(cases.values()), dtype=torch.float64).T
    inverse = geometric_inverse(*params)  # [5, 3, 3] float64
    ours = affine_resample(torch.tensor(x, dtype=torch.float32)[None].repeat(len(cases), 1, 1, 1), inverse,
                           **FILTERINGS[variant])
    for i, name in enumerate(cases):
        official = _reference_geometric(x, inverse[i].numpy())
        nominal = _reference_geometric(x, inverse[i].numpy(), half_pixel_step=False)
        err = np.abs(ours[i].double().numpy() - official).max()
        assert err < 1e-5, (name, err)  # float32 rounding
        assert np.abs(nominal - official).max() > 0.05, name  # the nominal centre would fail above


# ----------------------------------------------------------------------------------------------
# The polyphase 2x path equals the direct one (zero insertion + full conv, full conv + decimation)


@pytest.mark.parametrize("taps", [SYM6, [1, 3, 3, 1], [1, 2, 1], [1.0], [1, 2, 3, 4, 5]])
@pytest.mark.parametrize("up", [2, 3])
def test_polyphase_upsampling_equals_zero_insertion(taps, up):
    f = ops.setup_filter(taps)
    gen = torch.Generator().manual_seed(len(taps) * 10 + up)
    for h, w in [(7, 9), (16, 16), (1, 1)]:
        x = torch.randn(2, 3, h, w, generator=gen).requires_grad_(True)
        weights = torch.randn(2, 3, up * h, up * w, generator=gen)
        ref = ops.upsample2d(x, f, up=up)
        out = ops.upsample2d_polyphase(x, f, up=up)
        assert out.shape == ref.shape == (2, 3, up * h, up * w)
        assert (out - ref).abs().max() < 1e-5
        (g_ref,) = torch.autograd.grad((ref * weights).sum(), x)
        (g_out,) = torch.autograd.grad((out * weights).sum(), x)
        assert (g_out - g_ref).abs().max() < 1e-5


def test_strided_downsampling_equals_decimation():
    f = ops.setup_filter(SYM6)
    gen = torch.Generator().manual_seed(0)
    for shape, padding in [((2, 3, 30, 30), [0] * 4), ((1, 2, 27, 33), [-1, 2, 0, 5]), ((2, 1, 40, 24), [5] * 4)]:
        x = torch.randn(*shape, generator=gen).requires_grad_(True)
        ref = ops.upfirdn2d(x, f, down=2, padding=padding)
        out = ops.upfirdn2d(x, f, down=2, padding=padding, strided=True)
        assert out.shape == ref.shape and (out - ref).abs().max() < 1e-5
        weights = torch.randn(ref.shape, generator=gen)
        (g_ref,) = torch.autograd.grad((ref * weights).sum(), x)
        (g_out,) = torch.autograd.grad((out * weights).sum(), x)
        assert (g_out - g_ref).abs().max() < 1e-5


def _forward_and_grads(fn, x: torch.Tensor, seed: int) -> dict[str, torch.Tensor]:
    """fn(x), d<fn(x), w>/dx, and an R1-like double backward: the gradient w.r.t. x and a scalar
    'network' parameter theta of |d sum(w * softplus(theta * fn(x))) / dx|^2 (as `r1_penalty`)."""
    gen = torch.Generator().manual_seed(seed)
    x = x.detach().requires_grad_(True)
    theta = torch.tensor(1.3, requires_grad=True)
    out = fn(x)
    weights = torch.randn(out.shape, generator=gen)
    (gx,) = torch.autograd.grad((out * weights).sum(), x, retain_graph=True)
    (g1,) = torch.autograd.grad((torch.nn.functional.softplus(theta * out) * weights).sum(), x, create_graph=True)
    gx2, gtheta = torch.autograd.grad(g1.square().sum(), [x, theta])
    return {"out": out.detach(), "grad": gx, "r1 grad x": gx2, "r1 grad theta": gtheta}


def _relative_errors(new: dict[str, torch.Tensor], ref: dict[str, torch.Tensor]) -> dict[str, float]:
    return {k: ((new[k] - ref[k]).abs().max() / ref[k].abs().max().clamp(min=1e-12)).item() for k in ref}


# Inverse maps: scale, pre-rotation, aniso, post-rotation, tx, ty -- mild ones, a zoom-out that
# reads past the (clipped) padding into zeros, one that reads only zeros, a 45 degree turn.
RESAMPLE_CASES = [
    (1.0, 0.3, 1.0, 0.0, 0.4, -0.2),
    (0.4, 0.0, 1.3, 0.7, 0.0, 0.0),
    (1.0, 0.0, 1.0, 0.0, 200.0, 3.0),
    (1.2, math.pi / 4, 0.8, -0.3, -2.5, 1.5),
    (0.7, -2.0, 1.25, 0.9, 1.3, -0.7),
    (2.0, 1.0, 1.0, 0.0, 0.0, 0.0),
]


@pytest.mark.parametrize("size", [(16, 16), (17, 17), (20, 27), (32, 32), (64, 64)])
@pytest.mark.parametrize("crop", [False, True])
def test_polyphase_resampling_equals_direct(size, crop):
    """Forward, gradient and R1 double backward of the 2x path: polyphase (and cropped) = direct."""
    params = torch.tensor(RESAMPLE_CASES).T
    inverse = geometric_inverse(*params)
    n = len(RESAMPLE_CASES)
    gen = torch.Generator().manual_seed(size[0] * 100 + size[1])
    x = torch.rand(n, 3, *size, generator=gen) * 2 - 1               # images in [-1, 1]
    ref = _forward_and_grads(lambda t: affine_resample(t, inverse, filtering="direct"), x, 1)
    new = _forward_and_grads(lambda t: affine_resample(t, inverse, crop=crop), x, 1)
    assert new["out"].shape == x.shape
    assert (new["out"] - ref["out"]).abs().max() < 3e-5                 # measured up to 1.3e-5 (cropped)
    errors = _relative_errors(new, ref)
    assert max(errors.values()) < 3e-5, errors
    assert ref["out"][2].abs().max() == 0                               # the case that reads only zeros


def test_crop_windows_hold_every_pixel_that_the_output_depends_on():
    """Cropping drops pixels exactly (their gradient is 0): every padded pixel with a gradient in
    the uncropped path must keep one, so the windows miss no filter tap and no bilinear neighbour."""
    h = w = 24
    gen = torch.Generator().manual_seed(3)
    xp = torch.randn(len(RESAMPLE_CASES) + 8, 3, h + 40, w + 40, generator=gen)  # as if padded by 20
    params = torch.cat([torch.tensor(RESAMPLE_CASES).T,                          # + 8 random mild maps
                        torch.stack([torch.exp2(torch.randn(8, generator=gen) * 0.3), torch.rand(8, generator=gen) * 6,
                                     torch.exp2(torch.randn(8, generator=gen) * 0.3), torch.rand(8, generator=gen) * 6,
                                     torch.randn(8, generator=gen) * 3, torch.randn(8, generator=gen) * 3])], dim=1)
    inverse = geometric_inverse(*params)
    weights = torch.randn(xp.shape[0], 3, h, w, generator=gen)
    grads = {}
    for crop in (False, True):
        x = xp.clone().requires_grad_(True)
        out = _resample_2x_polyphase(x, inverse, 20, 20, h, w, crop)
        (grads[crop],) = torch.autograd.grad((out * weights).sum(), x)
    used = grads[False].abs() > 0
    assert not (used & (grads[True] == 0)).any()
    assert (grads[True][~used] == 0).all()
    assert (grads[True] == 0).float().mean() > 0.3                 # the windows do crop


@pytest.mark.parametrize("p", [0.0, 0.2, 0.6, 1.0])
@pytest.mark.parametrize("n, c, size, extra", [(5, 3, (16, 16), {}), (16, 3, (32, 32), {}), (4, 3, (64, 64), {}),
                                               (1, 3, (64, 64), {}), (6, 1, (17, 17), {}),
                                               (3, 3, (20, 27), {"rotate90": 0.0})])
def test_pipe_polyphase_equals_direct(p, n, c, size, extra):
    """The whole pipe with the default filtering = the direct one, with the same random draws:
    forward without gradients (cropped at 64 px on the CPU), and forward, gradient, R1 double
    backward (not cropped by default)."""
    gen = torch.Generator().manual_seed(n * 1000 + size[1])
    x = torch.rand(n, c, *size, generator=gen) * 2 - 1
    pipes = {name: AugmentPipe(AugmentConfig(p=p, **extra), filtering=name) for name in ("polyphase", "direct")}
    for seed in range(2):
        results = {}
        for name, pipe in pipes.items():
            def run(t: torch.Tensor, pipe: AugmentPipe = pipe) -> torch.Tensor:
                torch.manual_seed(seed)
                return pipe(t)
            results[name] = _forward_and_grads(run, x, seed)
            with torch.no_grad():
                results[name]["out, no grad"] = run(x)
        errors = _relative_errors(results["polyphase"], results["direct"])
        assert max(errors.values()) < 3e-5, (seed, errors)              # measured up to 1.1e-5
        if p == 0:
            assert max(errors.values()) == 0


def test_filtering_is_checked():
    with pytest.raises(ValueError, match="filtering"):
        AugmentPipe(filtering="fast")  # type: ignore[arg-type]
    one, zero = torch.ones(1), torch.zeros(1)
    with pytest.raises(ValueError, match="filtering"):
        affine_resample(smooth(1), geometric_inverse(one, zero, one, zero, zero, zero),
                        filtering="fast")  # type: ignore[arg-type]


def test_colour_matrices_on_known_colours():
    zero, one = torch.zeros(1), torch.ones(1)

    def apply(m: torch.Tensor, rgb: list[float]) -> torch.Tensor:
        return m[0, :3, :3] @ torch.tensor(rgb) + m[0, :3, 3]

    grey, chroma = [0.3, 0.3, 0.3], [0.5, -0.5, 0.0]
    flip = colour_matrix(zero, one, one, zero, one)
    assert torch.allclose(apply(flip, grey), torch.tensor([-0.3, -0.3, -0.3]), atol=1e-6)  # grey axis onto itself, flipped
    assert torch.allclose(apply(flip, chroma), torch.tensor(chroma), atol=1e-6)           # orthogonal colours kept
    turn = colour_matrix(zero, one, zero, one * 2 * math.pi / 3, one)
    assert torch.allclose(apply(turn, grey), torch.tensor(grey), atol=1e-6)               # hue keeps greys
    assert torch.allclose(apply(turn, [1.0, 0, 0]), torch.tensor([0.0, 1, 0]), atol=1e-6)  # red -> green at 120 deg
    desat = colour_matrix(zero, one, zero, zero, zero)
    assert torch.allclose(apply(desat, [0.9, 0.0, -0.3]), torch.full((3,), 0.2), atol=1e-6)  # saturation 0: grey
    bc = colour_matrix(one * 0.1, one * 2, zero, zero, one)
    assert torch.allclose(apply(bc, [0.2, -0.4, 0.0]), torch.tensor([0.6, -0.6, 0.2]), atol=1e-6)  # (x + 0.1) * 2
    identity = colour_matrix(zero, one, zero, zero, one)
    assert torch.equal(identity, torch.eye(4)[None])


def test_greyscale_images_use_the_mean_row():
    torch.manual_seed(5)
    pipe = only("contrast")
    x = torch.rand(8, 1, 8, 8) * 2 - 1
    out = pipe(x)
    ratio = (out / x).flatten(1)
    assert torch.allclose(ratio, ratio[:, :1].expand_as(ratio), atol=1e-4)  # one factor per image


def test_p_is_a_saved_buffer():
    pipe = AugmentPipe(AugmentConfig(p=0.25))
    assert list(pipe.state_dict()) == ["p"] and float(pipe.state_dict()["p"]) == 0.25
    other = AugmentPipe()
    other.load_state_dict(pipe.state_dict())
    assert float(other.p) == 0.25


def test_ada_controller_raises_p_when_d_is_overconfident_and_not_otherwise():
    pipe = AugmentPipe()
    ada = AdaController(pipe, batch_size=32, target=0.6, interval=4, kimg=500)
    step = 32 * 4 / 500_000  # 2.56e-4 (§3.4)
    for _ in range(4):
        ada.observe(torch.full((32, 1), 3.0))  # D sure every real is real: r_t = 1 > 0.6
    assert ada.update() == 1.0
    assert float(pipe.p) == pytest.approx(step)
    ada.observe(torch.tensor([[1.0], [1.0], [-1.0], [0.5]]))  # r_t = 0.5 < 0.6: back down
    assert ada.update() == 0.5 and float(pipe.p) == pytest.approx(0.0, abs=1e-9)
    ada.observe(-torch.ones(8, 1))
    ada.update()
    assert float(pipe.p) == 0.0  # clamped at 0
    pipe.p.fill_(0.999)
    for _ in range(3):
        ada.observe(torch.ones(8, 1))
        ada.update()
    assert float(pipe.p) > 0.999  # no upper clamp
    # Statistics between two updates survive a checkpoint.
    ada.observe(torch.tensor([[1.0], [-1.0], [1.0]]))
    state = ada.state_dict()
    assert state == {"sign_sum": 1.0, "count": 3.0}
    other = AdaController(AugmentPipe(), 32)
    other.load_state_dict(state)
    other.observe(torch.ones(1, 1))
    assert other.update() == 0.5


def test_fixed_p_is_not_adjusted():
    pipe = AugmentPipe(AugmentConfig(mode="fixed", p=0.3))
    ada = AdaController(pipe, batch_size=8, target=None)
    ada.observe(torch.ones(8, 1))
    assert ada.update() == 1.0 and float(pipe.p) == pytest.approx(0.3)


def test_config_validation():
    with pytest.raises(ConfigError, match="augment.xflip"):
        AugmentConfig(xflip=2.0)
    with pytest.raises(ConfigError, match="augment.kimg"):
        AugmentConfig(kimg=0)
    cfg = AugmentConfig.from_dict({"xflip": 0.1, "mode": "fixed", "p": 0.2})
    assert dataclasses.asdict(cfg)["xflip"] == 0.1

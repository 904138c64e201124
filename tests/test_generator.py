"""The clean-room generator against the official implementation's golden outputs, and its contract."""

from __future__ import annotations

import math

import pytest
import torch

from conftest import GENERATOR_FIXTURES, fixture_config, fixture_order, fixture_tensors, matches_golden
from viscoin.stylegan.config import GeneratorConfig, MappingConfig, SynthesisConfig
from viscoin.stylegan.generator import Generator, z_from_seed
from viscoin.utils.io import copy_named_tensors


def fixture_generator(name: str) -> Generator:
    G = Generator(GeneratorConfig.from_official(fixture_config(name)))
    copy_named_tensors(G, fixture_tensors(name, "state_dict.safetensors"), where=name)
    return G.eval()


@pytest.mark.parametrize("name", GENERATOR_FIXTURES)
def test_state_dict_names_and_order_match_official(name):
    G = Generator(GeneratorConfig.from_official(fixture_config(name)))
    assert list(G.state_dict()) == fixture_order(name, "state_dict.safetensors")


@pytest.mark.parametrize("name", GENERATOR_FIXTURES)
def test_mapping_matches_golden_bit_for_bit(name):
    G = fixture_generator(name)
    g = fixture_tensors(name, "golden.safetensors")
    c = g.get("c")
    with torch.no_grad():
        assert matches_golden(G.mapping(g["z"], c), g["ws_psi1"])
        assert matches_golden(G.mapping(g["z"], c, truncation_psi=0.7), g["ws_psi0p7"])
        cut = G.mapping(g["z"], c, truncation_psi=0.7, truncation_cutoff=G.num_ws // 2)
        assert matches_golden(cut, g["ws_psi0p7_cutoff"])


@pytest.mark.parametrize("name", GENERATOR_FIXTURES)
def test_images_match_golden(name):
    G = fixture_generator(name)
    g = fixture_tensors(name, "golden.safetensors")
    cases = [
        ("img_psi1_const", "ws_psi1", "const"),
        ("img_psi0p7_const", "ws_psi0p7", "const"),
        ("img_wplus_const", "ws_plus", "const"),
        ("img_psi1_none", "ws_psi1", "none"),
        ("img_psi0p7_cutoff_const", "ws_psi0p7_cutoff", "const"),
    ]
    checked = 0
    with torch.no_grad():
        for img_key, ws_key, noise_mode in cases:
            if img_key not in g:
                continue
            img = G.synthesis(g[ws_key], noise_mode=noise_mode)
            err = (img - g[img_key]).abs().max().item()
            assert err <= 1e-4, f"{name} {img_key}: max abs error {err}"
            assert matches_golden(img, g[img_key]), f"{name} {img_key} not bit-exact (max abs error {err})"
            checked += 1
        # Full forward from z with truncation equals synthesis(mapping(...)).
        img = G(g["z"], g.get("c"), truncation_psi=0.7, noise_mode="const")
        assert matches_golden(img, g["img_psi0p7_const"])
    assert checked >= 3


def test_fp16_blocks_match_official_cpu_fp16_path():
    G = fixture_generator("g32")
    g = fixture_tensors("g32", "golden.safetensors")
    with torch.no_grad():
        img = G.synthesis(g["ws_psi1"], noise_mode="const", fp16=True)
    assert img.dtype == torch.float32
    assert (img - g["img_psi1_const_fp16cpu"]).abs().max().item() <= 3e-2
    # fp16 really ran: it differs from the float32 result.
    assert not torch.equal(img, g["img_psi1_const"])


def test_traces_of_each_block_match():
    G = fixture_generator("g32")
    g = fixture_tensors("g32", "golden.safetensors")
    seen = {}
    hooks = []
    for res in G.synthesis.block_resolutions:
        block = getattr(G.synthesis, f"b{res}")
        hooks.append(block.register_forward_hook(lambda m, i, o, r=res: seen.__setitem__(r, o)))
    with torch.no_grad():
        G.synthesis(g["ws_psi1"], noise_mode="const")
    for h in hooks:
        h.remove()
    for res, (x, img) in seen.items():
        assert matches_golden(x, g[f"trace.synthesis.b{res}.x"]), res
        assert matches_golden(img, g[f"trace.synthesis.b{res}.img"]), res


def small_config(res: int, architecture: str = "skip", c_dim: int = 0) -> GeneratorConfig:
    return GeneratorConfig(
        z_dim=16,
        w_dim=16,
        c_dim=c_dim,
        img_resolution=res,
        mapping=MappingConfig(num_layers=2),
        synthesis=SynthesisConfig(channel_base=4 * res, channel_max=16, architecture=architecture),
    )


@pytest.mark.parametrize("res", [4, 32, 64, 256])
def test_shapes_finite_and_gradients_reach_wplus(res):
    G = Generator(small_config(res)).eval()
    assert G.num_ws == 2 * int(math.log2(res)) - 2
    z = torch.randn(2, G.z_dim)
    with torch.no_grad():
        img = G(z)
    assert img.shape == (2, 3, res, res) and torch.isfinite(img).all()

    ws = G.map(z).detach().requires_grad_(True)
    assert ws.shape == (2, G.num_ws, G.w_dim)
    img = G.synthesis(ws)
    img.square().mean().backward()
    assert ws.grad is not None and torch.isfinite(ws.grad).all()
    # Every W+ vector influences the image (each layer reads its own w).
    assert (ws.grad.abs().sum(dim=(0, 2)) > 0).all()


@pytest.mark.parametrize("architecture", ["orig", "skip", "resnet"])
def test_architectures_forward_backward_params(architecture):
    G = Generator(small_config(16, architecture=architecture, c_dim=3)).train()
    z, c = torch.randn(4, 16), torch.eye(3)[[0, 1, 2, 0]]
    img = G(z, c)
    assert img.shape == (4, 3, 16, 16)
    img.mean().backward()
    for name, p in G.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), name


def test_w_from_single_vector_equals_broadcast_wplus():
    G = Generator(small_config(32)).eval()
    w = torch.randn(3, G.w_dim)
    with torch.no_grad():
        a = G.synthesis(w)
        b = G.synthesis(w[:, None, :].repeat(1, G.num_ws, 1))
    assert torch.equal(a, b)


def test_fused_and_non_fused_modconv_agree():
    G = fixture_generator("g32")
    g = fixture_tensors("g32", "golden.safetensors")
    with torch.no_grad():
        a = G.synthesis(g["ws_psi1"], noise_mode="const", fused_modconv=False)
    assert (a - g["img_psi1_const"]).abs().max().item() < 2e-4


def test_noise_modes():
    G = fixture_generator("g32")
    ws = fixture_tensors("g32", "golden.safetensors")["ws_psi1"]
    with torch.no_grad():
        const1, const2 = G.synthesis(ws), G.synthesis(ws, noise_mode="const")
        r1, r2 = G.synthesis(ws, noise_mode="random"), G.synthesis(ws, noise_mode="random")
        none = G.synthesis(ws, noise_mode="none")
    assert torch.equal(const1, const2)  # eval default is const: deterministic
    assert not torch.equal(r1, r2) and not torch.equal(none, const1)
    with pytest.raises(ValueError, match="noise_mode"):
        G.synthesis(ws, noise_mode="fixed")


def test_w_avg_tracks_only_in_training_mode():
    G = Generator(small_config(8))
    z = torch.randn(64, 16)
    G.eval()
    G(z)
    assert torch.count_nonzero(G.w_avg) == 0
    G.train()
    w = G.mapping(z, update_w_avg=False)
    assert torch.count_nonzero(G.w_avg) == 0
    G.mapping(z)
    expected = w[:, 0].mean(0) * (1 - 0.995)  # lerp(mean, 0, 0.995)
    assert torch.allclose(G.w_avg, expected, atol=1e-7)


def test_input_errors_are_clear():
    G = Generator(small_config(8))
    with pytest.raises(ValueError, match=r"z: expected shape \[N, 16\]"):
        G(torch.randn(2, 15))
    with pytest.raises(ValueError, match=r"ws: expected shape \[N, 4, 16\]"):
        G.synthesis(torch.randn(2, 5, 16))
    with pytest.raises(ValueError, match="unconditional"):
        G(torch.randn(2, 16), torch.ones(2, 3))
    Gc = Generator(small_config(8, c_dim=3))
    with pytest.raises(ValueError, match=r"conditional and expects labels of shape \[N, 3\]"):
        Gc(torch.randn(2, 16))


def test_config_validation_names_the_option():
    from viscoin.utils.config import ConfigError

    with pytest.raises(ConfigError, match="img_resolution: expected a power of two"):
        GeneratorConfig(img_resolution=48)
    with pytest.raises(ConfigError, match=r"unknown key\(s\) \['bogus'\]"):
        GeneratorConfig.from_official({"z_dim": 8, "w_dim": 8, "img_resolution": 8, "img_channels": 3, "c_dim": 0, "bogus": 1})
    with pytest.raises(ConfigError, match="synthesis.architecture"):
        GeneratorConfig.from_dict({"synthesis": {"architecture": "unet"}})
    with pytest.raises(ConfigError, match="mapping.num_layers: expected an integer"):
        GeneratorConfig.from_dict({"mapping": {"num_layers": "two"}})


def test_official_256_parameter_count():
    # Format spec §2.3, worked example A: 144 entries, 30,034,338 trainable floats.
    cfg = GeneratorConfig(z_dim=512, w_dim=512, img_resolution=256)
    with torch.device("meta"):
        G = Generator(cfg)
    assert len(G.state_dict()) == 144
    assert sum(p.numel() for p in G.parameters()) == 30_034_338
    assert G.num_ws == 14


def test_z_from_seed_matches_numpy_randomstate():
    import numpy as np

    z = z_from_seed(42, 8)
    assert z.dtype == torch.float32 and z.shape == (1, 8)
    assert torch.equal(z, torch.from_numpy(np.random.RandomState(42).randn(1, 8)).float())


def test_synthesis_runs_under_bf16_autocast():
    """VisCoIN trains through G under bf16 autocast on GPUs; the CPU autocast exercises the same code path."""
    G = Generator(small_config(32)).eval()
    ws = G.map(torch.randn(2, G.z_dim)).detach().requires_grad_(True)
    ref = G.synthesis(ws)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        img = G.synthesis(ws)
        assert img.dtype == torch.bfloat16                  # autocast took effect (not a float32 pass)
    assert img.shape == ref.shape and torch.isfinite(img.float()).all()
    assert (img.float() - ref).abs().max() < 0.05 * ref.abs().max() + 0.05
    assert not torch.equal(img.float(), ref)                # and it computed in bf16: not bit-equal to float32
    img.float().square().mean().backward()
    assert ws.grad is not None and ws.grad.abs().sum() > 0

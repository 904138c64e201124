"""Tests of the StyleGAN2-ADA discriminator against the official goldens (CPU, float32).

Fixtures: ``tests/fixtures/stylegan2_ada/{g32,cond16}/d_*`` (see the README there, discriminator
section). The float32 forward is expected to agree with the official ``force_fp32=True`` forward
bit for bit on the CPU the goldens were made on, and to float32 rounding elsewhere (`conftest.matches_golden`).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from conftest import matches_golden
from safetensors import safe_open
from safetensors.torch import load_file

from viscoin.stylegan.config import (
    DiscriminatorBlockConfig,
    DiscriminatorConfig,
    EpilogueConfig,
)
from viscoin.stylegan.discriminator import (
    Discriminator,
    DiscriminatorBlock,
    DiscriminatorEpilogue,
    MinibatchStdLayer,
)

FIXTURES = Path(__file__).parent / "fixtures" / "stylegan2_ada"
D_FIXTURES = ["g32", "cond16"]


# ------------------------------------------------------------------------------------------------
# Helpers


def _load_fixture(name: str) -> tuple[Discriminator, dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """The official D of fixture `name`, strictly loaded and in eval mode, with its and G's goldens."""
    folder = FIXTURES / name
    init_kwargs = json.loads((folder / "d_config.json").read_text())
    D = Discriminator(DiscriminatorConfig.from_official(init_kwargs))
    D.load_state_dict(load_file(folder / "d_state_dict.safetensors"), strict=True)
    D.eval()
    return D, load_file(folder / "d_golden.safetensors"), load_file(folder / "golden.safetensors")


@pytest.fixture(scope="module", params=D_FIXTURES)
def fixture(request):
    return request.param, *_load_fixture(request.param)


def _trace_hooks(D: Discriminator, store: dict[str, torch.Tensor]) -> list:
    """Forward hooks recording the tensors named like the golden traces into `store`."""
    handles = []

    def record_output(key):
        def hook(_module, _inputs, output):
            store[key] = (output[0] if isinstance(output, tuple) else output).detach().clone()

        return hook

    def record_input(key):
        def hook(_module, inputs):
            if isinstance(inputs[0], torch.Tensor):
                store[key] = inputs[0].detach().clone()

        return hook

    for name, module in D.named_modules():
        if isinstance(module, DiscriminatorBlock):
            handles.append(module.register_forward_hook(record_output(f"trace.{name}.x")))
        elif name:
            handles.append(module.register_forward_hook(record_output(f"trace.{name}.output")))
            handles.append(module.register_forward_pre_hook(record_input(f"trace.{name}.input")))
    return handles


def _small_config(res: int, c_dim: int, architecture: str, **kw) -> DiscriminatorConfig:
    return DiscriminatorConfig(
        c_dim=c_dim,
        img_resolution=res,
        img_channels=3,
        architecture=architecture,
        channel_base=16 * res if res <= 8 else 128,
        channel_max=8,
        **kw,
    )


# ------------------------------------------------------------------------------------------------
# Official fixtures


def test_state_dict_names_and_order(fixture):
    name, D, _, _ = fixture
    path = FIXTURES / name / "d_state_dict.safetensors"
    with safe_open(path, "pt") as f:
        order = json.loads(f.metadata()["state_dict_order"])
    assert list(D.state_dict()) == order
    # A freshly built D has the same names, shapes and order.
    fresh = Discriminator(D.config)
    stored = load_file(path)
    assert list(fresh.state_dict()) == order
    assert {k: tuple(v.shape) for k, v in fresh.state_dict().items()} == {k: tuple(v.shape) for k, v in stored.items()}
    expected_trainable = {"g32": 142_345, "cond16": 15_896}[name]
    assert sum(p.numel() for p in D.parameters()) == expected_trainable


def test_logits_bit_exact(fixture):
    name, D, gold, _ = fixture
    c = gold.get("c")
    with torch.no_grad():
        out = D(gold["img"], c)
    assert out.shape == (4, 1) and out.dtype == torch.float32
    assert matches_golden(out, gold["logits"]), (out - gold["logits"]).abs().max()


def test_logits_batch_variants_bit_exact(fixture):
    """Batch 2 (mbstd group 2) and batch 8 (two strided groups of 4)."""
    name, D, gold, gen = fixture
    c = gold.get("c")
    with torch.no_grad():
        first2 = D(gold["img"][:2], None if c is None else c[:2])
        img8 = torch.cat([gold["img"], gen["img_psi1_const"]])
        c8 = None if c is None else torch.cat([c, gen["c"]])
        cat8 = D(img8, c8)
    assert matches_golden(first2, gold["logits_first2"]), (first2 - gold["logits_first2"]).abs().max()
    assert matches_golden(cat8, gold["logits_cat8"]), (cat8 - gold["logits_cat8"]).abs().max()


def test_logits_on_generator_images_bit_exact(fixture):
    name, D, gold, gen = fixture
    keys = sorted(k for k in gold if k.startswith("logits_g_"))
    assert len(keys) == {"g32": 6, "cond16": 5}[name]
    with torch.no_grad():
        for key in keys:
            img = gen[key[len("logits_g_"):]]
            out = D(img, gen.get("c"))
            assert matches_golden(out, gold[key]), (key, (out - gold[key]).abs().max())


def test_traces_bit_exact(fixture):
    name, D, gold, _ = fixture
    store: dict[str, torch.Tensor] = {}
    handles = _trace_hooks(D, store)
    try:
        with torch.no_grad():
            D(gold["img"], gold.get("c"))
    finally:
        for h in handles:
            h.remove()
    keys = sorted(k for k in gold if k.startswith("trace."))
    assert "trace.b4.mbstd.output" in keys and "trace.b8.x" in keys
    if name == "cond16":
        assert "trace.mapping.fc0.input" in keys and "trace.b16.skip.output" in keys
    for key in keys:
        assert key in store, f"no hook recorded {key}"
        assert store[key].shape == gold[key].shape, (key, store[key].shape, gold[key].shape)
        assert matches_golden(store[key], gold[key]), (key, (store[key] - gold[key]).abs().max())


def test_fp16_cpu_close_to_official():
    D, gold, _ = _load_fixture("g32")
    try:
        with torch.no_grad():
            out = D(gold["img"], None, fp16=True)
    except RuntimeError as exc:  # pragma: no cover - depends on the torch build
        pytest.skip(f"float16 convolutions are not supported on this CPU build of torch: {exc}")
    assert out.dtype == torch.float32
    torch.testing.assert_close(out, gold["logits_fp16cpu"], atol=3e-3, rtol=0)
    # It really ran in half precision: not identical to the float32 result.
    assert not torch.equal(out, gold["logits"])


def test_fp16_block_dtypes():
    D, gold, _ = _load_fixture("g32")
    dtypes = {}
    handles = [
        getattr(D, f"b{r}").register_forward_hook(lambda m, i, o, r=r: dtypes.__setitem__(r, o[0].dtype))
        for r in D.block_resolutions
    ]
    with torch.no_grad():
        D(gold["img"], fp16=True)
    for h in handles:
        h.remove()
    # num_fp16_res=4 at 32 px: fp16 from max(2**(5+1-4), 8) = 8, so every block.
    assert dtypes == {32: torch.float16, 16: torch.float16, 8: torch.float16}
    cfg = DiscriminatorConfig(img_resolution=32, channel_base=256, channel_max=16, num_fp16_res=2)
    assert [getattr(Discriminator(cfg), f"b{r}").use_fp16 for r in (32, 16, 8)] == [True, True, False]


# ------------------------------------------------------------------------------------------------
# Structure for other configurations


def _meta_discriminator(cfg: DiscriminatorConfig) -> Discriminator:
    """Built on the meta device: shapes only, no memory, no random init."""
    with torch.device("meta"):
        return Discriminator(cfg)


@pytest.mark.parametrize(
    "c_dim, channel_base, entries, trainable",
    [(0, 32768, 64, 28_864_129), (0, 16384, 64, 24_001_089), (10, 32768, 82, 31_233_152)],
)
def test_worked_example_sizes(c_dim, channel_base, entries, trainable):
    """Training spec §1.8: entry and trainable-float counts of the 256 px discriminators."""
    D = _meta_discriminator(DiscriminatorConfig(c_dim=c_dim, img_resolution=256, channel_base=channel_base))
    sd = D.state_dict()
    assert len(sd) == entries
    assert sum(p.numel() for p in D.parameters()) == trainable
    keys = list(sd)
    assert keys[:5] == ["b256.resample_filter", "b256.fromrgb.weight", "b256.fromrgb.bias",
                        "b256.fromrgb.resample_filter", "b256.conv0.weight"]
    assert "b256.skip.bias" not in sd and tuple(sd["b4.conv.weight"].shape) == (512, 513, 3, 3)
    if c_dim:
        assert keys.index("b8.skip.resample_filter") + 1 == keys.index("mapping.embed.weight")
        assert keys.index("mapping.fc7.bias") + 1 == keys.index("b4.conv.weight")
        assert tuple(sd["b4.out.weight"].shape) == (512, 512)


def test_architectures_layer_names():
    orig = Discriminator(_small_config(16, 0, "orig")).state_dict()
    assert "b16.fromrgb.weight" in orig and not any(".skip." in k for k in orig) and "b8.fromrgb.weight" not in orig
    skip = Discriminator(_small_config(16, 0, "skip")).state_dict()
    assert all(f"b{r}.fromrgb.weight" in skip for r in (16, 8, 4)) and not any(".skip." in k for k in skip)
    resnet = Discriminator(_small_config(16, 0, "resnet")).state_dict()
    assert "b8.skip.weight" in resnet and "b8.skip.bias" not in resnet and "b4.fromrgb.weight" not in resnet


def test_freeze_layers():
    cfg = _small_config(16, 0, "resnet", block=DiscriminatorBlockConfig(freeze_layers=5))
    D = Discriminator(cfg)
    # Layer indices: b16 fromrgb 0, conv0 1, conv1 2, skip 3; b8 conv0 4, conv1 5, skip 6.
    assert [D.b16.num_layers, D.b8.num_layers] == [4, 3]
    params = {n for n, _ in D.named_parameters()}
    assert {"b16.fromrgb.weight", "b16.skip.weight", "b8.conv0.weight", "b8.conv0.bias"}.isdisjoint(params)
    assert {"b8.conv1.weight", "b8.skip.weight", "b4.conv.weight"} <= params
    keys = list(D.state_dict())
    assert keys[keys.index("b8.conv0.resample_filter"):][:3] == [
        "b8.conv0.resample_filter", "b8.conv0.weight", "b8.conv0.bias"]
    # A frozen D still loads the unfrozen D's state dict by name.
    D.load_state_dict(Discriminator(_small_config(16, 0, "resnet")).state_dict(), strict=True)


def test_initialisation():
    torch.manual_seed(0)
    D = Discriminator(DiscriminatorConfig(c_dim=4, img_resolution=8, channel_base=256, channel_max=64))
    for name, p in D.named_parameters():
        if name.endswith("bias"):
            assert torch.count_nonzero(p) == 0, name
    assert 0.9 < D.b8.conv0.weight.std().item() < 1.1
    assert 90 < D.mapping.fc0.weight.std().item() < 110  # N(0, 1) / lr_multiplier 0.01


def test_state_dict_round_trip_unconditional_and_conditional():
    for c_dim in (0, 3):
        cfg = _small_config(16, c_dim, "resnet", conv_clamp=0.5)
        torch.manual_seed(1)
        a = Discriminator(cfg)
        b = Discriminator(cfg)
        b.load_state_dict(a.state_dict(), strict=True)
        img = torch.randn(4, 3, 16, 16)
        c = torch.randn(4, c_dim) if c_dim else None
        assert torch.equal(a(img, c), b(img, c))


# ------------------------------------------------------------------------------------------------
# Forward/backward on small networks


@pytest.mark.parametrize("architecture", ["resnet", "orig", "skip"])
@pytest.mark.parametrize("c_dim", [0, 3])
@pytest.mark.parametrize("res", [4, 8, 32, 64])
def test_forward_backward(res, c_dim, architecture):
    torch.manual_seed(res + c_dim)
    cfg = _small_config(
        res, c_dim, architecture,
        conv_clamp=None if res == 32 else 2.0,
        epilogue=EpilogueConfig(mbstd_group_size=2, mbstd_num_channels=1 if res < 64 else 2),
    )
    D = Discriminator(cfg).train()
    n = 4
    img = torch.randn(n, 3, res, res, requires_grad=True)
    c = torch.randn(n, c_dim) if c_dim else None
    out = D(img, c)
    assert out.shape == (n, 1) and out.dtype == torch.float32
    assert torch.isfinite(out).all()
    out.square().sum().backward()
    assert img.grad is not None and torch.isfinite(img.grad).all() and img.grad.abs().sum() > 0
    for name, p in D.named_parameters():
        assert p.grad is not None, name
        assert torch.isfinite(p.grad).all(), name
    assert c_dim == 0 or D.mapping.embed.weight.grad.abs().sum() > 0


def test_mbstd_options():
    img = torch.randn(6, 3, 8, 8)
    # Group None = whole batch; 0 stddev channels = no mbstd layer.
    D = Discriminator(_small_config(8, 0, "resnet", epilogue=EpilogueConfig(mbstd_group_size=None)))
    assert D(img).shape == (6, 1)
    D0 = Discriminator(_small_config(8, 0, "resnet", epilogue=EpilogueConfig(mbstd_num_channels=0)))
    assert D0.b4.mbstd is None and D0.b4.conv.in_channels == D0.b4.in_channels
    assert D0(img[:5]).shape == (5, 1)


def test_fp16_channels_last_runs():
    cfg = _small_config(16, 0, "resnet", num_fp16_res=2, conv_clamp=256,
                        block=DiscriminatorBlockConfig(fp16_channels_last=True))
    D = Discriminator(cfg)
    img = torch.randn(4, 3, 16, 16)
    with torch.no_grad():
        ref = D(img)
        try:
            half = D(img, fp16=True)
        except RuntimeError as exc:  # pragma: no cover - depends on the torch build
            pytest.skip(f"float16 convolutions are not supported on this CPU build of torch: {exc}")
    assert half.dtype == torch.float32
    torch.testing.assert_close(half, ref, atol=5e-2, rtol=5e-2)


# ------------------------------------------------------------------------------------------------
# Minibatch stddev


def test_mbstd_strided_groups_by_hand():
    torch.manual_seed(0)
    x = torch.randn(4, 2, 3, 3)
    y = MinibatchStdLayer(group_size=2, num_channels=1)(x)
    assert y.shape == (4, 3, 3, 3)
    assert torch.equal(y[:, :2], x)
    xd = x.double()
    for i in range(4):
        partner = (i + 2) % 4  # group 2, N=4: sample i is grouped with i+2 (strided), not i^1
        pair = torch.stack([xd[i], xd[partner]])
        std = ((pair - pair.mean(0)).square().mean(0) + 1e-8).sqrt()
        expected = std.mean().item()
        assert torch.allclose(y[i, 2], torch.full((3, 3), expected, dtype=torch.float32), atol=1e-6)
    # Consecutive grouping would give another value (guards against the wrong grouping).
    wrong = ((xd[:2] - xd[:2].mean(0)).square().mean(0) + 1e-8).sqrt().mean().item()
    assert abs(y[0, 2, 0, 0].item() - wrong) > 1e-3


def test_mbstd_multiple_features():
    torch.manual_seed(0)
    x = torch.randn(4, 4, 2, 2)
    y = MinibatchStdLayer(group_size=None, num_channels=2)(x)
    assert y.shape == (4, 6, 2, 2)
    xd = x.double()
    std = ((xd - xd.mean(0)).square().mean(0) + 1e-8).sqrt()  # [4, 2, 2]
    for f in range(2):
        expected = std[2 * f: 2 * f + 2].mean().item()
        assert torch.allclose(y[:, 4 + f], torch.full((4, 2, 2), expected, dtype=torch.float32), atol=1e-6)


# ------------------------------------------------------------------------------------------------
# Input validation


def test_error_wrong_resolution():
    D = Discriminator(_small_config(16, 0, "resnet"))
    with pytest.raises(ValueError, match=r"resolution 16x16.*got 32x32"):
        D(torch.randn(4, 3, 32, 32))
    with pytest.raises(ValueError, match=r"3 channels.*got 1 channels"):
        D(torch.randn(4, 1, 16, 16))
    with pytest.raises(ValueError, match=r"shape \[N, 3, 16, 16\]"):
        D(torch.randn(3, 16, 16))


def test_error_missing_labels():
    D = Discriminator(_small_config(8, 5, "resnet"))
    with pytest.raises(ValueError, match=r"conditional \(c_dim=5\).*\[N, 5\].*required"):
        D(torch.randn(4, 3, 8, 8))
    with pytest.raises(ValueError, match=r"labels c of shape \[4, 5\], got \(4, 3\)"):
        D(torch.randn(4, 3, 8, 8), torch.randn(4, 3))
    D0 = Discriminator(_small_config(8, 0, "resnet"))
    assert D0(torch.randn(4, 3, 8, 8), torch.zeros(4, 0)).shape == (4, 1)
    with pytest.raises(ValueError, match=r"unconditional"):
        D0(torch.randn(4, 3, 8, 8), torch.randn(4, 2))


def test_error_indivisible_batch():
    D = Discriminator(_small_config(8, 0, "resnet"))  # mbstd group 4
    with pytest.raises(ValueError, match=r"batch size 6 .*group size 4"):
        D(torch.randn(6, 3, 8, 8))
    with pytest.raises(ValueError, match=r"batch size 6 .*group size 4"):
        MinibatchStdLayer(group_size=4)(torch.randn(6, 2, 4, 4))
    # Batches smaller than the group shrink the group instead.
    assert D(torch.randn(3, 3, 8, 8)).shape == (3, 1)


"""viscoin's own StyleGAN2 checkpoint format: bit-exact round trips and clear errors."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import save_file

from conftest import MOCK_COND16, MOCK_G32, fixture_tensors, matches_golden
from viscoin.stylegan import (
    Discriminator,
    DiscriminatorConfig,
    Generator,
    GeneratorConfig,
    MappingConfig,
    SynthesisConfig,
    import_official,
    load_discriminator,
    load_generator,
    load_network,
    save_network,
)
from viscoin.utils.io import CheckpointError, sha256_file


def tiny_generator() -> Generator:
    cfg = GeneratorConfig(
        z_dim=8, w_dim=8, img_resolution=16, mapping=MappingConfig(num_layers=2),
        synthesis=SynthesisConfig(channel_base=64, channel_max=8, conv_clamp=256, num_fp16_res=2),
    )
    G = Generator(cfg)
    with torch.no_grad():
        for p in G.parameters():
            p.add_(torch.randn_like(p) * 0.1)  # nothing at its initial value
        G.mapping.w_avg.normal_()
    return G


def test_generator_round_trip_is_bit_exact(tmp_path):
    G = tiny_generator()
    save_network(G, tmp_path / "g", extra={"note": "x"})
    assert sorted(p.name for p in (tmp_path / "g").iterdir()) == ["config.json", "weights.safetensors"]
    H = load_network(tmp_path / "g")
    assert isinstance(H, Generator) and H.config == G.config
    a, b = G.state_dict(), H.state_dict()
    assert list(a) == list(b)
    for k in a:
        assert torch.equal(a[k], b[k]), k
    z = torch.randn(2, 8)
    with torch.no_grad():
        assert torch.equal(G.eval()(z), H.eval()(z))
    info = json.loads((tmp_path / "g" / "config.json").read_text())
    assert info["format"] == "viscoin.stylegan2" and info["network"] == "generator"
    assert info["config"]["synthesis"]["num_fp16_res"] == 2 and info["extra"] == {"note": "x"}
    assert len(info["weights_sha256"]) == 64


def test_discriminator_round_trip_is_bit_exact(tmp_path):
    D = Discriminator(DiscriminatorConfig(c_dim=2, img_resolution=16, channel_base=64, channel_max=16))
    with torch.no_grad():
        for p in D.parameters():
            p.add_(torch.randn_like(p) * 0.1)
    save_network(D, tmp_path / "d")
    E = load_discriminator(tmp_path / "d")
    for k, v in D.state_dict().items():
        assert torch.equal(v, E.state_dict()[k]), k
    img, c = torch.randn(4, 3, 16, 16), torch.eye(2)[[0, 1, 0, 1]]
    with torch.no_grad():
        assert torch.equal(D(img, c), E(img, c))


def test_load_generator_freezes_by_default(tmp_path):
    save_network(tiny_generator(), tmp_path / "g")
    G = load_generator(tmp_path / "g")
    assert not G.training and not any(p.requires_grad for p in G.parameters())
    G2 = load_generator(tmp_path / "g", frozen=False)
    assert all(p.requires_grad for p in G2.parameters())


@pytest.mark.parametrize("mock, fixture", [(MOCK_G32, "g32"), (MOCK_COND16, "cond16")])
def test_import_official_then_load_reproduces_golden(tmp_path, mock, fixture):
    import_official(mock, tmp_path / "net")
    G = load_generator(tmp_path / "net")
    g = fixture_tensors(fixture, "golden.safetensors")
    with torch.no_grad():
        ws = G.map(g["z"], g.get("c"), truncation_psi=0.7)
        assert matches_golden(ws, g["ws_psi0p7"])
        assert matches_golden(G.synthesis(g["ws_psi1"]), g["img_psi1_const"])
    # The same from the .pkl directly.
    Gp = load_generator(mock)
    with torch.no_grad():
        assert matches_golden(Gp.synthesis(g["ws_plus"]), g["img_wplus_const"])


@pytest.mark.parametrize("mock, fixture", [(MOCK_G32, "g32"), (MOCK_COND16, "cond16")])
def test_import_official_discriminator_reproduces_golden(tmp_path, mock, fixture):
    import_official(mock, tmp_path / "d", which="D")
    g = fixture_tensors(fixture, "d_golden.safetensors")
    for D in (load_discriminator(tmp_path / "d"), load_discriminator(mock)):
        with torch.no_grad():
            assert matches_golden(D(g["img"], g.get("c")), g["logits"])


def test_import_records_provenance_and_augment_p(tmp_path):
    import_official(MOCK_G32, tmp_path / "g")
    info = json.loads((tmp_path / "g" / "config.json").read_text())
    assert info["source"]["which"] == "G_ema" and len(info["source"]["sha256"]) == 64
    assert info["extra"]["augment_p"] == pytest.approx(0.125)
    import_official(MOCK_G32, tmp_path / "G", which="G")
    a = load_generator(tmp_path / "g").state_dict()
    b = load_generator(tmp_path / "G").state_dict()
    assert not torch.equal(a["synthesis.b4.conv1.weight"], b["synthesis.b4.conv1.weight"])


def test_truncated_weights_are_detected(tmp_path):
    save_network(tiny_generator(), tmp_path / "g")
    w = tmp_path / "g" / "weights.safetensors"
    w.write_bytes(w.read_bytes()[: w.stat().st_size // 2])
    with pytest.raises(CheckpointError, match="SHA-256 does not match.*truncated"):
        load_network(tmp_path / "g")
    # With the recorded hash updated, the safetensors reader's error is wrapped and names the file.
    info = json.loads((tmp_path / "g" / "config.json").read_text())
    info["weights_sha256"] = sha256_file(w)
    (tmp_path / "g" / "config.json").write_text(json.dumps(info))
    with pytest.raises(CheckpointError, match=r"weights.safetensors: not a readable safetensors file"):
        load_network(tmp_path / "g")
    # Without a recorded hash, nothing is read: the check cannot be switched off by deleting it.
    del info["weights_sha256"]
    (tmp_path / "g" / "config.json").write_text(json.dumps(info))
    with pytest.raises(CheckpointError, match=r'config.json: no "weights_sha256" recorded'):
        load_network(tmp_path / "g")


def _rewrite(tmp_path, mutate_tensors=None, mutate_info=None):
    src = tmp_path / "g"
    save_network(tiny_generator(), src)
    info = json.loads((src / "config.json").read_text())
    if mutate_tensors:
        from safetensors.torch import load_file

        t = load_file(str(src / "weights.safetensors"))
        mutate_tensors(t)
        save_file(t, str(src / "weights.safetensors"))
        info["weights_sha256"] = sha256_file(src / "weights.safetensors")
    if mutate_info:
        mutate_info(info)
    (src / "config.json").write_text(json.dumps(info))
    return src


def test_wrong_shape_missing_and_unexpected_tensors(tmp_path):
    def reshape(t):
        t["synthesis.b8.conv0.weight"] = torch.zeros(1, 2, 3, 3)

    with pytest.raises(CheckpointError, match=r"wrong shape.*synthesis.b8.conv0.weight: expected \[8, 8, 3, 3\], got \[1, 2, 3, 3\]"):
        load_network(_rewrite(tmp_path / "a", mutate_tensors=reshape))

    with pytest.raises(CheckpointError, match=r"missing 1 tensor\(s\): \['mapping.w_avg'\]"):
        load_network(_rewrite(tmp_path / "b", mutate_tensors=lambda t: t.pop("mapping.w_avg")))

    with pytest.raises(CheckpointError, match=r"unexpected 1 tensor\(s\): \['extra.bias'\]"):
        load_network(_rewrite(tmp_path / "c", mutate_tensors=lambda t: t.__setitem__("extra.bias", torch.zeros(2))))


def test_wrong_configs_give_clear_errors(tmp_path):
    def bad_res(info):
        info["config"]["img_resolution"] = 24

    with pytest.raises(CheckpointError, match="config.json: config: img_resolution: expected a power of two >= 4, got 24"):
        load_network(_rewrite(tmp_path / "a", mutate_info=bad_res))

    def unknown_key(info):
        info["config"]["mapping"]["depth"] = 3

    with pytest.raises(CheckpointError, match=r"config.mapping: unknown key\(s\) \['depth'\]"):
        load_network(_rewrite(tmp_path / "b", mutate_info=unknown_key))

    def other_res(info):  # valid config, but the weights belong to another network
        info["config"]["img_resolution"] = 32

    with pytest.raises(CheckpointError, match="missing .* tensor"):
        load_network(_rewrite(tmp_path / "c", mutate_info=other_res))

    def bad_format(info):
        info["format"] = "something-else"

    with pytest.raises(CheckpointError, match='expected "format": "viscoin.stylegan2"'):
        load_network(_rewrite(tmp_path / "d", mutate_info=bad_format))

    (tmp_path / "e").mkdir()
    (tmp_path / "e" / "config.json").write_text("{not json")
    with pytest.raises(CheckpointError, match="not valid JSON"):
        load_network(tmp_path / "e")

    with pytest.raises(CheckpointError, match="not a viscoin.stylegan2 checkpoint"):
        load_network(tmp_path / "nowhere")


def test_discriminator_checkpoint_refused_as_generator(tmp_path):
    save_network(Discriminator(DiscriminatorConfig(img_resolution=8, channel_base=32, channel_max=8)), tmp_path / "d")
    with pytest.raises(CheckpointError, match="holds a discriminator, but a generator is expected"):
        load_generator(tmp_path / "d")


def test_failed_write_leaves_no_partial_file(tmp_path, monkeypatch):
    import safetensors.torch

    def boom(tensors, filename, metadata=None):
        with open(filename, "wb") as f:
            f.write(b"partial")
        raise OSError("disk full")

    monkeypatch.setattr(safetensors.torch, "save_file", boom)
    with pytest.raises(OSError, match="disk full"):
        save_network(tiny_generator(), tmp_path / "g")
    assert list((tmp_path / "g").iterdir()) == []

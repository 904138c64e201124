"""The classifier `f` (viscoin.classifier): taps Ψ reads, input normalisation inside the module,
ImageNet loading from local files only, checkpoints, freezing, gradients."""

from __future__ import annotations

import json

import pytest
import torch
import torchvision
from safetensors.torch import save_file
from torchvision.models.feature_extraction import create_feature_extractor

from viscoin.classifier import (
    Classifier,
    ClassifierConfig,
    load_classifier,
    load_imagenet_weights,
    save_classifier,
)
from viscoin.utils.checkpoint import save_checkpoint_folder
from viscoin.utils.config import ConfigError
from viscoin.utils.weights import imagenet_cache_path
from viscoin.utils.io import CheckpointError

R18_FILE = "resnet18-f37072fd.pth"  # torchvision's cache name of resnet18 IMAGENET1K_V1
R18_URL = "https://download.pytorch.org/models/resnet18-f37072fd.pth"


def randomize_bn(net: torch.nn.Module) -> torch.nn.Module:
    """Give every BatchNorm non-trivial statistics and affine parameters (defaults hide bugs)."""
    with torch.no_grad():
        for m in net.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.normal_(0, 0.1)
                m.running_var.uniform_(0.5, 1.5)
                m.weight.uniform_(0.5, 1.5)
                m.bias.normal_(0, 0.1)
                m.num_batches_tracked.fill_(7)
    return net


def cfg(arch: str = "resnet18", **kw) -> ClassifierConfig:
    return ClassifierConfig(arch=arch, pretrained="none", **kw)


@pytest.fixture
def no_download(monkeypatch, tmp_path):
    """An empty torch hub dir, and any attempt to download fails the test."""
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch_home"))
    assert torch.hub.get_dir() == str(tmp_path / "torch_home" / "hub")

    def refuse(*args, **kwargs):
        raise AssertionError("viscoin tried to download weights")

    monkeypatch.setattr(torch.hub, "load_state_dict_from_url", refuse)
    monkeypatch.setattr(torch.hub, "download_url_to_file", refuse)
    monkeypatch.setattr(torchvision.models._api.WeightsEnum, "get_state_dict", refuse)
    return tmp_path / "torch_home" / "hub" / "checkpoints"


def fake_imagenet_state_dict(arch: str = "resnet18") -> dict[str, torch.Tensor]:
    net = randomize_bn(getattr(torchvision.models, arch)(weights=None, num_classes=1000))
    return {k: v.clone() for k, v in net.state_dict().items()}


# ------------------------------------------------------------------ config


def test_config_defaults_and_round_trip():
    c = ClassifierConfig()
    assert (c.arch, c.num_classes, c.pretrained, c.imagenet_weights) == ("resnet50", 200, "imagenet", "IMAGENET1K_V1")
    assert c.taps == ("layer2", "layer3", "layer4.-2") and c.resolved_taps() == ["layer2", "layer3", "layer4.1"]
    c2 = ClassifierConfig(arch="resnet101", num_classes=3, taps=["layer3.-1", "layer1.0"], weights_path="/x.pth")
    assert c2.taps == ("layer3.-1", "layer1.0") and c2.resolved_taps() == ["layer3.22", "layer1.0"]
    assert ClassifierConfig.from_dict(json.loads(json.dumps(c2.to_dict()))) == c2


@pytest.mark.parametrize(
    "kw, field",
    [
        (dict(num_classes=-1), "num_classes"),
        (dict(taps=("layer5",)), "taps"),
        (dict(taps=("conv1",)), "taps"),
        (dict(taps=("layer4.x",)), "taps"),
        (dict(arch="resnet18", taps=("layer4.2",)), "taps"),      # resnet18's layer4 has 2 blocks
        (dict(arch="resnet18", taps=("layer4.-3",)), "taps"),
        (dict(arch="resnet18", taps=("layer4.1", "layer4.-1")), "taps"),  # the same block twice
        (dict(arch="resnet18", imagenet_weights="IMAGENET1K_V2"), "imagenet_weights"),
        (dict(arch="resnet13"), "arch"),
    ],
)
def test_config_validation_names_the_field(kw, field):
    with pytest.raises(ConfigError, match=rf"classifier\.{field}"):
        ClassifierConfig(**kw)


def test_num_classes_zero_means_from_the_data_and_cannot_be_built():
    assert ClassifierConfig(num_classes=0).num_classes == 0  # the trainer resolves 0 from the dataset
    with pytest.raises(ConfigError, match=r"classifier\.num_classes"):
        Classifier(cfg(num_classes=0))


def test_config_from_dict_is_strict():
    with pytest.raises(ConfigError, match="num_clases"):
        ClassifierConfig.from_dict({"num_clases": 3})
    with pytest.raises(ConfigError, match="arch"):
        ClassifierConfig.from_dict({"arch": "vgg16"})
    with pytest.raises(ConfigError, match=r"classifier\.taps"):
        ClassifierConfig.from_dict({"arch": "resnet34", "taps": ["layer3.6"]})


# ------------------------------------------------------------------ taps and shapes


@pytest.mark.parametrize("arch, ch, last", [("resnet18", (128, 256, 512), "layer4.0"), ("resnet50", (512, 1024, 2048), "layer4.1")])
@pytest.mark.parametrize("res", [64, 96])
def test_taps_and_shapes(arch, ch, last, res):
    model = Classifier(cfg(arch, num_classes=5)).eval()
    assert model.tap_names == ["layer2", "layer3", last] and model.num_classes == 5
    expected = {
        "layer2": (ch[0], res // 8, res // 8),
        "layer3": (ch[1], res // 16, res // 16),
        last: (ch[2], res // 32, res // 32),
    }
    assert model.tap_shapes(res) == expected
    assert model.tap_channels() == {k: v[0] for k, v in expected.items()}
    x = torch.rand(2, 3, res, res) * 2 - 1
    with torch.no_grad():
        feats = model.features(x)
        logits = model(x)
    assert list(feats) == ["layer2", "layer3", last, "logits"]
    assert {k: tuple(v.shape[1:]) for k, v in feats.items() if k != "logits"} == expected
    assert all(v.shape[0] == 2 for v in feats.values())
    assert feats["logits"].shape == (2, 5) and torch.equal(feats["logits"], logits)


@pytest.mark.parametrize("res", [57, (70, 101)])
def test_tap_shapes_match_features_at_odd_sizes(res):
    model = Classifier(cfg(taps=("layer1", "layer2.0", "layer3", "layer4.-1"))).eval()
    h, w = (res, res) if isinstance(res, int) else res
    with torch.no_grad():
        feats = model.features(torch.zeros(1, 3, h, w))
    assert model.tap_shapes(res) == {k: tuple(v.shape[1:]) for k, v in feats.items() if k != "logits"}


def test_taps_are_the_torchvision_activations():
    """Taps equal what torchvision's own feature extractor returns for the same nodes."""
    model = randomize_bn(Classifier(cfg("resnet50", num_classes=4, taps=("layer1.1", "layer2", "layer3", "layer4.-2", "layer4")))).eval()
    x = torch.rand(2, 3, 64, 64) * 2 - 1
    ref = create_feature_extractor(
        model.net, {"layer1.1": "layer1.1", "layer2": "layer2", "layer3": "layer3", "layer4.1": "layer4.1", "layer4": "layer4", "fc": "logits"}
    )
    with torch.no_grad():
        got = model.features(x)
        want = ref(model.normalize(x))
    assert list(got) == ["layer1.1", "layer2", "layer3", "layer4.1", "layer4", "logits"]
    for k in want:
        torch.testing.assert_close(got[k], want[k], rtol=0, atol=0, msg=k)
    assert not torch.equal(got["layer4.1"], got["layer4"])


def test_bad_input_is_refused():
    model = Classifier(cfg())
    with pytest.raises(ValueError, match=r"\[N, 3, H, W\]"):
        model(torch.zeros(3, 32, 32))
    with pytest.raises(ValueError, match=r"\[N, 3, H, W\]"):
        model(torch.zeros(1, 1, 32, 32))
    with pytest.raises(ValueError, match="floating"):
        model(torch.zeros(1, 3, 32, 32, dtype=torch.uint8))


# ------------------------------------------------------------------ normalisation


def test_normalisation_inside_matches_torchvision_on_imagenet_input():
    tv = randomize_bn(torchvision.models.resnet18(weights=None, num_classes=6)).eval()
    model = Classifier(cfg(num_classes=6)).eval()
    model.net.load_state_dict(tv.state_dict())
    x = torch.rand(2, 3, 64, 64) * 2 - 1
    normalize = torchvision.transforms.Normalize(mean=[0.485, 0.456, 0.406], std=[0.229, 0.224, 0.225])
    with torch.no_grad():
        want = tv(normalize((x + 1) / 2))
        got = model(x)
        unnormalised = tv(x)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)
    assert not torch.allclose(got, unnormalised, atol=1e-3)
    # mean/std are buffers that follow the module, not parameters nor checkpoint entries
    assert {n for n, _ in model.named_buffers()} >= {"input_mean", "input_std"}
    assert not any("input_" in n for n, _ in model.named_parameters())
    assert not any("input_" in k for k in model.state_dict())
    torch.testing.assert_close(model.double()(x.double()), want.double(), rtol=1e-5, atol=1e-5)


# ------------------------------------------------------------------ ImageNet weights


def assert_backbone_is(model: Classifier, sd: dict[str, torch.Tensor], num_classes: int) -> None:
    own = model.net.state_dict()
    for k, v in sd.items():
        if not k.startswith("fc."):
            assert torch.equal(own[k], v), k
    assert model.net.fc.weight.shape == (num_classes, model.net.fc.in_features)
    assert model.net.fc.bias.shape == (num_classes,)


def test_imagenet_weights_from_torch_hub_cache(no_download):
    sd = fake_imagenet_state_dict()
    assert imagenet_cache_path("resnet18", "IMAGENET1K_V1") == no_download / R18_FILE
    no_download.mkdir(parents=True)
    torch.save(sd, no_download / R18_FILE)
    model = Classifier(ClassifierConfig(arch="resnet18", num_classes=7))
    assert_backbone_is(model, sd, 7)
    assert model.imagenet_source["imagenet_weights_file"] == str(no_download / R18_FILE)
    # the new head is not the ImageNet one, and the model runs
    assert model.eval()(torch.zeros(1, 3, 32, 32)).shape == (1, 7)


def test_imagenet_release_picks_the_cache_file(no_download):
    assert imagenet_cache_path("resnet50", "IMAGENET1K_V2").name == "resnet50-11ad3fa6.pth"
    with pytest.raises(FileNotFoundError, match="resnet50-11ad3fa6.pth"):
        Classifier(ClassifierConfig(arch="resnet50", imagenet_weights="IMAGENET1K_V2"))


@pytest.mark.parametrize("suffix", [".pth", ".safetensors"])
def test_imagenet_weights_from_weights_path(no_download, tmp_path, suffix):
    sd = fake_imagenet_state_dict()
    path = tmp_path / f"my_resnet18{suffix}"
    if suffix == ".pth":
        del sd["bn1.num_batches_tracked"]  # torchvision's older files have no num_batches_tracked
        torch.save(sd, path)
    else:
        save_file(sd, str(path))
    model = Classifier(ClassifierConfig(arch="resnet18", num_classes=3, weights_path=str(path)))
    assert_backbone_is(model, sd, 3)
    assert not (no_download / R18_FILE).exists()


def test_missing_imagenet_weights_say_what_to_fetch_and_where(no_download):
    with pytest.raises(FileNotFoundError) as info:
        Classifier(ClassifierConfig(arch="resnet18", num_classes=3))
    msg = str(info.value)
    assert R18_FILE in msg and R18_URL in msg and str(no_download) in msg
    assert "classifier.weights_path" in msg
    missing = no_download.parent / "elsewhere" / "r18.pth"
    with pytest.raises(FileNotFoundError) as info:
        Classifier(ClassifierConfig(arch="resnet18", num_classes=3, weights_path=str(missing)))
    assert str(missing) in str(info.value) and R18_URL in str(info.value)
    assert "classifier.weights_path" in str(info.value)


def test_mismatched_imagenet_weights_are_refused(no_download, tmp_path):
    path = tmp_path / "r50.pth"
    torch.save(fake_imagenet_state_dict("resnet50"), path)
    with pytest.raises(CheckpointError) as info:
        Classifier(ClassifierConfig(arch="resnet18", weights_path=str(path)))
    msg = str(info.value)
    assert str(path) in msg and "wrong shape" in msg and "layer1.0.conv1.weight" in msg and "resnet18" in msg

    renamed = {f"backbone.{k}": v for k, v in fake_imagenet_state_dict().items()}
    path = tmp_path / "renamed.safetensors"
    save_file(renamed, str(path))
    with pytest.raises(CheckpointError) as info:
        Classifier(ClassifierConfig(arch="resnet18", weights_path=str(path)))
    msg = str(info.value)
    assert str(path) in msg and "missing" in msg and "conv1.weight" in msg and "unexpected" in msg


def test_unreadable_imagenet_files_are_refused(no_download, tmp_path, capsys):
    garbage = tmp_path / "garbage.pth"
    garbage.write_bytes(b"not a checkpoint at all")
    with pytest.raises(CheckpointError, match="garbage.pth"):
        Classifier(ClassifierConfig(arch="resnet18", weights_path=str(garbage)))

    class Evil:
        def __reduce__(self):
            return (print, ("pwned",))

    evil = tmp_path / "evil.pth"
    torch.save({"conv1.weight": Evil()}, evil, pickle_protocol=2)
    with pytest.raises(CheckpointError, match="evil.pth"):
        Classifier(ClassifierConfig(arch="resnet18", weights_path=str(evil)))
    assert "pwned" not in capsys.readouterr().out  # never unpickled arbitrary objects

    bad_st = tmp_path / "bad.safetensors"
    bad_st.write_bytes(b"\x00" * 10)
    with pytest.raises(CheckpointError, match="bad.safetensors"):
        Classifier(ClassifierConfig(arch="resnet18", weights_path=str(bad_st)))


def test_load_imagenet_weights_can_be_called_later(no_download, tmp_path):
    sd = fake_imagenet_state_dict()
    path = tmp_path / "w.pth"
    torch.save({"state_dict": {f"module.{k}": v for k, v in sd.items()}}, path)  # wrapped + DataParallel
    model = Classifier(ClassifierConfig(arch="resnet18", num_classes=2, weights_path=str(path)), load_pretrained=False)
    assert not torch.equal(model.net.conv1.weight, sd["conv1.weight"])
    load_imagenet_weights(model)
    assert_backbone_is(model, sd, 2)


# ------------------------------------------------------------------ checkpoints and freezing


def test_save_load_round_trip_is_bit_exact(no_download, tmp_path):
    sd = fake_imagenet_state_dict()
    weights = tmp_path / "in.pth"
    torch.save(sd, weights)
    model = randomize_bn(Classifier(ClassifierConfig(arch="resnet18", num_classes=4, weights_path=str(weights))))
    with torch.no_grad():
        model.net.fc.weight.normal_()
    out = save_classifier(model, tmp_path / "f", extra={"epoch": 3})
    weights.unlink()  # loading a viscoin checkpoint must not read ImageNet weights
    info = json.loads((out / "config.json").read_text())
    assert info["format"] == "viscoin.classifier" and info["network"] == "classifier"
    assert info["extra"] == {"epoch": 3} and info["source"]["imagenet"]["imagenet_weights_file"] == str(weights)
    loaded = load_classifier(out, frozen=False)
    assert isinstance(loaded, Classifier) and loaded.config == model.config and loaded.training
    a, b = model.state_dict(), loaded.state_dict()
    assert list(a) == list(b) and all(torch.equal(a[k], b[k]) for k in a)
    x = torch.rand(2, 3, 64, 64) * 2 - 1
    with torch.no_grad():
        assert torch.equal(model.eval()(x), loaded.eval()(x))
    assert all(p.requires_grad for p in loaded.parameters())


def test_frozen_classifier_stays_in_eval_mode(tmp_path):
    model = randomize_bn(Classifier(cfg(num_classes=3)))
    save_classifier(model, tmp_path / "f")
    f = load_classifier(tmp_path / "f")
    assert f.frozen and not f.training and not any(m.training for m in f.modules())
    assert not any(p.requires_grad for p in f.parameters())
    stats = {k: v.clone() for k, v in f.state_dict().items()}
    parent = torch.nn.ModuleDict({"f": f, "psi": torch.nn.Linear(2, 2)})
    parent.train()  # what a trainer does to the VisCoIN model that holds f
    assert parent.psi.training and not f.training and not any(m.training for m in f.modules())
    x = (torch.rand(4, 3, 64, 64) * 2 - 1).requires_grad_(True)
    f.features(x)["logits"].sum().backward()
    assert x.grad is not None and x.grad.abs().sum() > 0  # gradients flow *through* frozen f
    assert all(p.grad is None for p in f.parameters())
    assert all(torch.equal(stats[k], v) for k, v in f.state_dict().items())  # BN statistics untouched
    f.unfreeze().train()
    assert f.training and all(p.requires_grad for p in f.parameters())


def test_other_checkpoints_are_refused(tmp_path):
    save_checkpoint_folder(tmp_path / "g", "viscoin.stylegan2", "generator", {}, {"x": torch.zeros(1)})
    with pytest.raises(CheckpointError, match='expected "format": "viscoin.classifier"'):
        load_classifier(tmp_path / "g")
    with pytest.raises(CheckpointError, match="no config.json"):
        load_classifier(tmp_path)
    model = Classifier(cfg(num_classes=3))
    save_classifier(model, tmp_path / "f")
    info = json.loads((tmp_path / "f" / "config.json").read_text())
    info["config"]["taps"] = ["layer9"]
    (tmp_path / "f" / "config.json").write_text(json.dumps(info))
    with pytest.raises(CheckpointError, match=r"classifier\.taps"):
        load_classifier(tmp_path / "f")
    save_classifier(Classifier(cfg("resnet34", num_classes=3)), tmp_path / "f34")
    info34 = json.loads((tmp_path / "f34" / "config.json").read_text())
    info34["config"]["arch"] = "resnet18"  # config and weights disagree
    (tmp_path / "f34" / "config.json").write_text(json.dumps(info34))
    with pytest.raises(CheckpointError, match="unexpected"):
        load_classifier(tmp_path / "f34")


# ------------------------------------------------------------------ gradients and parameter groups


def test_gradients_reach_input_and_every_parameter():
    model = Classifier(cfg(num_classes=5)).train()
    x = (torch.rand(2, 3, 64, 64) * 2 - 1).requires_grad_(True)
    feats = model.features(x)
    loss = feats["logits"].square().sum() + sum(feats[t].mean() for t in model.tap_names)
    loss.backward()
    assert x.grad is not None and x.grad.abs().sum() > 0
    for name, p in model.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, name
    for tap in model.tap_names:  # each tap alone carries gradients back to the image
        x.grad = None
        model.features(x)[tap].square().mean().backward()
        assert x.grad is not None and x.grad.abs().sum() > 0, tap


def test_backbone_and_head_parameters_partition_the_model():
    model = Classifier(cfg("resnet50", num_classes=9))
    head, backbone = model.head_parameters(), model.backbone_parameters()
    assert [tuple(p.shape) for p in head] == [(9, 2048), (9,)]
    ids = [id(p) for p in head + backbone]
    assert len(ids) == len(set(ids)) and set(ids) == {id(p) for p in model.parameters()}
    assert all(n.startswith("net.") for n, _ in model.named_parameters())
    assert "net.layer1.0.conv1.weight" in model.state_dict()

"""The perceptual term of the reconstruction loss (viscoin.model.perceptual): LPIPS-VGG from local
files only (never a download), and the classifier-feature distance for offline use."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch
import torchvision
from safetensors.torch import save_file

from viscoin.classifier import Classifier, ClassifierConfig
from viscoin.model.perceptual import (
    ClassifierFeatureDistance,
    LPIPSDistance,
    PerceptualDistance,
    build_perceptual,
)
from viscoin.utils.io import CheckpointError

VGG_FILE = "vgg16-397923af.pth"  # torchvision's cache name of vgg16 IMAGENET1K_V1
VGG_URL = "https://download.pytorch.org/models/vgg16-397923af.pth"
RELU_OUTPUTS = (3, 8, 15, 22, 29)  # features[i] after which lpips reads relu1_2 .. relu5_3
LPIPS_SHIFT = torch.tensor([-0.030, -0.088, -0.188]).view(1, 3, 1, 1)
LPIPS_SCALE = torch.tensor([0.458, 0.448, 0.450]).view(1, 3, 1, 1)


def _refuse(*args, **kwargs):
    raise AssertionError("viscoin tried to download weights")


def _guard_downloads(mp: pytest.MonkeyPatch, torch_home: Path) -> None:
    mp.setenv("TORCH_HOME", str(torch_home))
    assert torch.hub.get_dir() == str(torch_home / "hub")
    mp.setattr(torch.hub, "load_state_dict_from_url", _refuse)
    mp.setattr(torch.hub, "download_url_to_file", _refuse)
    mp.setattr(torchvision.models._api.WeightsEnum, "get_state_dict", _refuse)


@pytest.fixture(scope="module", autouse=True)
def _one_thread():
    """One intra-op thread: these small CPU convs are much slower with two threads busy-waiting on a
    shared machine; restored afterwards."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture(scope="module")
def fake_vgg(tmp_path_factory):
    """A random torchvision VGG16 (non-zero biases) and its full state dict, saved once as
    torchvision's cache file in a module-wide torch home."""
    torch.manual_seed(123)
    net = torchvision.models.vgg16(weights=None).eval()
    with torch.no_grad():
        for m in net.modules():
            if isinstance(m, (torch.nn.Conv2d, torch.nn.Linear)):
                m.bias.normal_(0, 0.05)
    home = tmp_path_factory.mktemp("vgg_home") / "torch_home"
    ckpt = home / "hub" / "checkpoints"
    ckpt.mkdir(parents=True)
    state = {k: v.clone() for k, v in net.state_dict().items()}
    torch.save(state, ckpt / VGG_FILE)
    return net, state, home


@pytest.fixture(scope="module")
def lpips_dist(fake_vgg):
    """LPIPSDistance built from torchvision's (fake) cache file, with every download refused."""
    with pytest.MonkeyPatch.context() as mp:
        _guard_downloads(mp, fake_vgg[2])
        return LPIPSDistance()


@pytest.fixture
def no_download(monkeypatch, tmp_path):
    """An empty torch hub dir, and any attempt to download fails the test."""
    home = tmp_path / "torch_home"
    _guard_downloads(monkeypatch, home)
    return home / "hub" / "checkpoints"


def _lpips_lin_weights() -> dict[str, torch.Tensor]:
    import lpips

    path = Path(lpips.__file__).parent / "weights" / "v0.1" / "vgg.pth"
    return torch.load(path, map_location="cpu", weights_only=True)


def reference_lpips(vgg: torchvision.models.VGG, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """LPIPS-VGG v0.1 by hand: lpips's scaling layer on [-1, 1] input, VGG16 relu1_2..relu5_3,
    unit-normalised channels, squared difference weighted by lpips's linear layers, spatial mean."""
    lins = _lpips_lin_weights()

    def taps(img):
        h, out = (img - LPIPS_SHIFT) / LPIPS_SCALE, []
        for i, layer in enumerate(vgg.features[:30]):
            h = layer(h)
            if i in RELU_OUTPUTS:
                out.append(h)
        return out

    total = torch.zeros(x.shape[0])
    for k, (a, b) in enumerate(zip(taps(x), taps(y))):
        na = a / (a.norm(dim=1, keepdim=True) + 1e-10)
        nb = b / (b.norm(dim=1, keepdim=True) + 1e-10)
        w = lins[f"lin{k}.model.1.weight"].view(1, -1, 1, 1)
        total += ((na - nb) ** 2 * w).sum(1).mean(dim=(1, 2))
    return total


def images(n: int = 2, size: int = 32, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(n, 3, size, size, generator=g) * 2 - 1
    y = (x + 0.3 * torch.randn(n, 3, size, size, generator=g)).clamp(-1, 1)
    return x, y


# ------------------------------------------------------------------ LPIPS-VGG


def test_lpips_loads_exactly_the_vgg_file_and_package_lins(lpips_dist, fake_vgg):
    _, state, home = fake_vgg
    trunk = lpips_dist.lpips.net.state_dict()
    assert len(trunk) == 26  # 13 convs of VGG16 (weight + bias)
    for key, value in trunk.items():
        _, index, param = key.split(".", 2)  # slice{k}.{i}.{param} <- features.{i}.{param}
        assert torch.equal(value, state[f"features.{index}.{param}"]), key
    lins = _lpips_lin_weights()
    for k in range(5):
        assert torch.equal(lpips_dist.lpips.lins[k].model[1].weight, lins[f"lin{k}.model.1.weight"])
    assert lpips_dist.name == "lpips-vgg"
    assert lpips_dist.describe()["vgg_weights_file"] == str(home / "hub" / "checkpoints" / VGG_FILE)


def test_lpips_matches_hand_computation(lpips_dist, fake_vgg):
    x, y = images(3)
    with torch.no_grad():
        d = lpips_dist(x, y)
        ref = reference_lpips(fake_vgg[0], x, y)
    assert d.shape == (3,)
    torch.testing.assert_close(d, ref, rtol=1e-4, atol=1e-6)


def test_lpips_zero_positive_symmetric(lpips_dist):
    x, y = images(4)
    with torch.no_grad():
        same = lpips_dist(x, x.clone())
        d_xy, d_yx = lpips_dist(x, y), lpips_dist(y, x)
    assert same.shape == (4,) and torch.equal(same, torch.zeros(4))
    assert d_xy.shape == (4,) and (d_xy > 0).all()
    torch.testing.assert_close(d_xy, d_yx)


def test_lpips_differentiable_frozen_and_eval(lpips_dist):
    assert isinstance(lpips_dist, PerceptualDistance)
    assert not any(p.requires_grad for p in lpips_dist.parameters())
    lpips_dist.train()
    assert not lpips_dist.training and not any(m.training for m in lpips_dist.modules())
    x, y = images(2)
    x.requires_grad_(True)
    y.requires_grad_(True)
    lpips_dist(x, y).sum().backward()
    for g in (x.grad, y.grad):
        assert g is not None and torch.isfinite(g).all() and g.abs().sum() > 0
    assert all(p.grad is None for p in lpips_dist.parameters())
    # eval mode: no dropout noise, the same value twice
    with torch.no_grad():
        assert torch.equal(lpips_dist(x, y), lpips_dist(x, y))


def test_lpips_explicit_safetensors_path_via_build(fake_vgg, no_download, tmp_path, capsys):
    _, state, _ = fake_vgg
    features_only = {k: v for k, v in state.items() if k.startswith("features.")}
    path = tmp_path / "my_vgg.safetensors"
    save_file(features_only, str(path))
    dist = build_perceptual("lpips", vgg_weights_path=str(path))
    assert isinstance(dist, LPIPSDistance) and dist.name == "lpips-vgg"
    assert dist.vgg_weights_file == str(path)
    assert torch.equal(getattr(dist.lpips.net.slice4, "17").weight, state["features.17.weight"])
    out = capsys.readouterr()
    assert out.out == ""  # lpips's "Setting up [LPIPS] ..." is silenced


def test_lpips_missing_file_message(no_download):
    with pytest.raises(FileNotFoundError) as exc:
        LPIPSDistance()
    msg = str(exc.value)
    assert str(no_download / VGG_FILE) in msg and VGG_URL in msg and "loss.lpips_vgg_path" in msg
    missing = no_download.parent / "elsewhere" / "vgg.pth"
    with pytest.raises(FileNotFoundError) as exc:
        LPIPSDistance(str(missing))
    msg = str(exc.value)
    assert str(missing) in msg and VGG_URL in msg and "loss.lpips_vgg_path" in msg


def test_lpips_mismatched_file_names_it(fake_vgg, no_download, tmp_path):
    _, state, _ = fake_vgg
    bad = {k: v for k, v in state.items() if k.startswith("features.")}
    bad["features.10.weight"] = torch.zeros(256, 128, 1, 1)  # wrong shape
    path = tmp_path / "not_vgg16.pth"
    torch.save(bad, path)
    with pytest.raises(CheckpointError) as exc:
        LPIPSDistance(str(path))
    assert str(path) in str(exc.value) and "features.10" in str(exc.value)
    junk = tmp_path / "junk.pth"
    junk.write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError, match="junk.pth"):
        LPIPSDistance(str(junk))


def test_lpips_not_installed(monkeypatch, no_download):
    monkeypatch.setitem(sys.modules, "lpips", None)  # makes `import lpips` raise ImportError
    with pytest.raises(ImportError) as exc:
        build_perceptual("lpips")
    assert "pip install lpips" in str(exc.value) and "loss.perceptual=classifier" in str(exc.value)


# ------------------------------------------------------------------ classifier features


@pytest.fixture
def clf() -> Classifier:
    torch.manual_seed(0)
    f = Classifier(ClassifierConfig(arch="resnet18", num_classes=3, pretrained="none"), load_pretrained=False)
    with torch.no_grad():  # non-trivial BatchNorm statistics
        for m in f.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.normal_(0, 0.1)
                m.running_var.uniform_(0.5, 1.5)
    return f.freeze()


def test_classifier_distance_zero_and_positive(clf):
    dist = ClassifierFeatureDistance(clf)
    assert dist.taps == ["layer2", "layer3", "layer4.0"]
    assert dist.name == "classifier-features(layer2,layer3,layer4.0)"
    x, y = images(3, size=64)
    with torch.no_grad():
        same, d = dist(x, x.clone()), dist(y, x)
    assert same.shape == (3,) and torch.equal(same, torch.zeros(3))
    assert d.shape == (3,) and (d > 0).all()


def test_classifier_distance_hand_computation(clf):
    x, y = images(2, size=64)
    with torch.no_grad():
        a, b = clf.features(x)["layer3"], clf.features(y)["layer3"]
        na = a / (a.norm(dim=1, keepdim=True) + 1e-10)
        nb = b / (b.norm(dim=1, keepdim=True) + 1e-10)
        expected = ((na - nb) ** 2).mean(dim=(1, 2, 3))
        one = ClassifierFeatureDistance(clf, taps=["layer3"])
        assert one.name == "classifier-features(layer3)"
        torch.testing.assert_close(one(x, y), expected)
        # several taps: the sum of the single-tap distances
        both = ClassifierFeatureDistance(clf, taps=["layer2", "layer4.-2"])
        assert both.taps == ["layer2", "layer4.0"]
        parts = ClassifierFeatureDistance(clf, taps=["layer2"])(x, y) + ClassifierFeatureDistance(
            clf, taps=["layer4.0"]
        )(x, y)
        torch.testing.assert_close(both(x, y), parts)
    with pytest.raises(ValueError, match="layer1"):
        ClassifierFeatureDistance(clf, taps=["layer1"])  # not computed by the classifier


def test_classifier_distance_reuses_precomputed_features(clf, monkeypatch):
    dist = ClassifierFeatureDistance(clf)
    x, y = images(2, size=64)
    with torch.no_grad():
        fx, fy = clf.features(x), clf.features(y)
        fresh = dist(x, y)
        monkeypatch.setattr(clf, "features", lambda img: pytest.fail("features recomputed"))
        reused = dist(x, y, feats_x=fx, feats_y=fy)
    torch.testing.assert_close(reused, fresh)


def test_classifier_distance_gradients_and_no_own_params(clf):
    dist = ClassifierFeatureDistance(clf)
    assert list(dist.parameters()) == [] and dist.state_dict() == {}
    clf_ids = {id(p) for p in clf.parameters()}
    assert not clf_ids & {id(p) for p in dist.parameters()}
    dist.train()
    assert not dist.training and not clf.training
    x, y = images(2, size=64)
    x.requires_grad_(True)
    y.requires_grad_(True)
    dist(x, y).sum().backward()
    for g in (x.grad, y.grad):
        assert g is not None and torch.isfinite(g).all() and g.abs().sum() > 0
    assert all(p.grad is None for p in clf.parameters())
    # gradients also flow through precomputed features (as the trainer passes f(x̃))
    x2 = x.detach().clone().requires_grad_(True)
    dist(x2, y.detach(), feats_x=clf.features(x2), feats_y=clf.features(y.detach())).sum().backward()
    assert x2.grad is not None and x2.grad.abs().sum() > 0
    # .to() moves the (referenced) classifier along
    dist.to(torch.float64)
    assert all(p.dtype == torch.float64 for p in clf.parameters())


def test_classifier_distance_freezes_classifier():
    f = Classifier(ClassifierConfig(arch="resnet18", num_classes=3, pretrained="none"), load_pretrained=False)
    assert not f.frozen
    ClassifierFeatureDistance(f)
    assert f.frozen and not f.training and not any(p.requires_grad for p in f.parameters())


# ------------------------------------------------------------------ factory


def test_build_perceptual_classifier_and_errors(clf):
    dist = build_perceptual("classifier", classifier=clf)
    assert isinstance(dist, ClassifierFeatureDistance)
    assert dist.name == "classifier-features(layer2,layer3,layer4.0)"
    assert dist.describe()["perceptual"] == dist.name
    with pytest.raises(ValueError, match="classifier"):
        build_perceptual("classifier")
    with pytest.raises(ValueError, match="loss.perceptual"):
        build_perceptual("vgg")  # type: ignore[arg-type]

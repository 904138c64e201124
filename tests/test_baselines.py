"""The paper's baselines, FLINT and FLAEM: the contract, shapes, losses, gradients, checkpoints, training.

Tiny random classifiers from conftest; the paper-dataset configs are built with a random ResNet50
at 256x256 and take two training steps on random data.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from conftest import CLASSES, make_folder, tiny_f
from viscoin.classifier.model import Classifier, ClassifierConfig, save_classifier
from viscoin.cli import main
from viscoin.data import DataConfig
from viscoin.model.baseline import BaselinePass, VectorConceptModel, scheduled
from viscoin.model.contract import ConceptModel
from viscoin.model.flaem import Flaem, FlaemConfig, FlaemLossConfig, load_flaem, save_flaem
from viscoin.model.flint import Flint, FlintConfig, FlintExtractor, FlintLossConfig, load_flint, save_flint
from viscoin.model.loading import load_concept_model, load_trained
from viscoin.model.train_baseline import (
    FlaemTrainConfig,
    FlintTrainConfig,
    restarts_at,
    schedule_position,
    weighted_losses,
)
from viscoin.training.config import load_config, shipped_config_names
from viscoin.utils.config import ConfigError
from viscoin.utils.io import CheckpointError

pytestmark = pytest.mark.usefixtures("one_thread")

K = 5
TERMS = {"flint": ("fidelity", "reconstruction", "sparsity", "diversity"),
         "flaem": ("fidelity", "reconstruction", "sparsity")}
LOADERS = {"flint": (save_flint, load_flint), "flaem": (save_flaem, load_flaem)}


def build(family: str, res: int = 32, k: int = K, f: Classifier | None = None) -> VectorConceptModel:
    f = f if f is not None else tiny_f()
    if family == "flint":
        return Flint(FlintConfig(num_concepts=k, channels=8), f, resolution=res)
    return Flaem(FlaemConfig(num_concepts=k), f, resolution=res)


def images(n: int, res: int = 32, seed: int = 1) -> torch.Tensor:
    return torch.rand(n, 3, res, res, generator=torch.Generator().manual_seed(seed)) * 2 - 1


def smooth_images(n: int, res: int = 32, seed: int = 1) -> torch.Tensor:
    """Images a small decoder can learn to draw (noise cannot be reconstructed from K numbers)."""
    corners = torch.rand(n, 3, 2, 2, generator=torch.Generator().manual_seed(seed)) * 2 - 1
    return torch.nn.functional.interpolate(corners, size=(res, res), mode="bilinear", align_corners=True)


# -- shapes and the contract --------------------------------------------------------------------------


@pytest.mark.parametrize("res", [32, 64])
@pytest.mark.parametrize("family", ["flint", "flaem"])
def test_shapes_and_the_contract(family, res):
    model = build(family, res).eval()
    assert isinstance(model, ConceptModel) and model.family == family.upper() and model.num_concepts == K
    x = images(2, res)
    with torch.no_grad():
        enc = model.encode(x)
        assert enc.phi.shape == (2, K, 1, 1) and (enc.phi >= 0).all() and enc.support is None
        assert torch.equal(enc.logits_f, model.classify(x)) and enc.logits_g.shape == (2, 3)
        assert torch.equal(model.pool(enc.phi), enc.phi.flatten(1))
        assert torch.allclose(model.predict_from(enc.phi), enc.logits_g)
        img = model.decode(enc.phi, enc.support)
        assert img.shape == (2, 3, res, res) and torch.isfinite(img).all()
        if family == "flaem":
            assert img.abs().max() <= 1                       # tanh output
        rel = model.relevance(enc.phi)
        assert rel.shape == (2, K) and rel.abs().max() <= 1
        # The metrics' edits of Φ reach the predictor and the decoder: scale, zero, set φ_j.
        phi = enc.phi + 0.5                                   # every concept active
        w, _ = model.predictor_weights()
        for j, edit in [(0, lambda p: p * 3), (1, lambda p: p * 0), (2, lambda p: p * 0 + 7)]:
            edited = phi.clone()
            edited[:, j] = edit(edited[:, j])
            moved = model.predict_from(edited) - model.predict_from(phi)
            expected = (edited[:, j, 0, 0] - phi[:, j, 0, 0])[:, None] * w[:, j]
            assert torch.allclose(moved, expected, atol=1e-5)
            assert not torch.equal(model.decode(edited, None), model.decode(phi, None))
    assert model.reconstruct(x).shape == (2, 3, res, res) and model.predict(x).shape == (2, 3)
    assert model.describe()["family"] == family.upper()
    assert model.predictor_weights()[1].shape == (3,)         # a bias per class, as FLINT and FLAEM publish
    # f is not part of the model's state: never trained or saved with it.
    assert not any(k.startswith("f.") for k in model.state_dict())


@pytest.mark.parametrize("family", ["flint", "flaem"])
def test_shape_checks_name_what_is_wrong(family):
    model = build(family)
    with pytest.raises(ValueError, match=r"x: expected images \[N, 3, 32, 32\]"):
        model.encode(torch.zeros(1, 3, 16, 16))
    with pytest.raises(ValueError, match=r"Φ: expected \[N, 5, 1, 1\]"):
        model.decode(torch.zeros(1, K, 3, 3), None)
    with pytest.raises(ValueError, match=r"Φ: expected \[N, 5, 1, 1\]"):
        model.predict_from(torch.zeros(1, K))
    with pytest.raises(ValueError, match="Φ': .* has no support branch"):
        model.decode(torch.zeros(1, K, 1, 1), torch.zeros(1, 9 * K))


def test_unsupported_resolutions_and_taps_are_clear_errors():
    with pytest.raises(ValueError, match="FLINT's decoder: resolution 48 .* multiple of 32"):
        build("flint", 48)
    with pytest.raises(ValueError, match="FLAEM's decoder: resolution 30 .* divisible by 4"):
        build("flaem", 30)
    with pytest.raises(ConfigError, match="model.taps: tap 'layer4.5' is out of range"):
        Flint(FlintConfig(num_concepts=2, channels=4, taps=("layer3", "layer4.5")), tiny_f(), resolution=32)


@pytest.mark.parametrize("res, sizes, strides", [(32, (2, 1), [2, 1]), (64, (4, 2), [2, 1]), (224, (14, 7), [2, 1])])
def test_flint_taps_meet_at_the_same_size(res, sizes, strides):
    """layer3 and the input of layer4's last block, brought to the smaller one's side whatever R."""
    model = build("flint", res)
    assert [s[1] for s in model.tap_shapes] == list(sizes) and model.psi.strides == strides
    # Odd sides (another backbone, another resolution) still meet: a last adaptive pool fixes one pixel.
    psi = FlintExtractor([(4, 13, 13), (6, 7, 7), (3, 3, 3)], channels=4, num_concepts=3)
    assert psi.strides == [5, 3, 1]
    out = psi([torch.rand(2, 4, 13, 13), torch.rand(2, 6, 7, 7), torch.rand(2, 3, 3, 3)])
    assert out.shape == (2, 3) and (out >= 0).all()


# -- losses -------------------------------------------------------------------------------------------


def test_flint_loss_terms_match_the_formulas():
    model = build("flint").train()
    x = images(4)
    out = model(x)
    t = Flint.loss_terms(out, x)
    p_f = out.encoding.logits_f.softmax(1)
    assert torch.allclose(t["fidelity"], -(p_f * out.encoding.logits_g.log_softmax(1)).sum(1).mean())
    assert torch.allclose(t["reconstruction"], (out.x_rec - x).pow(2).mean())
    a = out.encoding.phi.flatten(1).abs()
    assert torch.allclose(t["sparsity"], a.mean())

    def entropy(v: torch.Tensor) -> torch.Tensor:
        p = v.softmax(1)
        return -(p * p.log()).sum(1).mean()

    assert torch.allclose(t["diversity"], entropy(a) - entropy(a.mean(0, keepdim=True)), atol=1e-6)


def test_flaem_loss_terms_match_the_formulas():
    model = build("flaem").train()
    x = images(4)
    out = model(x)
    t = Flaem.loss_terms(out, x)
    enc = out.encoding
    assert torch.allclose(t["fidelity"], (enc.logits_f - enc.logits_g.log_softmax(1)).pow(2).mean())
    assert torch.allclose(t["reconstruction"], (out.x_rec - x).pow(2).mean())
    assert torch.allclose(t["sparsity"], enc.phi.flatten(1).abs().sum(1).mean())


@pytest.mark.parametrize("family, term", [(f, t) for f in TERMS for t in TERMS[f]])
def test_each_loss_term_alone_goes_down(family, term):
    """A few Adam steps on one term alone lower it (on a fixed tiny batch): its excess over its floor
    (FLINT's fidelity: the entropy of f's probabilities, reached when g's equal them) shrinks by 10% at least."""
    torch.manual_seed(0)
    model = build(family).train()
    model.predictor.dropout.p = 0.0              # the same function before and after
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    x = smooth_images(8)
    floor = 0.0
    if (family, term) == ("flint", "fidelity"):
        with torch.no_grad():
            p_f = model.classify(x).softmax(1)
        floor = -(p_f * p_f.log()).sum(1).mean().item()
    values = []
    for _ in range(20):
        value = model.loss_terms(model(x), x)[term]
        values.append(value.item())
        opt.zero_grad()
        value.backward()
        opt.step()
    values.append(model.loss_terms(model(x), x)[term].item())
    first, last = values[0] - floor, values[-1] - floor
    if term == "diversity":                      # starts near 0 (all concepts alike) and goes negative
        assert last < first - 0.05, values
    else:
        assert last < 0.9 * first, (term, floor, values)


def test_flint_default_schedule_is_the_released_cifar10_one():
    w = FlintLossConfig()
    assert w.weights(1) == {"fidelity": 0, "reconstruction": 2.0, "sparsity": 0, "diversity": 0}
    assert w.weights(2) == {"fidelity": 0, "reconstruction": 2.0, "sparsity": 0.001, "diversity": 0}
    assert w.weights(3) == {"fidelity": 0.6, "reconstruction": 2.0, "sparsity": 0.15, "diversity": 0}
    assert w.weights(50) == {"fidelity": 0.6, "reconstruction": 2.0, "sparsity": 0.15, "diversity": 0.2}
    assert FlaemLossConfig().weights(1) == {"fidelity": 1e-4, "reconstruction": 1e-2, "sparsity": 1e-6}
    assert scheduled(((2, 0.5), (4, 0.1)), 1, default=9.0) == 9.0
    with pytest.raises(ConfigError, match="loss.sparsity: the starts must increase"):
        FlintLossConfig(sparsity=((3, 0.1), (2, 0.2)))
    with pytest.raises(ConfigError, match="loss.fidelity: every start must be"):
        FlintLossConfig(fidelity=((0, 0.6),))
    with pytest.raises(ConfigError, match="loss.reconstruction: expected >= 0"):
        FlaemLossConfig(reconstruction=-1)


def test_schedule_positions_and_restarts():
    cfg = FlintTrainConfig(restarts=((3, 4e-5),))
    assert [schedule_position(cfg, s, 4) for s in (0, 3, 4, 8)] == [1, 1, 2, 3]
    assert [s for s in range(20) if restarts_at(cfg, s, 4)] == [8]       # the first step of epoch 3
    steps = FlintTrainConfig(schedule_unit="step", restarts=((5, 1e-4),))
    assert [s for s in range(20) if restarts_at(steps, s, 4)] == [4]     # step 5, counted from 1
    assert scheduled(steps.restarts, schedule_position(steps, 3, 4), steps.lr) == steps.lr
    assert scheduled(steps.restarts, schedule_position(steps, 4, 4), steps.lr) == 1e-4


# -- gradients ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("family", ["flint", "flaem"])
def test_gradients_reach_every_trainable_part_and_never_f(family):
    model = build(family).train()
    bn = model.f.net.bn1
    stats = (bn.running_mean.clone(), bn.running_var.clone())
    x = images(6)
    weights = {t: 1.0 for t in TERMS[family]}
    out, terms = weighted_losses(model, model, x, weights)
    assert isinstance(out, BaselinePass) and set(terms) == {*TERMS[family], "total"}
    terms["total"].backward()
    for name, p in model.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all() and p.grad.abs().sum() > 0, name
    prefixes = {"flint": {"psi", "predictor", "decoder"}, "flaem": {"concepts_layer", "predictor", "decoder"}}[family]
    assert {n.split(".")[0] for n, _ in model.named_parameters()} == prefixes
    assert all(p.grad is None for p in model.f.parameters()) and not model.f.training
    assert torch.equal(bn.running_mean, stats[0]) and torch.equal(bn.running_var, stats[1])


@pytest.mark.parametrize("family", ["flint", "flaem"])
def test_encode_is_differentiable_in_x_only_when_asked(family):
    model = build(family).eval()
    x = images(2).requires_grad_(True)
    model.encode(x).phi.sum().backward()
    assert x.grad is not None and x.grad.abs().sum() > 0
    assert all(p.grad is None for p in model.f.parameters())
    with torch.no_grad():
        assert not model.encode(images(2)).phi.requires_grad


# -- checkpoints --------------------------------------------------------------------------------------


@pytest.mark.parametrize("family", ["flint", "flaem"])
def test_checkpoint_round_trip_and_refuses_another_f(family, tmp_path):
    save, load = LOADERS[family]
    model = build(family).eval()
    with torch.no_grad():                                      # non-default BatchNorm statistics travel too
        for m in model.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.uniform_(-0.1, 0.1)
    save(model, tmp_path / family, tmp_path / "f", extra={"classes": CLASSES})
    info = json.loads((tmp_path / family / "config.json").read_text())
    assert info["format"] == f"viscoin.{family}" and info["network"] == family
    assert info["source"]["classifier"]["state_sha256"] == model.classifier_fingerprint()
    back = load(tmp_path / family, classifier=tiny_f())
    assert type(back) is type(model) and back.config == model.config and not back.training
    for k, v in model.state_dict().items():
        assert torch.equal(v, back.state_dict()[k]), k
    x = images(3)
    with torch.no_grad():
        a, b = model.encode(x), back.encode(x)
        assert torch.equal(a.phi, b.phi) and torch.equal(a.logits_g, b.logits_g)
        assert torch.equal(model.reconstruct(x), back.reconstruct(x))
    with pytest.raises(CheckpointError, match="trained with a different classifier"):
        load(tmp_path / family, classifier=tiny_f(seed=1))
    other = LOADERS["flaem" if family == "flint" else "flint"][1]
    with pytest.raises(CheckpointError, match=f'expected "format": "viscoin.{"flaem" if family == "flint" else "flint"}"'):
        other(tmp_path / family, classifier=tiny_f())


def test_load_concept_model_and_load_trained_open_both(tmp_path):
    folder = make_folder(tmp_path / "shapes", per_class=4)
    save_classifier(tiny_f(), tmp_path / "f")
    data = DataConfig(kind="folder", root=str(folder), resolution=32)
    for family in ("flint", "flaem"):
        model = build(family)
        LOADERS[family][0](model, tmp_path / "run" / family, tmp_path / "f",
                           extra={"data": data.to_dict(), "classes": CLASSES})
        loaded = load_concept_model(tmp_path / "run" / family)     # f from the recorded path, checked
        assert type(loaded) is type(model) and loaded.family == family.upper()
        trained = load_trained(tmp_path / "run" / family)
        assert trained.classes == CLASSES and trained.model.num_concepts == K
        test = trained.dataset("test")
        with torch.no_grad():
            enc = trained.model.encode(test[0]["image"][None])
        assert enc.phi.shape == (1, K, 1, 1)


# -- training -----------------------------------------------------------------------------------------

ENV = dict(os.environ, OMP_NUM_THREADS="1")


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    """An image folder and a tiny f saved with the folder's class names."""
    root = tmp_path_factory.mktemp("baselines")
    folder = make_folder(root / "shapes")
    save_classifier(tiny_f(), root / "f", extra={"classes": CLASSES})
    return folder, root / "f"


def train_args(setup, family: str, out: Path, *extra: str) -> list[str]:
    folder, f = setup
    return [family, "train", "--config", "tiny", f"data.root={folder}", f"classifier={f}", f"run.out_dir={out}",
            "run.progress=false", *extra]


def test_flint_train_kill_resume_equals_an_uninterrupted_run(setup, tmp_path):
    extra = ("restarts=[[6, 5.0e-4]]",)                        # an optimiser restart inside the run
    ref = tmp_path / "ref"
    assert main(train_args(setup, "flint", ref, *extra)) == 0
    metrics = json.loads((ref / "metrics.json").read_text())
    assert metrics["family"] == "FLINT" and metrics["steps"] == 40 and len(metrics["history"]) == 2
    assert sorted(p.name for p in (ref / "samples").iterdir())[0] == "rec-000000010.png"
    header = (ref / "logs" / "csv" / "metrics.csv").read_text().splitlines()[0].split(",")
    assert {f"loss/{t}" for t in (*TERMS["flint"], "total")} | {f"weight/{t}" for t in TERMS["flint"]} <= set(header)
    info = json.loads((ref / "flint" / "config.json").read_text())
    assert info["extra"]["classes"] == CLASSES and info["extra"]["test"]["count"] > 0
    assert info["source"]["classifier"]["path"] == str(setup[1].resolve())
    assert isinstance(load_flint(ref / "flint"), Flint)

    run = tmp_path / "killed"
    cmd = [sys.executable, "-m", "viscoin", *train_args(setup, "flint", run, *extra)]
    proc = subprocess.Popen(cmd, env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    latest = run / "checkpoints" / "latest.json"
    deadline = time.time() + 300
    while time.time() < deadline and proc.poll() is None:
        if latest.is_file() and json.loads(latest.read_text() or "{}").get("step", 0) >= 12:
            break
        time.sleep(0.01)
    assert proc.poll() is None, "the run ended before it could be killed"
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    res = subprocess.run([*cmd, "--resume"], env=ENV, capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stderr[-3000:]
    resumed = re.search(r"resumed at step (\d+)", res.stdout)
    assert resumed and 0 < int(resumed.group(1)) < 40, res.stdout
    a = load_file(str(ref / "flint" / "weights.safetensors"))
    b = load_file(str(run / "flint" / "weights.safetensors"))
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k


def test_flaem_trains_and_the_training_data_is_checked(setup, tmp_path, capsys):
    out = tmp_path / "flaem"
    assert main(train_args(setup, "flaem", out, "epochs=2", "eval_every=0")) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["family"] == "FLAEM" and metrics["steps"] == 8 and 0 <= metrics["test_accuracy_g"] <= 1
    assert isinstance(load_concept_model(out / "flaem"), Flaem)
    capsys.readouterr()
    folder, _ = setup
    save_classifier(tiny_f(num_classes=4), tmp_path / "f4")
    assert main(train_args((folder, tmp_path / "f4"), "flaem", tmp_path / "x")) == 2
    assert "has 4 classes" in capsys.readouterr().err
    save_classifier(tiny_f(), tmp_path / "f-other", extra={"classes": ["a_red_square", "c_blue_bar", "b_green_disc"]})
    assert main(train_args((folder, tmp_path / "f-other"), "flint", tmp_path / "y")) == 2
    assert "was trained on other classes than the data (class 1 is 'c_blue_bar' for f" in capsys.readouterr().err
    save_classifier(tiny_f(), tmp_path / "f64", extra={"classes": CLASSES, "data": {"resolution": 64}})
    assert main(train_args((folder, tmp_path / "f64"), "flint", tmp_path / "y")) == 2
    assert "data.resolution=32, but the classifier" in capsys.readouterr().err
    # A finished run's folder is refused without --overwrite, replaced with it.
    assert main(train_args(setup, "flaem", out, "epochs=1", "eval_every=0")) == 2
    assert "already holds a viscoin run" in capsys.readouterr().err
    assert main([*train_args(setup, "flaem", out, "epochs=1", "eval_every=0"), "--overwrite"]) == 0
    assert json.loads((out / "metrics.json").read_text())["steps"] == 4
    assert main(["flint", "train", "--config", "tiny", f"data.root={folder}", f"run.out_dir={tmp_path / 'z'}"]) == 2
    assert "classifier: set it to a classifier folder" in capsys.readouterr().err


# -- the shipped configs -----------------------------------------------------------------------------

PAPER = {"cub": (200, 256), "cars": (196, 256), "celebahq": (2, 64)}   # classes, K (VisCoIN's table 3)
TRAIN_CONFIGS = {"flint": FlintTrainConfig, "flaem": FlaemTrainConfig}


def test_shipped_configs():
    for family, cls in TRAIN_CONFIGS.items():
        assert set(shipped_config_names(family)) == {"cub", "cars", "celebahq", "birds", "tiny"}
        for name in shipped_config_names(family):
            cfg = load_config(cls, name, family=family)
            if name in PAPER:
                assert cfg.model.num_concepts == PAPER[name][1] and cfg.data.resolution == 256
        birds = load_config(cls, "birds", family=family)
        assert birds.model.num_concepts == 16 and birds.classifier == "viscoin:birds/classifier"
        assert birds.data.kind == "synthetic"


@pytest.mark.parametrize("family, name", [(f, n) for f in TRAIN_CONFIGS for n in PAPER])
def test_paper_configs_build_with_resnet50_at_256_and_take_two_steps(family, name):
    cfg = load_config(TRAIN_CONFIGS[family], name, family=family)
    f = Classifier(ClassifierConfig(arch="resnet50", num_classes=PAPER[name][0], pretrained="none"),
                   load_pretrained=False)
    model = cfg.model_class(cfg.model, f, resolution=cfg.data.resolution).train()
    assert model.num_concepts == PAPER[name][1]
    opt = torch.optim.Adam(model.parameters(), lr=cfg.lr, betas=cfg.betas)
    x = images(2, 256)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    last = 10**6                                       # every term weighted as at the end of the run
    for _ in range(2):
        out, terms = weighted_losses(model, model, x, cfg.loss.weights(last))
        assert torch.isfinite(terms["total"]) and out.x_rec.shape == (2, 3, 256, 256)
        opt.zero_grad()
        terms["total"].backward()
        opt.step()
    assert all(p.grad is None for p in f.parameters())
    assert any(not torch.equal(before[k], v) for k, v in model.state_dict().items())


def test_explain_and_report_work_on_baseline_checkpoints_and_name_the_decoder(tmp_path):
    from viscoin.interpret.explain import explain_image
    from viscoin.report.html import write_report

    folder = make_folder(tmp_path / "shapes", per_class=3)
    save_classifier(tiny_f(), tmp_path / "f")
    data = DataConfig(kind="folder", root=str(folder), resolution=32)
    for family in ("flint", "flaem"):
        ckpt = tmp_path / "run" / family
        LOADERS[family][0](build(family), ckpt, tmp_path / "f", extra={"data": data.to_dict(), "classes": CLASSES})
        out = explain_image(ckpt, folder / CLASSES[0] / "000.png", tmp_path / f"{family}.png", top_k=2, threshold=-1)
        assert len(out["concepts"]) == 2 and (tmp_path / f"{family}.png").stat().st_size > 0
        index = write_report(ckpt, tmp_path / f"report-{family}", pairs=1, samples=2)
        html = index.read_text()
        assert f"<h1>{family.upper()} report</h1>" in html and f"{family.upper()}&#x27;s decoder" in html

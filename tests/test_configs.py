"""Every shipped config loads, validates, builds its model and trains one step through its real trainer.

Sizes are shrunk (resolution, batch, number of steps, K) and the data is a tiny generated image
folder, but everything else is the config's own: architecture, optimiser, schedule, losses,
augmentation. A config folder without a runner here fails the test, so a new family cannot ship
untested configs.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from importlib import resources
from pathlib import Path

import pytest
import torch

from conftest import make_folder, tiny_f, tiny_G
from viscoin.classifier.model import save_classifier
from viscoin.classifier.train import ClassifierTrainConfig, train_classifier
from viscoin.model.train import VisCoINTrainConfig, train_viscoin
from viscoin.model.train_baseline import FlaemTrainConfig, FlintTrainConfig, train_baseline
from viscoin.stylegan import save_network
from viscoin.stylegan.train import GeneratorTrainConfig, train_generator
from viscoin.training.config import load_config, shipped_config_names

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def setup(tmp_path_factory) -> dict[str, Path]:
    """A tiny 3-class image folder, and a tiny f and G saved as folders (for VisCoIN's configs)."""
    root = tmp_path_factory.mktemp("configs")
    folder = make_folder(root / "shapes", per_class=4, size=40)
    save_classifier(tiny_f(), root / "f")
    save_network(tiny_G(32), root / "G")
    return {"root": root, "folder": folder, "f": root / "f", "G": root / "G"}


def data_overrides(folder: Path, resolution: int) -> list[str]:
    return ["data.kind=folder", f"data.root={json.dumps(str(folder))}", f"data.resolution={resolution}",
            "data.test_fraction=0.25", "data.synthetic_per_class=[500, 100]"]


def run_classifier(name: str, setup: dict[str, Path], out: Path) -> dict:
    cfg = load_config(ClassifierTrainConfig, name, [
        *data_overrides(setup["folder"], 32), "classifier.pretrained=none", "epochs=1", "batch_size=4",
        f"run.out_dir={json.dumps(str(out))}", "run.progress=false", "run.accelerator=cpu", "run.precision=32-true",
    ], family="classifier")
    return train_classifier(cfg)


def run_generator(name: str, setup: dict[str, Path], out: Path) -> dict:
    """One tiny step of a shipped generator config. A stage that fine-tunes another shipped config's run
    (`init.source: runs/<that config>`, the birds stages) starts from a tiny run of that config first."""
    extra = []
    source = load_config(GeneratorTrainConfig, name, family="generator").init.source
    if source:
        previous = Path(source).name
        assert Path(source) == Path("runs") / previous and previous in shipped_config_names("generator"), source
        run_generator(previous, setup, out.parent / previous)
        extra.append(f"init.source={json.dumps(str(out.parent / previous))}")
    cfg = load_config(GeneratorTrainConfig, name, [
        *data_overrides(setup["folder"], 16), "batch_size=4", "kimg=0.004", "fid.every_kimg=0",
        "samples.grid=4", "discriminator.epilogue.mbstd_group_size=4", *extra,
        f"run.out_dir={json.dumps(str(out))}", "run.progress=false", "run.accelerator=cpu",
    ], family="generator")
    return train_generator(cfg)


def run_viscoin(name: str, setup: dict[str, Path], out: Path) -> dict:
    cfg = load_config(VisCoINTrainConfig, name, [
        *data_overrides(setup["folder"], 32), f"classifier={json.dumps(str(setup['f']))}",
        f"generator={json.dumps(str(setup['G']))}", "model.num_concepts=4", "model.adapter_channels=8",
        "loss.perceptual=classifier", "iterations=1", "batch_real=2", "batch_synthetic=2", "sample_every=1",
        "eval_every=1", "eval_samples=2", f"run.out_dir={json.dumps(str(out))}", "run.progress=false",
        "run.accelerator=cpu", "run.precision=32-true",
    ], family="viscoin")
    return train_viscoin(cfg)


def run_baseline(family: str, name: str, setup: dict[str, Path], out: Path) -> dict:
    cls, model = {"flint": (FlintTrainConfig, ["model.channels=8"]), "flaem": (FlaemTrainConfig, [])}[family]
    cfg = load_config(cls, name, [
        *data_overrides(setup["folder"], 32), f"classifier={json.dumps(str(setup['f']))}", "model.num_concepts=4",
        *model, "iterations=1", "batch_size=2", "sample_every=1", "eval_every=1", "eval_samples=2",
        f"run.out_dir={json.dumps(str(out))}", "run.progress=false", "run.accelerator=cpu", "run.precision=32-true",
    ], family=family)
    return train_baseline(cfg)


RUNNERS: dict[str, Callable[[str, dict[str, Path], Path], dict]] = {
    "classifier": run_classifier,
    "generator": run_generator,
    "viscoin": run_viscoin,
    "flint": lambda name, setup, out: run_baseline("flint", name, setup, out),
    "flaem": lambda name, setup, out: run_baseline("flaem", name, setup, out),
}


def shipped() -> list[tuple[str, str]]:
    root = resources.files("viscoin") / "configs"
    return [(family.name, name) for family in sorted(root.iterdir(), key=lambda p: p.name) if family.is_dir()
            for name in shipped_config_names(family.name)]


def test_every_config_family_has_a_runner():
    families = {family for family, _ in shipped()}
    assert families >= {"classifier", "generator", "viscoin"}
    assert families <= set(RUNNERS), f"config folders without a runner in this test: {families - set(RUNNERS)}"


@pytest.mark.parametrize("family, name", shipped(), ids=[f"{f}/{n}" for f, n in shipped()])
def test_shipped_config_trains_one_step(family, name, setup, tmp_path):
    out = tmp_path / "run"
    metrics = RUNNERS[family](name, setup, out)
    assert (out / "config.yaml").is_file()
    if family == "classifier":
        assert metrics["epochs"] == 1 and 0 <= metrics["test_accuracy"] <= 1
        assert (out / "classifier" / "weights.safetensors").is_file()
    elif family == "generator":
        assert metrics["kimg"] >= 0.004 and (out / "G_ema" / "weights.safetensors").is_file()
    else:
        assert metrics["steps"] == 1 and 0 <= metrics["test_accuracy_g"] <= 1
        assert torch.isfinite(torch.tensor(metrics["test_mse"]))
        assert (out / family / "weights.safetensors").is_file() and list((out / "samples").glob("rec-*.png"))


@pytest.mark.parametrize("family", ["viscoin", "flint", "flaem"])
@pytest.mark.parametrize("name, lowest", [("cub", 0.5), ("cars", 0.7), ("celebahq", 0.85)])
def test_paper_configs_crop_no_more_than_a_generator_can_reconstruct(family, name, lowest):
    """torchvision's default area range (0.08, 1) zooms up to 3.5x: off the distribution G was trained on."""
    cls = {"viscoin": VisCoINTrainConfig, "flint": FlintTrainConfig, "flaem": FlaemTrainConfig}[family]
    cfg = load_config(cls, name, family=family)
    assert cfg.data.crop_scale == (lowest, 1.0)
    if name == "celebahq":                                         # aligned faces: hardly any stretch
        assert cfg.data.crop_ratio == (0.9, 1.1)
    if family == "viscoin":
        assert cfg.model.predictor_bias is False and cfg.model.train_noise == "const"
        assert cfg.loss.orthogonality_reduction == "sum"
        text = Path(str(resources.files("viscoin") / "configs" / family / f"{name}.yaml")).read_text()
        for key in ("alpha", "beta", "gamma", "delta", "orthogonality", "latent"):   # each weight says what it multiplies
            line = next(ln for ln in text.splitlines() if ln.strip().startswith(f"{key}:"))
            assert "#" in line and ("mean" in line or "SUM" in line), line

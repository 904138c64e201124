"""Shared test helpers (`from conftest import ...`) and fixtures.

Fixtures are repo copies of shared/fixtures (tests never read ../shared). The helpers build tiny,
randomly initialised networks and generated data: an image folder of three shape classes, a tiny
classifier f, a tiny StyleGAN2 G, a tiny VisCoIN and a saved VisCoIN checkpoint with its data.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors import safe_open
from safetensors.torch import load_file

from viscoin.classifier.model import Classifier, ClassifierConfig, save_classifier
from viscoin.data import DataConfig
from viscoin.model import VisCoIN, VisCoINConfig, save_viscoin
from viscoin.stylegan import Generator, GeneratorConfig, MappingConfig, SynthesisConfig, save_network

FIXTURES = Path(__file__).parent / "fixtures" / "stylegan2_ada"
MOCK_G32 = FIXTURES / "mock_pkl" / "network-snapshot-g32-mock.pkl"
MOCK_COND16 = FIXTURES / "mock_pkl" / "network-snapshot-cond16-noaug-numpy2-proto3-mock.pkl"
GENERATOR_FIXTURES = ["g32", "g64", "cond16", "resnet16"]
DISCRIMINATOR_FIXTURES = ["g32", "cond16"]


def fixture_config(name: str, prefix: str = "") -> dict:
    return json.loads((FIXTURES / name / f"{prefix}config.json").read_text())


def fixture_tensors(name: str, file: str) -> dict[str, torch.Tensor]:
    return load_file(str(FIXTURES / name / file))


def fixture_order(name: str, file: str) -> list[str]:
    with safe_open(str(FIXTURES / name / file), "pt") as f:
        return json.loads(f.metadata()["state_dict_order"])


# Golden outputs of the official code are reproduced bit for bit on the CPU they were made on. On
# other CPUs (seen: AMD EPYC with the same torch build) BLAS / oneDNN kernels round float32 matrix
# products differently in the last bits: there the match is to float32 rounding (about 6e-6 seen on
# images in [-1, 1]). VISCOIN_BIT_EXACT=1 demands bit identity.
GOLDEN_RTOL = 1e-5
GOLDEN_ATOL = 2e-5


def matches_golden(actual: torch.Tensor, golden: torch.Tensor) -> bool:
    """Bit-identical, or (unless VISCOIN_BIT_EXACT=1) within float32 rounding of the golden tensor."""
    if actual.shape != golden.shape or actual.dtype != golden.dtype:
        return False
    if torch.equal(actual, golden):
        return True
    if os.environ.get("VISCOIN_BIT_EXACT") == "1":
        return False
    err = (actual.double() - golden.double()).abs().max().item()
    return err <= GOLDEN_ATOL + GOLDEN_RTOL * golden.double().abs().max().item()


@pytest.fixture(autouse=True)
def _deterministic():
    torch.manual_seed(0)
    yield


@pytest.fixture
def one_thread():
    """torch on one thread for a test (the CPU is shared; the models are tiny)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


# ---------------------------------------------------------------------------------------------
# Tiny data and networks


CLASSES = ["a_red_square", "b_green_disc", "c_blue_bar"]  # the folders of `make_folder`, in label order


def make_folder(root: Path, per_class: int = 16, size: int = 40) -> Path:
    """Three classes that a tiny CNN separates: a red square, a green disc, a blue bar, at random places."""
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[:size, :size]
    for cls, colour in enumerate([(220, 30, 30), (30, 200, 30), (30, 30, 220)]):
        folder = root / CLASSES[cls]
        folder.mkdir(parents=True)
        for i in range(per_class):
            img = rng.integers(0, 60, (size, size, 3)).astype(np.uint8)
            cy, cx = rng.integers(12, size - 12, 2)
            if cls == 0:
                mask = (abs(yy - cy) < 8) & (abs(xx - cx) < 8)
            elif cls == 1:
                mask = (yy - cy) ** 2 + (xx - cx) ** 2 < 64
            else:
                mask = (abs(yy - cy) < 3) & (abs(xx - cx) < 11)
            img[mask] = colour
            Image.fromarray(img).save(folder / f"{i:03d}.png")
    return root


def tiny_f(num_classes: int = 3, seed: int = 0) -> Classifier:
    torch.manual_seed(seed)
    return Classifier(ClassifierConfig(arch="resnet18", num_classes=num_classes, pretrained="none"), load_pretrained=False)


def tiny_G(res: int = 32, seed: int = 0, c_dim: int = 0) -> Generator:
    torch.manual_seed(seed)
    G = Generator(GeneratorConfig(z_dim=16, w_dim=16, c_dim=c_dim, img_resolution=res, mapping=MappingConfig(num_layers=2),
                                  synthesis=SynthesisConfig(channel_base=8 * res, channel_max=16)))
    with torch.no_grad():
        G.mapping.w_avg.normal_()
    return G.eval()


def tiny_model(res: int = 32, k: int = 4, use_support: bool = True, g_res: int | None = None) -> VisCoIN:
    cfg = VisCoINConfig(num_concepts=k, adapter_channels=8, use_support=use_support)
    return VisCoIN(cfg, tiny_f(), tiny_G(g_res or res), resolution=res)


def active_model(k: int = 4) -> VisCoIN:
    """A tiny VisCoIN (32x32) whose concepts are all active on every input (positive concept-conv biases)."""
    model = VisCoIN(VisCoINConfig(num_concepts=k, adapter_channels=8), tiny_f(), tiny_G(32), resolution=32)
    with torch.no_grad():
        model.psi.concept_conv.bias.add_(torch.linspace(0.5, 1.5, k))
    return model.eval()


class ListDataset:
    """A dataset of given images [N, 3, R, R] and labels [N] (items: dicts image/label/index)."""

    def __init__(self, x: torch.Tensor, y: torch.Tensor) -> None:
        self.x, self.y = x, y

    def __len__(self) -> int:
        return len(self.x)

    def __getitem__(self, i: int) -> dict:
        return {"image": self.x[i], "label": int(self.y[i]), "index": i}


def save_tiny_setup(root: Path, per_class: int = 5) -> tuple[Path, Path]:
    """A generated image folder and a saved tiny VisCoIN (with f and G saved beside it); returns (checkpoint, folder)."""
    folder = make_folder(root / "shapes", per_class=per_class, size=40)
    model = active_model()
    save_classifier(model.f, root / "f")
    save_network(model.G, root / "G")
    data = DataConfig(kind="folder", root=str(folder), resolution=32)
    ckpt = save_viscoin(model, root / "run" / "viscoin", root / "f", root / "G",
                        extra={"data": data.to_dict(), "classes": CLASSES, "test": {"accuracy_g": 0.5, "count": 3}})
    return ckpt, folder


# ---------------------------------------------------------------------------------------------
# Headless Chromium (browser tests)


CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--no-first-run"]


def browser_unavailable() -> str | None:
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        return "playwright is not installed (pip install playwright)"
    if not Path(CHROMIUM).exists() and shutil.which("chromium") is None:
        return f"no Chromium at {CHROMIUM} (apt-get install chromium)"
    return None

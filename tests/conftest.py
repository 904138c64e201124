"""Shared test helpers. Fixtures are repo copies of shared/fixtures (tests never read ../shared)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file

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


@pytest.fixture(autouse=True)
def _deterministic():
    torch.manual_seed(0)
    yield

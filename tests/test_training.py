"""Training infrastructure: configs and overrides, resumable sampling, pickle-free train state."""

from __future__ import annotations

import json
import random
from dataclasses import dataclass, field

import numpy as np
import pytest
import torch

from viscoin.training.config import RunConfig, load_config, parse_override, save_config_yaml
from viscoin.training.runner import ResumableSampler, mix_seed
from viscoin.training.state import (
    decode_state,
    encode_state,
    latest_checkpoint,
    load_train_state,
    save_train_state,
)
from viscoin.utils.config import ConfigError, DictConfig
from viscoin.utils.io import CheckpointError


@dataclass(frozen=True)
class Inner(DictConfig):
    lr: float = 0.1
    milestones: tuple[int, ...] = ()


@dataclass(frozen=True)
class Outer(DictConfig):
    name: str = "x"
    inner: Inner = field(default_factory=Inner)
    run: RunConfig = field(default_factory=RunConfig)


def test_yaml_config_with_overrides_and_saved_resolved(tmp_path):
    src = tmp_path / "c.yaml"
    src.write_text("name: a\ninner:\n  lr: 1e-4\n")  # YAML 1.1 reads 1e-4 as a string: accepted as a number
    cfg = load_config(Outer, src, ["inner.milestones=[30, 60]", "run.devices=2", "name=b"])
    assert cfg.inner.lr == 1e-4 and cfg.inner.milestones == (30, 60)
    assert cfg.run.devices == 2 and cfg.name == "b"
    save_config_yaml(cfg, tmp_path / "resolved.yaml")
    again = load_config(Outer, tmp_path / "resolved.yaml")
    assert again == cfg


def test_config_errors_name_file_and_key(tmp_path):
    src = tmp_path / "c.yaml"
    src.write_text("inner:\n  lrate: 1\n")
    with pytest.raises(ConfigError, match=r"c.yaml.inner: unknown key\(s\) \['lrate'\]"):
        load_config(Outer, src)
    with pytest.raises(ConfigError, match=r"run.devices: expected >= 1, got 0"):
        load_config(Outer, None, ["run.devices=0"])
    with pytest.raises(ConfigError, match="expected KEY=VALUE"):
        parse_override("inner.lr")
    with pytest.raises(ConfigError, match="no such file"):
        load_config(Outer, tmp_path / "missing.yaml")
    with pytest.raises(ConfigError, match="shipped: birds, cars, celebahq, cub, tiny"):
        load_config(Outer, "nope", family="classifier")


def test_shipped_paper_recipes():
    from viscoin.classifier.train import ClassifierTrainConfig

    cub = load_config(ClassifierTrainConfig, "cub", family="classifier")
    assert (cub.optim.name, cub.optim.lr, cub.epochs, cub.batch_size, cub.data.resolution) == ("adam", 1e-4, 30, 32, 256)
    celeb = load_config(ClassifierTrainConfig, "celebahq", family="classifier")
    assert (celeb.optim.name, celeb.optim.lr, celeb.epochs, celeb.batch_size) == ("adam", 1e-3, 10, 64)
    cars = load_config(ClassifierTrainConfig, "cars", family="classifier")
    assert (cars.optim.name, cars.optim.lr, cars.epochs, cars.batch_size) == ("sgd", 0.1, 90, 128)
    assert cars.schedule.kind == "multistep" and cars.schedule.milestones == (30, 60) and cars.schedule.gamma == 0.1
    for cfg in (cub, celeb, cars):
        assert cfg.classifier.arch == "resnet50" and cfg.classifier.pretrained == "imagenet"


def test_sampler_is_a_partition_and_resumes_mid_epoch():
    full = list(ResumableSampler(10, seed=3, epoch=1))
    assert sorted(i for i, _ in full) == list(range(10))
    assert full != list(ResumableSampler(10, seed=3, epoch=2))  # new order each epoch
    assert list(ResumableSampler(10, seed=3, epoch=1, start=4)) == full[4:]  # resume = same tail
    # Two ranks: disjoint shares covering everything (padded to equal length), same seeds as world 1 would use.
    r0 = list(ResumableSampler(9, seed=3, epoch=0, rank=0, world_size=2))
    r1 = list(ResumableSampler(9, seed=3, epoch=0, rank=1, world_size=2))
    assert len(r0) == len(r1) == 5
    assert sorted({i for i, _ in r0 + r1}) == list(range(9))
    seeds = [s for _, s in r0 + r1]
    assert len(set(seeds)) == len(seeds)
    assert [i for i, _ in ResumableSampler(4, 0, 0, shuffle=False)] == [0, 1, 2, 3]


def test_mix_seed_is_stable():
    assert mix_seed(1, 2) == mix_seed(1, 2) != mix_seed(2, 1)
    assert 0 <= mix_seed(123456789, 987654321) < 2**63


def test_encode_decode_optimizer_and_rng_state():
    model = torch.nn.Linear(3, 2)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    model(torch.randn(4, 3)).sum().backward()
    opt.step()
    state = {
        "optimizer": opt.state_dict(),
        "py_rng": random.getstate(),
        "np_rng": np.random.get_state(),
        "counters": {"step": 7, "best": float("inf")},
    }
    tensors: dict[str, torch.Tensor] = {}
    encoded = encode_state(state, "s", tensors)
    json.dumps(encoded)  # plain JSON
    back = decode_state(json.loads(json.dumps(encoded)), tensors)
    opt2 = torch.optim.Adam(torch.nn.Linear(3, 2).parameters(), lr=1)
    opt2.load_state_dict(back["optimizer"])
    assert opt2.param_groups[0]["lr"] == 1e-3
    assert torch.equal(opt2.state[opt2.param_groups[0]["params"][0]]["exp_avg"], opt.state[model.weight]["exp_avg"])
    random.setstate(back["py_rng"])
    np.random.set_state(back["np_rng"])
    assert back["counters"] == {"step": 7, "best": float("inf")}
    with pytest.raises(TypeError, match="cannot store object"):
        encode_state({"x": object()}, "s", {})


def test_train_state_folders_latest_pointer_and_pruning(tmp_path):
    root = tmp_path / "checkpoints"
    assert latest_checkpoint(root) is None
    for step in (5, 10, 15):
        save_train_state(root, step, {"w": torch.full((2,), float(step)), "step": step}, "a: 1\n", keep_last=2)
    assert sorted(p.name for p in root.iterdir()) == ["latest.json", "step-000000010", "step-000000015"]
    path = latest_checkpoint(root)
    step, state = load_train_state(path)
    assert step == 15 and torch.equal(state["w"], torch.full((2,), 15.0))
    assert (path / "config.yaml").read_text() == "a: 1\n"
    # A corrupted tensor file is detected.
    (path / "state.safetensors").write_bytes(b"garbage")
    with pytest.raises(CheckpointError, match="does not match the SHA-256"):
        load_train_state(path)


def test_failed_checkpoint_write_keeps_the_previous_one(tmp_path, monkeypatch):
    root = tmp_path / "checkpoints"
    save_train_state(root, 1, {"w": torch.ones(2)}, "")
    import viscoin.training.state as st

    def boom(*a, **k):
        raise OSError("disk full")

    monkeypatch.setattr(st, "save_tensors", boom)
    with pytest.raises(OSError):
        save_train_state(root, 2, {"w": torch.ones(2)}, "")
    assert latest_checkpoint(root).name == "step-000000001"
    assert not any(p.name.startswith(".step") for p in root.iterdir())


def test_runner_keeps_frozen_networks_in_eval_mode_and_out_of_optimisers(tmp_path):
    from viscoin.training.runner import Runner

    run = RunConfig(out_dir=str(tmp_path / "r"), accelerator="cpu", progress=False)
    runner = Runner(run, Outer(run=run), loggers=False)
    frozen = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.BatchNorm2d(4)).train()
    before = frozen[1].running_mean.clone()
    frozen = runner.to_device(frozen)
    assert not frozen.training and not any(p.requires_grad for p in frozen.parameters())
    frozen(torch.randn(2, 3, 8, 8))
    assert torch.equal(frozen[1].running_mean, before)  # BatchNorm statistics never move
    assert (tmp_path / "r" / "config.yaml").is_file()
    # Seeding is a function of (seed, rank, step) only.
    runner.seed_step(5)
    a = torch.rand(3)
    runner.seed_step(5)
    assert torch.equal(a, torch.rand(3))


def test_a_deterministic_run_does_not_leave_the_process_deterministic(tmp_path):
    """torch's switch is process-wide: `viscoin demo --compare` trains FLINT after VisCoIN in one process."""
    from viscoin.training.runner import Runner

    assert not torch.are_deterministic_algorithms_enabled()
    run = RunConfig(out_dir=str(tmp_path / "r"), accelerator="cpu", progress=False, deterministic=True)
    runner = Runner(run, Outer(run=run), loggers=False)
    assert torch.are_deterministic_algorithms_enabled()          # during the run
    runner.close()
    assert not torch.are_deterministic_algorithms_enabled()      # as it was before

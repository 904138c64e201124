"""Run settings shared by every trainer, and YAML configs with command-line overrides.

A trainer's config is a typed dataclass (nanoGPT style) read from YAML:

    viscoin classifier train --config cub data.root=/data/CUB_200_2011 run.out_dir=runs/cub optim.lr=3e-4

`--config` takes a file path or the name of a config shipped in `viscoin/configs/<family>/`.
Every field can be overridden with `dotted.key=value` (the value is parsed as YAML). The
resolved config is saved as ``config.yaml`` in the run folder and beside every checkpoint.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any, Literal, TypeVar

import yaml

from viscoin.data import DataConfig
from viscoin.utils.config import ConfigError, DictConfig, config_from_dict, config_to_dict
from viscoin.utils.io import atomic_path

T = TypeVar("T")


@dataclass(frozen=True)
class RunConfig(DictConfig):
    """Where and how a training run executes (devices, precision, logging, checkpoints)."""

    out_dir: str = "runs/run"                       # run folder: config.yaml, checkpoints/, logs/, final outputs
    seed: int = 0                                   # seeds data order, augmentation and every random op
    accelerator: Literal["auto", "cpu", "cuda", "mps"] = "auto"  # auto: CUDA when available
    devices: int = 1                                # devices per node (DDP when > 1)
    num_nodes: int = 1                              # nodes (multi-node DDP, launched by torchrun/SLURM)
    precision: Literal["auto", "32-true", "bf16-mixed", "16-mixed"] = "auto"  # auto: bf16-mixed on CUDA, else 32-true
    num_workers: int = 0                            # data-loading worker processes per device
    log_every: int = 10                             # log training metrics every N steps
    ckpt_every: int = 500                           # checkpoint every N steps (and at the end of every epoch)
    keep_last: int = 2                              # checkpoints kept on disk
    deterministic: bool = False                     # torch deterministic algorithms (slower; exact reruns on GPU)
    progress: bool = True                           # progress bar

    def __post_init__(self) -> None:
        for name in ("devices", "num_nodes", "log_every", "ckpt_every", "keep_last"):
            if getattr(self, name) < 1:
                raise ConfigError(f"run.{name}: expected >= 1, got {getattr(self, name)}")
        if self.num_workers < 0:
            raise ConfigError(f"run.num_workers: expected >= 0, got {self.num_workers}")


def shipped_config_path(family: str, name: str) -> Path | None:
    """Path of a config shipped with viscoin (`viscoin/configs/<family>/<name>.yaml`), if it exists."""
    root = resources.files("viscoin") / "configs" / family
    candidate = root / f"{name}.yaml"
    return Path(str(candidate)) if candidate.is_file() else None


def shipped_config_names(family: str) -> list[str]:
    root = resources.files("viscoin") / "configs" / family
    if not root.is_dir():
        return []
    return sorted(p.name[:-5] for p in root.iterdir() if p.name.endswith(".yaml"))


def _set_dotted(data: dict[str, Any], key: str, value: Any) -> None:
    parts = key.split(".")
    node = data
    for part in parts[:-1]:
        child = node.get(part)
        if child is None:
            child = node[part] = {}
        if not isinstance(child, dict):
            raise ConfigError(f"override {key}: {part!r} is not a section (it holds {child!r})")
        node = child
    node[parts[-1]] = value


def parse_override(text: str) -> tuple[str, Any]:
    """'optim.lr=1e-3' -> ('optim.lr', 0.001). The value is parsed as YAML ('[30, 60]', 'null', 'true', ...)."""
    if "=" not in text:
        raise ConfigError(f"override {text!r}: expected KEY=VALUE, e.g. optim.lr=1e-3")
    key, raw = text.split("=", 1)
    key = key.strip()
    if not key or any(not p for p in key.split(".")):
        raise ConfigError(f"override {text!r}: empty key")
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError as exc:
        raise ConfigError(f"override {text!r}: value is not valid YAML ({exc})") from exc
    return key, value


def load_config(
    cls: type[T],
    source: str | os.PathLike | None,   # YAML file, shipped config name, or None (defaults)
    overrides: Sequence[str] = (),       # "dotted.key=value" strings
    family: str = "",                    # shipped-config folder to look names up in
) -> T:
    """Build a typed config from YAML plus overrides; errors name the file and the key."""
    data: dict[str, Any] = {}
    where = "config"
    if source is not None:
        path = Path(source)
        if not path.is_file():
            shipped = shipped_config_path(family, str(source)) if family else None
            if shipped is None:
                names = shipped_config_names(family) if family else []
                raise ConfigError(
                    f"--config {source}: no such file"
                    + (f", and not a shipped config (shipped: {', '.join(names)})" if names else "")
                )
            path = shipped
        try:
            loaded = yaml.safe_load(path.read_text())
        except yaml.YAMLError as exc:
            raise ConfigError(f"{path}: not valid YAML ({exc})") from exc
        if loaded is None:
            loaded = {}
        if not isinstance(loaded, dict):
            raise ConfigError(f"{path}: expected a mapping at the top level, got {type(loaded).__name__}")
        data = loaded
        where = str(path)
    for text in overrides:
        key, value = parse_override(text)
        _set_dotted(data, key, value)
    return config_from_dict(cls, data, where)


def data_config_with_overrides(
    saved: dict[str, Any] | None,        # the data config saved with a checkpoint (a dict)
    overrides: Sequence[str] = (),       # "data.KEY=VALUE" strings
    where: str = "the checkpoint",       # what the saved config belongs to (for messages)
) -> DataConfig:
    """The data config a checkpoint was trained with, changed by ``data.KEY=VALUE`` overrides (e.g. the data moved)."""
    data = dict(saved or {})
    for text in overrides:
        key, value = parse_override(text)
        if not key.startswith("data."):
            raise ConfigError(f"override {text!r}: only data.* settings can be changed here (e.g. data.root=/elsewhere)")
        data[key[len("data."):]] = value
    if not data:
        raise ConfigError(f"{where} records no data config; give data.kind=... data.root=... data.resolution=...")
    return config_from_dict(DataConfig, data, "data")


def save_config_yaml(cfg: Any, path: str | os.PathLike) -> None:
    """Write the resolved config as YAML, atomically."""
    with atomic_path(path) as tmp:
        tmp.write_text(yaml.safe_dump(config_to_dict(cfg), sort_keys=False))

"""viscoin's own StyleGAN2 checkpoint format: a folder with ``config.json`` + ``weights.safetensors``.

No pickle anywhere. ``config.json`` holds the format tag, the network kind, its typed config,
the SHA-256 of the weights file (so a truncated or swapped weights file is detected), where
the network came from, and free-form extras (for example ADA's augmentation probability).
The weights file is written first and ``config.json`` last, each atomically, so a folder with a
``config.json`` is always complete.

`load_generator` / `load_discriminator` also accept an official stylegan2-ada-pytorch ``.pkl``
wherever a network is expected; it is read by the restricted loader in `official.py`.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch

from viscoin.stylegan.config import DiscriminatorConfig, GeneratorConfig
from viscoin.stylegan.discriminator import Discriminator
from viscoin.stylegan.generator import Generator
from viscoin.utils.config import ConfigError
from viscoin.utils.io import (
    CheckpointError,
    copy_named_tensors,
    load_tensors,
    read_json,
    save_tensors,
    sha256_file,
    write_json,
)

FORMAT = "viscoin.stylegan2"
FORMAT_VERSION = 1
CONFIG_NAME = "config.json"
WEIGHTS_NAME = "weights.safetensors"

_KINDS: dict[str, tuple[type, type]] = {
    "generator": (Generator, GeneratorConfig),
    "discriminator": (Discriminator, DiscriminatorConfig),
}


def _kind_of(module: torch.nn.Module) -> str:
    for kind, (cls, _) in _KINDS.items():
        if isinstance(module, cls):
            return kind
    raise TypeError(f"expected a viscoin Generator or Discriminator, got {type(module).__name__}")


def save_network(
    module: Generator | Discriminator,
    out_dir: str | os.PathLike,
    source: dict[str, Any] | None = None,
    extra: dict[str, Any] | None = None,
) -> Path:
    """Save `module` (its config and every parameter and buffer) to the folder `out_dir`."""
    kind = _kind_of(module)
    out_dir = Path(out_dir)
    if out_dir.exists() and not out_dir.is_dir():
        raise CheckpointError(f"output {out_dir} exists and is not a folder")
    out_dir.mkdir(parents=True, exist_ok=True)
    weights_path = out_dir / WEIGHTS_NAME
    save_tensors(weights_path, module.state_dict(), metadata={"format": FORMAT, "network": kind})
    write_json(
        out_dir / CONFIG_NAME,
        {
            "format": FORMAT,
            "format_version": FORMAT_VERSION,
            "network": kind,
            "config": module.config.to_dict(),
            "weights": WEIGHTS_NAME,
            "weights_sha256": sha256_file(weights_path),
            "source": source or {},
            "extra": extra or {},
        },
    )
    return out_dir


def read_checkpoint_info(path: str | os.PathLike) -> dict[str, Any]:
    """The parsed ``config.json`` of a checkpoint folder (or of the JSON file itself), validated."""
    path = Path(path)
    cfg_path = path / CONFIG_NAME if path.is_dir() else path
    if not cfg_path.exists():
        raise CheckpointError(
            f"{path}: not a viscoin StyleGAN2 checkpoint (no {CONFIG_NAME}); expected a folder written by "
            "`viscoin generator import` or an official stylegan2-ada-pytorch .pkl"
        )
    info = read_json(cfg_path, "checkpoint config")
    if not isinstance(info, dict) or info.get("format") != FORMAT:
        raise CheckpointError(f"{cfg_path}: expected \"format\": \"{FORMAT}\", got {info.get('format') if isinstance(info, dict) else info!r}")
    if info.get("format_version") != FORMAT_VERSION:
        raise CheckpointError(
            f"{cfg_path}: format_version {info.get('format_version')!r} is not supported (this viscoin reads {FORMAT_VERSION})"
        )
    if info.get("network") not in _KINDS:
        raise CheckpointError(f"{cfg_path}: \"network\" must be one of {sorted(_KINDS)}, got {info.get('network')!r}")
    info["_dir"] = str(cfg_path.parent)
    return info


def load_network(
    path: str | os.PathLike,
    device: str | torch.device = "cpu",
    expect: str | None = None,
) -> Generator | Discriminator:
    """Load a network from our format. `expect` ('generator'/'discriminator') checks its kind."""
    info = read_checkpoint_info(path)
    cfg_path = Path(info["_dir"]) / CONFIG_NAME
    kind = info["network"]
    if expect is not None and kind != expect:
        raise CheckpointError(f"{cfg_path}: holds a {kind}, but a {expect} is expected here")
    module_cls, config_cls = _KINDS[kind]
    try:
        config = config_cls.from_dict(info.get("config"), where=f"{cfg_path}: config")
    except ConfigError as exc:
        raise CheckpointError(str(exc)) from exc
    weights_path = Path(info["_dir"]) / str(info.get("weights", WEIGHTS_NAME))
    if not weights_path.is_file():
        raise CheckpointError(f"{cfg_path}: its weights file {weights_path} is missing")
    expected_sha = info.get("weights_sha256")
    if expected_sha is not None and sha256_file(weights_path) != expected_sha:
        raise CheckpointError(
            f"{weights_path}: SHA-256 does not match the one recorded in {cfg_path}; "
            "the weights file is truncated, corrupt or from another checkpoint"
        )
    tensors = load_tensors(weights_path)
    module = module_cls(config)
    copy_named_tensors(module, tensors, where=str(weights_path))
    return module.to(device)


def _is_official_pickle(path: Path) -> bool:
    return path.suffix.lower() in (".pkl", ".pickle")


def load_generator(
    path: str | os.PathLike,
    device: str | torch.device = "cpu",
    which: str = "G_ema",
    frozen: bool = True,
) -> Generator:
    """A generator from our checkpoint folder or an official ``.pkl`` (`which`: 'G_ema' or 'G').

    With `frozen` (default) it is in eval mode with ``requires_grad=False`` on its parameters;
    gradients still flow through it to its inputs.
    """
    path = Path(path)
    if _is_official_pickle(path):
        if which not in ("G_ema", "G"):
            raise ValueError(f"which: expected 'G_ema' or 'G' for a generator, got {which!r}")
        from viscoin.stylegan.official import load_official_network

        module, _ = load_official_network(path, which=which)
    else:
        module = load_network(path, expect="generator")
    assert isinstance(module, Generator)
    return _finish(module, device, frozen)


def load_discriminator(
    path: str | os.PathLike,
    device: str | torch.device = "cpu",
    frozen: bool = False,
) -> Discriminator:
    """A discriminator from our checkpoint folder or an official ``.pkl`` (its 'D')."""
    path = Path(path)
    if _is_official_pickle(path):
        from viscoin.stylegan.official import load_official_network

        module, _ = load_official_network(path, which="D")
    else:
        module = load_network(path, expect="discriminator")
    assert isinstance(module, Discriminator)
    return _finish(module, device, frozen)


def _finish(module: Any, device: str | torch.device, frozen: bool) -> Any:
    module = module.to(device)
    if frozen:
        module.eval().requires_grad_(False)
    else:
        module.requires_grad_(True)
    return module


def import_official(
    pkl_path: str | os.PathLike,
    out_dir: str | os.PathLike,
    which: str = "G_ema",
) -> Path:
    """Convert one network of an official ``.pkl`` ('G_ema', 'G' or 'D') to our format in `out_dir`."""
    from viscoin.stylegan.official import load_official

    if which not in ("G_ema", "G", "D"):
        raise ValueError(f"which: expected 'G_ema', 'G' or 'D', got {which!r}")
    pkl_path = Path(pkl_path)
    nets = load_official(pkl_path)
    module = getattr(nets, which)
    if module is None:
        raise CheckpointError(f"{pkl_path}: holds no {which!r} network")
    extra: dict[str, Any] = {}
    if nets.augment_p is not None:
        extra["augment_p"] = nets.augment_p
    source = {"official_pkl": str(pkl_path.resolve()), "sha256": sha256_file(pkl_path), "which": which}
    return save_network(module, out_dir, source=source, extra=extra)

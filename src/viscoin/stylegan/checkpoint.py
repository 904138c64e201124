"""viscoin's own StyleGAN2 checkpoints: a folder with ``config.json`` + ``weights.safetensors``
(`viscoin.utils.checkpoint`, format tag ``viscoin.stylegan2``). Extras may hold, for example,
ADA's augmentation probability.

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
from viscoin.stylegan.official import load_official, load_official_network
from viscoin.utils.config import ConfigError
from viscoin.utils.checkpoint import (
    CONFIG_NAME,
    WEIGHTS_NAME,
    check_module_size,
    load_checkpoint_tensors,
    read_checkpoint_folder_info,
    save_checkpoint_folder,
)
from viscoin.utils.io import CheckpointError, claim_empty_folder, copy_named_tensors, sha256_file

FORMAT = "viscoin.stylegan2"
_HINT = "expected a folder written by `viscoin generator import` or an official stylegan2-ada-pytorch .pkl"

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
    return save_checkpoint_folder(
        out_dir, FORMAT, kind, module.config.to_dict(), module.state_dict(), source=source, extra=extra
    )


def read_checkpoint_info(path: str | os.PathLike) -> dict[str, Any]:
    """The parsed ``config.json`` of a StyleGAN2 checkpoint folder, validated."""
    return read_checkpoint_folder_info(path, FORMAT, _KINDS, hint=_HINT)


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
    check_module_size(lambda: module_cls(config), f"{cfg_path}: config")
    tensors = load_checkpoint_tensors(info)
    module = module_cls(config)
    copy_named_tensors(module, tensors, where=str(Path(info["_dir"]) / WEIGHTS_NAME))
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
    overwrite: bool = False,     # write into a non-empty `out_dir` (its config.json and weights are replaced)
) -> Path:
    """Convert one network of an official ``.pkl`` ('G_ema', 'G' or 'D') to our format in `out_dir`.

    A non-empty `out_dir` (an earlier import, anything else) is refused before the pickle is read, unless
    `overwrite`; then only ``config.json`` and ``weights.safetensors`` are replaced there."""
    if which not in ("G_ema", "G", "D"):
        raise ValueError(f"which: expected 'G_ema', 'G' or 'D', got {which!r}")
    claim_empty_folder(out_dir, overwrite, f"replace its {CONFIG_NAME} and {WEIGHTS_NAME}")
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

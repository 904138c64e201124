"""Module checkpoints in viscoin's format: a folder with ``config.json`` + ``weights.safetensors``.

No pickle anywhere. ``config.json`` holds a format tag (one per model family, e.g.
``viscoin.stylegan2``), the network kind, its typed config, the SHA-256 of the weights file (so a
truncated or swapped weights file is detected), where the network came from, and free-form
extras. The weights file is written first and ``config.json`` last, each atomically, so a folder
with a ``config.json`` is always complete.

Reading is strict: the weights file must sit in the folder itself, its SHA-256 must be recorded
and match, and every floating-point tensor must be finite. `check_module_size` refuses a network
whose dimensions (read from a file) would not fit in memory, before anything is allocated.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Collection, Mapping
from pathlib import Path
from typing import Any

import torch

from viscoin.pretrained import resolve
from viscoin.utils.io import (
    CheckpointError,
    check_finite_tensors,
    load_tensors,
    read_json,
    save_tensors,
    sha256_file,
    write_json,
)

FORMAT_VERSION = 1
CONFIG_NAME = "config.json"
WEIGHTS_NAME = "weights.safetensors"
MAX_PARAMETERS = 2**30  # elements of every parameter and buffer of one network (4 GiB in float32)


def save_checkpoint_folder(
    out_dir: str | os.PathLike,
    fmt: str,                                   # format tag of the model family
    network: str,                               # kind of network inside the family
    config: dict[str, Any],                     # the network's config as a plain dict
    tensors: Mapping[str, torch.Tensor],        # every parameter and buffer to save
    source: dict[str, Any] | None = None,       # provenance (files it came from and their hashes)
    extra: dict[str, Any] | None = None,        # anything else worth keeping (JSON-serialisable)
) -> Path:
    """Write a checkpoint folder; returns its path."""
    out_dir = Path(out_dir)
    if out_dir.exists() and not out_dir.is_dir():
        raise CheckpointError(f"output {out_dir} exists and is not a folder")
    out_dir.mkdir(parents=True, exist_ok=True)
    weights_path = out_dir / WEIGHTS_NAME
    save_tensors(weights_path, tensors, metadata={"format": fmt, "network": network})
    write_json(
        out_dir / CONFIG_NAME,
        {
            "format": fmt,
            "format_version": FORMAT_VERSION,
            "network": network,
            "config": config,
            "weights": WEIGHTS_NAME,
            "weights_sha256": sha256_file(weights_path),
            "source": source or {},
            "extra": extra or {},
        },
    )
    return out_dir


def read_checkpoint_folder_info(
    path: str | os.PathLike,
    fmt: str,                      # expected format tag
    networks: Collection[str],     # accepted network kinds
    hint: str = "",                # how such a checkpoint is made, for the error message
) -> dict[str, Any]:
    """The validated ``config.json`` of a checkpoint folder (or the JSON file itself), plus ``_dir``.

    `path` may be a shipped network's name (``viscoin:birds/generator``, `viscoin.pretrained`): every
    loader reads its folder through here, so the name works wherever a network path is taken."""
    path = resolve(path)
    cfg_path = path / CONFIG_NAME if path.is_dir() else path
    if not cfg_path.exists():
        raise CheckpointError(f"{path}: not a {fmt} checkpoint (no {CONFIG_NAME}){'; ' + hint if hint else ''}")
    info = read_json(cfg_path, "checkpoint config")
    got = info.get("format") if isinstance(info, dict) else info
    if not isinstance(info, dict) or got != fmt:
        raise CheckpointError(f'{cfg_path}: expected "format": "{fmt}", got {got!r}')
    if info.get("format_version") != FORMAT_VERSION:
        raise CheckpointError(
            f"{cfg_path}: format_version {info.get('format_version')!r} is not supported "
            f"(this viscoin reads {FORMAT_VERSION})"
        )
    if info.get("network") not in networks:
        raise CheckpointError(f'{cfg_path}: "network" must be one of {sorted(networks)}, got {info.get("network")!r}')
    info["_dir"] = str(cfg_path.parent)
    return info


def load_checkpoint_tensors(info: dict[str, Any]) -> dict[str, torch.Tensor]:
    """The tensors of a checkpoint folder described by `info`, after checking the recorded SHA-256
    (which must be there) and that every floating-point tensor is finite."""
    cfg_path = Path(info["_dir"]) / CONFIG_NAME
    name = info.get("weights", WEIGHTS_NAME)
    if not isinstance(name, str) or not name or name != Path(name).name or name in (".", ".."):
        raise CheckpointError(
            f'{cfg_path}: "weights" must name a file inside the checkpoint folder, got {name!r}'
        )
    weights_path = Path(info["_dir"]) / name
    if not weights_path.is_file():
        raise CheckpointError(f"{cfg_path}: its weights file {weights_path} is missing")
    expected_sha = info.get("weights_sha256")
    if not isinstance(expected_sha, str) or not expected_sha:
        raise CheckpointError(
            f'{cfg_path}: no "weights_sha256" recorded, so {weights_path.name} cannot be checked; '
            "refused (save the network again with viscoin to get a complete checkpoint)"
        )
    if sha256_file(weights_path) != expected_sha:
        raise CheckpointError(
            f"{weights_path}: SHA-256 does not match the one recorded in {cfg_path}; "
            "the weights file is truncated, corrupt or from another checkpoint"
        )
    tensors = load_tensors(weights_path)
    check_finite_tensors(tensors, str(weights_path))
    return tensors


def check_module_size(build: Callable[[], torch.nn.Module], where: str, limit: int = MAX_PARAMETERS) -> None:
    """Refuse a network of more than `limit` parameter and buffer elements, before allocating it.

    `build()` constructs the network; it runs on PyTorch's meta device, where tensors have a
    shape and no memory, so only the element count is computed. `where` names the file (and
    the config) the dimensions come from, in the message.
    """
    with torch.device("meta"):
        module = build()
    total = sum(t.numel() for t in module.state_dict().values())
    if total > limit:
        raise CheckpointError(
            f"{where}: the network it describes has {total:,} parameter elements "
            f"({total * 4 / 2**30:.1f} GiB in float32), more than the {limit:,} viscoin accepts; "
            "its dimensions are corrupt or absurd"
        )

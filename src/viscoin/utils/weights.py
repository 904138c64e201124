"""Local weight files of pretrained networks (torchvision ResNets and VGG16, FID's Inception).

viscoin never downloads. These helpers name torchvision's release files and cache paths (the place
torchvision itself would download to, ``torch.hub.get_dir()/checkpoints/``) and read a state dict
from a ``.safetensors`` file or from a ``.pth`` with ``torch.load(weights_only=True)``, which refuses
any object that is not a tensor (an untrusted ``.pth`` cannot run code).
"""

from __future__ import annotations

import os
import pickle
from collections.abc import Mapping
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import torch
from torchvision.models import get_model_weights

from viscoin.utils.io import CheckpointError, load_tensors


def imagenet_weights_url(arch: str, release: str) -> str:
    """torchvision's download URL of `release` (e.g. ``IMAGENET1K_V1``) for `arch` (no network access)."""
    try:
        return str(get_model_weights(arch)[release].url)
    except (KeyError, ValueError) as exc:
        raise ValueError(f"torchvision has no {release!r} ImageNet weights for {arch!r}") from exc


def imagenet_cache_path(arch: str, release: str) -> Path:
    """Where torchvision caches `release` of `arch`: ``torch.hub.get_dir()/checkpoints/<file name>``."""
    filename = os.path.basename(urlparse(imagenet_weights_url(arch, release)).path)
    return Path(torch.hub.get_dir()) / "checkpoints" / filename


def imagenet_weights_file(arch: str, release: str, weights_path: str | None) -> Path:
    """The ImageNet weights file to read: `weights_path` if given, else torchvision's cache file."""
    if weights_path is not None:
        return Path(weights_path).expanduser()
    return imagenet_cache_path(arch, release)


def read_state_dict_file(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """Tensors of a ``.safetensors`` file or a ``.pth`` state dict (``torch.load(weights_only=True)``).

    A ``.pth`` holding ``{"state_dict": ...}`` or ``{"model": ...}`` is unwrapped, and a
    ``module.`` prefix (DataParallel) is stripped. Anything else gives a `CheckpointError`
    naming the file.
    """
    path = Path(path)
    if path.suffix.lower() == ".safetensors":
        return load_tensors(path)
    try:
        obj: Any = torch.load(path, map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, EOFError, ValueError, OSError, AttributeError) as exc:
        lines = [ln.strip() for ln in str(exc).splitlines() if ln.strip()]
        unsafe = next((ln for ln in lines if "Unsupported global" in ln), None)
        if unsafe is not None:
            raise CheckpointError(
                f"{path}: holds objects other than tensors; refused (viscoin reads state dicts with "
                f"torch.load(weights_only=True) only): {unsafe[:300]}"
            ) from exc
        detail = next((ln for ln in lines if "Unsupported" in ln), lines[0] if lines else repr(exc))
        raise CheckpointError(
            f"{path}: not a readable PyTorch state dict (truncated or corrupt?): "
            f"{type(exc).__name__}: {detail[:300]}"
        ) from exc
    if isinstance(obj, Mapping) and not all(isinstance(v, torch.Tensor) for v in obj.values()):
        for key in ("state_dict", "model"):
            if isinstance(obj.get(key), Mapping):
                obj = obj[key]
                break
    if not isinstance(obj, Mapping) or not obj or not all(
        isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in obj.items()
    ):
        raise CheckpointError(
            f"{path}: expected a state dict (a mapping of names to tensors), got {type(obj).__name__}"
        )
    tensors = dict(obj)
    if all(k.startswith("module.") for k in tensors):
        tensors = {k[len("module."):]: v for k, v in tensors.items()}
    return tensors

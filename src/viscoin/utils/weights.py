"""Local weight files of pretrained networks (torchvision ResNets and VGG16, FID's Inception).

viscoin never downloads. These helpers name torchvision's release files and cache paths (the place
torchvision itself would download to, ``torch.hub.get_dir()/checkpoints/``) and read a state dict
from a ``.safetensors`` file or from a ``.pth`` with ``torch.load(weights_only=True)``, which refuses
any object that is not a tensor (an untrusted ``.pth`` cannot run code).
"""

from __future__ import annotations

import os
import pickle
import re
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
        raise _load_error(path, exc) from exc
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


# Lines of torch.load's errors that advise loading the file anyway (weights_only=False, allow-listing
# its globals): never shown, since following them would run the file's code.
_UNSAFE_ADVICE = re.compile(r"weights_only|safe_globals|trusted source|allowlist|file an issue|documentation of torch.load",
                            re.IGNORECASE)


def _load_error(path: Path, exc: BaseException) -> CheckpointError:
    """The error of a ``.pth`` that ``torch.load(weights_only=True)`` refused, said plainly.

    A file that asks for a Python global (a function or class to import and call) is refused as
    what it is: loading it would execute code. Other failures are reported as an unreadable file.
    torch's advice to retry with ``weights_only=False`` or to allow-list the global is left out.
    """
    text = str(exc)
    wanted = re.search(r"GLOBAL\s+([\w.]+)", text)
    if wanted is not None:
        return CheckpointError(
            f"{path}: refused: loading it would import and call {wanted.group(1)!r}, i.e. execute code from the "
            "file; viscoin reads weight files as tensors only (a .safetensors file, or a .pth holding a state "
            "dict of tensors)"
        )
    lines = [ln.strip() for ln in text.splitlines() if ln.strip() and not _UNSAFE_ADVICE.search(ln)]
    detail = next((ln for ln in lines if "Unsupported" in ln), lines[0] if lines else type(exc).__name__)
    return CheckpointError(
        f"{path}: not a readable PyTorch state dict (truncated, corrupt, or not a state dict of tensors): "
        f"{type(exc).__name__}: {detail[:300]}"
    )

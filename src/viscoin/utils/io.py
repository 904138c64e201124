"""Safe file I/O: atomic writes, hashing, and safetensors/JSON reading with clear errors.

Nothing here unpickles. A file is written to a temporary name in the same folder and renamed
into place, so a crash never leaves a half-written file under the final name; it gets the
permissions a plain ``open(path, "w")`` would give (``0o666`` less the umask), not the ``0o600``
of a temporary file.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import tempfile
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import torch


class CheckpointError(ValueError):
    """A checkpoint file is missing, unreadable, or does not match what is expected."""


def current_umask() -> int:
    """The process's umask (read from /proc on Linux; elsewhere set and restored at once)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def make_default_permissions(path: str | os.PathLike) -> None:
    """Give a file made by `tempfile` (``0o600``, folders ``0o700``) the permissions of a plain
    ``open()`` / ``mkdir()``: ``0o666`` / ``0o777`` less the umask."""
    base = 0o777 if Path(path).is_dir() else 0o666
    os.chmod(path, base & ~current_umask())


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path next to `path`; on success it is renamed to `path`, on error removed.

    The temporary file gets the umask's permissions before the rename (see the module docstring).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        make_default_permissions(tmp_path)
        os.replace(tmp_path, path)
    except BaseException:
        tmp_path.unlink(missing_ok=True)
        raise


def write_json(path: str | os.PathLike, data: Any) -> None:
    """Write `data` as indented JSON, atomically."""
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(data, indent=2) + "\n")


def read_json(path: str | os.PathLike, what: str = "JSON file") -> Any:
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{what} not found: {path}")
    try:
        return json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise CheckpointError(f"{path}: not valid JSON ({exc})") from exc


def sha256_file(path: str | os.PathLike, chunk: int = 1 << 20) -> str:
    """Hex SHA-256 of a file's bytes."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def save_tensors(path: str | os.PathLike, tensors: Mapping[str, torch.Tensor], metadata: dict[str, str] | None = None) -> None:
    """Write tensors as safetensors, atomically (contiguous CPU copies; shared storage is fine)."""
    from safetensors.torch import save_file

    plain = {k: v.detach().to("cpu").contiguous().clone() for k, v in tensors.items()}
    with atomic_path(path) as tmp:
        save_file(plain, str(tmp), metadata=metadata)


def load_tensors(path: str | os.PathLike, device: str | torch.device = "cpu") -> dict[str, torch.Tensor]:
    """Read a safetensors file, turning any format error into a `CheckpointError` naming the file."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"weights file not found: {path}")
    try:
        return load_file(str(path), device=str(device))
    except (SafetensorError, OSError, ValueError, RuntimeError) as exc:
        raise CheckpointError(f"{path}: not a readable safetensors file (truncated or corrupt?): {exc}") from exc


def check_finite_tensors(tensors: Mapping[str, torch.Tensor], where: str) -> None:
    """`CheckpointError` naming `where` and the first tensor that holds a NaN or an infinite value."""
    for name, tensor in tensors.items():
        if tensor.is_floating_point() or tensor.is_complex():
            if not bool(torch.isfinite(tensor).all()):
                bad = int((~torch.isfinite(tensor)).sum())
                raise CheckpointError(
                    f"{where}: tensor {name!r} holds {bad} NaN or infinite value(s) of {tensor.numel()}; "
                    "the weights are corrupt (or the run that wrote them diverged)"
                )


def copy_named_tensors(module: torch.nn.Module, tensors: Mapping[str, torch.Tensor], where: str) -> None:
    """Copy `tensors` into `module`'s parameters and buffers by name, strictly.

    Every state-dict entry must be present with the same shape, and no extra name is allowed;
    otherwise a `CheckpointError` lists what is missing, unexpected or mis-shaped (`where` names
    the source in the message). Nothing is copied unless everything matches.
    """
    targets = module.state_dict(keep_vars=True)
    missing = [k for k in targets if k not in tensors]
    unexpected = [k for k in tensors if k not in targets]
    misshaped = [
        f"{k}: expected {list(targets[k].shape)}, got {list(tensors[k].shape)}"
        for k in targets
        if k in tensors and tuple(tensors[k].shape) != tuple(targets[k].shape)
    ]
    problems = []
    if missing:
        problems.append(f"missing {len(missing)} tensor(s): {missing[:8]}{' ...' if len(missing) > 8 else ''}")
    if unexpected:
        problems.append(f"unexpected {len(unexpected)} tensor(s): {unexpected[:8]}{' ...' if len(unexpected) > 8 else ''}")
    if misshaped:
        problems.append(f"wrong shape: {misshaped[:8]}{' ...' if len(misshaped) > 8 else ''}")
    if problems:
        raise CheckpointError(f"{where} does not match {type(module).__name__}: " + "; ".join(problems))
    with torch.no_grad():
        for name, target in targets.items():
            target.copy_(tensors[name].to(dtype=target.dtype))

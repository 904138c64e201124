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
from collections.abc import Iterator, Mapping, Sequence
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
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    except OSError as exc:  # a read-only folder, ...: name the file being written, not the temporary one
        raise type(exc)(exc.errno, exc.strerror, str(path)) from exc
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


# ---------------------------------------------------------------------------------------------
# Output folders: what a command may replace or delete there


def refuse_existing(paths: Sequence[str | os.PathLike], why: str, overwrite: bool,
                    remedy: str = "give --overwrite to replace it") -> None:
    """ValueError naming `paths` (existing outputs a command was about to replace), `why` they are refused and
    what to do (`remedy`), unless `overwrite` or `paths` is empty. The one refusal of every command that
    writes outputs it did not necessarily write itself (`viscoin report`, `compare`, `generator import`)."""
    if paths and not overwrite:
        raise ValueError(f"{', '.join(map(str, paths))}: {why}; {remedy}")


def folder_is_empty(folder: str | os.PathLike) -> bool:
    """True for an absent or empty folder; ValueError when `folder` is a file."""
    folder = Path(folder)
    if not folder.exists():
        return True
    if not folder.is_dir():
        raise ValueError(f"{folder}: exists and is not a folder")
    with os.scandir(folder) as entries:
        return next(entries, None) is None


def claim_empty_folder(folder: str | os.PathLike, overwrite: bool, replaces: str = "write into it") -> None:
    """Refuse a non-empty `folder` (ValueError) unless `overwrite`; a file there is refused always."""
    if not folder_is_empty(folder):
        refuse_existing([folder], "not empty", overwrite, f"choose a new or empty folder, or give --overwrite to {replaces}")


class OutputFolder:
    """A folder a command owns through a manifest: a hidden JSON file in it listing the files the command wrote
    there (relative paths, each with its SHA-256), so that a later run replaces or deletes those files and
    nothing else.

    Claiming (the constructor; it writes nothing) accepts an absent or empty folder, or one holding the
    command's manifest whose files are unchanged since it wrote them. Anything else (files and no manifest,
    a manifest of another writer or not readable, a listed file changed since) is refused with a ValueError
    unless `overwrite`; then files of the same names are replaced, but nothing the manifest does not list (as
    unchanged) is ever deleted.

    `file(name)` registers a file before it is written (the manifest on disk lists it at once, so a run killed
    half-way still knows what it wrote); `finish()` deletes the previously listed files that this run did not
    write again and records what it wrote.
    """

    def __init__(self, folder: str | os.PathLike, writer: str, manifest: str, overwrite: bool = False) -> None:
        self.folder = Path(folder)
        self.writer = writer
        self.manifest = self.folder / manifest
        self.written: dict[str, str | None] = {}
        empty = folder_is_empty(self.folder)
        listed = None if empty else self._read()
        if listed is None:
            if not empty:
                refuse_existing([self.folder], f"not empty and holds no {manifest} (it was not written by `{writer}`)",
                                overwrite, "choose a new or empty folder, or give --overwrite to write into it "
                                "(files of the same names are replaced, no other file is deleted)")
            listed = {}
        changed = sorted(n for n, h in listed.items() if h is not None and (self.folder / n).is_file()
                         and sha256_file(self.folder / n) != h)
        refuse_existing([self.folder / n for n in changed], f"changed since `{writer}` wrote it", overwrite)
        # What a later step may delete: the listed files unchanged since (an unknown hash: a run stopped while
        # writing it). Changed files are left alone even with overwrite (they may be replaced by name only).
        self.previous = {n: h for n, h in listed.items() if n not in changed}

    def _read(self) -> dict[str, str | None] | None:
        """The files of a valid manifest of this writer (name -> SHA-256 or None); None when there is none."""
        try:
            data = json.loads(self.manifest.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, ValueError):
            return None
        files = data.get("files") if isinstance(data, dict) and data.get("written_by") == self.writer else None
        if not isinstance(files, dict):
            return None
        for name, digest in files.items():
            if not self._inside(name) or not (digest is None or isinstance(digest, str)):
                return None
        return dict(files)

    def _inside(self, name: Any) -> bool:
        """A relative path below the folder (no '..', not absolute, not the manifest itself)."""
        if not isinstance(name, str) or not name or "\\" in name:
            return False
        parts = Path(name).parts
        return not Path(name).is_absolute() and ".." not in parts and "." not in parts and \
            Path(name) != Path(self.manifest.name)

    def _save(self, files: Mapping[str, str | None]) -> None:
        write_json(self.manifest, {"written_by": self.writer, "files": dict(sorted(files.items()))})

    def file(self, name: str) -> Path:
        """The path of output `name` (relative, '/'-separated); recorded in the manifest before it is written."""
        if not self._inside(name):
            raise ValueError(f"output name {name!r}: expected a relative path inside {self.folder}")
        if name not in self.written:
            self.written[name] = None
            self._save({**self.previous, **self.written})
        path = self.folder / name
        path.parent.mkdir(parents=True, exist_ok=True)
        return path

    def finish(self, within: Sequence[str] = ("",)) -> list[str]:
        """Delete the files listed before (unchanged) under the prefixes `within` that this run did not write,
        and record what it wrote (with the earlier entries outside `within`). Returns the names deleted."""
        removed = []
        kept = {}
        for name, digest in self.previous.items():
            if name in self.written:
                continue
            if not any(name.startswith(p) for p in within):
                kept[name] = digest
                continue
            path = self.folder / name
            if path.is_file() and not path.is_symlink() and (digest is None or sha256_file(path) == digest):
                path.unlink()
                removed.append(name)
            elif path.exists():
                kept[name] = digest       # changed by someone else: not ours to delete
        files = {**kept, **{n: sha256_file(self.folder / n) if (self.folder / n).is_file() else None
                            for n in self.written}}
        self._save(files)
        self.previous, self.written = files, {}
        return removed

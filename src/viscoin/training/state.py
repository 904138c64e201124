"""Training checkpoints without pickle: everything a run needs to resume exactly.

A training checkpoint is a folder ``checkpoints/step-000000123/`` with
- ``state.safetensors``: every tensor (trainable modules' weights and buffers, optimiser moments);
- ``state.json``: everything else (counters, optimiser hyper-parameters, scheduler state, the
  structure of the optimiser state, the SHA-256 of the tensor file);
- ``config.yaml``: the resolved run config.
Nested Python state (dicts with int keys, tuples, tensors) is split into JSON + named tensors by
`encode_state` and put back together by `decode_state`.

The folder is assembled under a temporary name and renamed into place; then ``latest.json`` (the
pointer that `--resume` follows) is replaced atomically, and older checkpoints beyond
`keep_last` are deleted. A run killed at any moment therefore finds a complete last checkpoint.

Reading is strict: ``latest.json`` must name a ``step-NNNNNNNNN`` folder directly inside
``checkpoints/`` whose step agrees with the pointer and with ``state.json``; ``state.json`` must
record the SHA-256 of the tensor file, which must match; every floating-point tensor must be
finite.
"""

from __future__ import annotations

import math
import os
import re
import shutil
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch

from viscoin.utils.io import (
    CheckpointError,
    check_finite_tensors,
    load_tensors,
    make_default_permissions,
    read_json,
    save_tensors,
    sha256_file,
    write_json,
)

STATE_FORMAT = "viscoin.train_state"
STATE_VERSION = 1
LATEST = "latest.json"
_NAME_RE = re.compile(r"step-(\d{9,})")


def checkpoint_name(step: int) -> str:
    """Folder name of the checkpoint of `step`: ``step-000000123``."""
    return f"step-{step:09d}"


def encode_state(obj: Any, prefix: str, tensors: dict[str, torch.Tensor]) -> Any:
    """JSON-able form of `obj`; its tensors (and numpy arrays) go to `tensors` under names from `prefix`."""
    if isinstance(obj, torch.Tensor):
        tensors[prefix] = obj.detach().cpu()
        return {"__tensor__": prefix}
    if isinstance(obj, np.ndarray):
        tensors[prefix] = torch.from_numpy(np.ascontiguousarray(obj))
        return {"__ndarray__": prefix}
    if isinstance(obj, Mapping):
        items = list(obj.items())
        if all(isinstance(k, str) and not k.startswith("__") for k, _ in items):
            return {k: encode_state(v, f"{prefix}/{k}", tensors) for k, v in items}
        return {"__items__": [[encode_state(k, f"{prefix}/k{i}", tensors), encode_state(v, f"{prefix}/{k}", tensors)]
                              for i, (k, v) in enumerate(items)]}
    if isinstance(obj, tuple):
        return {"__tuple__": [encode_state(v, f"{prefix}/{i}", tensors) for i, v in enumerate(obj)]}
    if isinstance(obj, list):
        return [encode_state(v, f"{prefix}/{i}", tensors) for i, v in enumerate(obj)]
    if isinstance(obj, float) and not math.isfinite(obj):
        return {"__float__": repr(obj)}
    if isinstance(obj, (np.integer, np.floating, np.bool_)):
        return obj.item()
    if obj is None or isinstance(obj, (bool, int, float, str)):
        return obj
    raise TypeError(f"cannot store {type(obj).__name__} at {prefix} in a training checkpoint")


def decode_state(obj: Any, tensors: Mapping[str, torch.Tensor]) -> Any:
    """Inverse of `encode_state`."""
    if isinstance(obj, list):
        return [decode_state(v, tensors) for v in obj]
    if isinstance(obj, dict):
        if "__tensor__" in obj:
            return tensors[obj["__tensor__"]]
        if "__ndarray__" in obj:
            return tensors[obj["__ndarray__"]].numpy()
        if "__tuple__" in obj:
            return tuple(decode_state(v, tensors) for v in obj["__tuple__"])
        if "__items__" in obj:
            return {decode_state(k, tensors): decode_state(v, tensors) for k, v in obj["__items__"]}
        if "__float__" in obj:
            return float(obj["__float__"])
        return {k: decode_state(v, tensors) for k, v in obj.items()}
    return obj


def save_train_state(
    ckpt_root: str | os.PathLike,          # the run's checkpoints/ folder
    step: int,                             # global step, names the folder
    state: dict[str, Any],                 # nested state: module/optimiser/scheduler state dicts, counters
    config_yaml: str,                      # the resolved config, as YAML text
    keep_last: int = 2,                    # how many checkpoints to keep
) -> Path:
    """Write one training checkpoint atomically, point ``latest.json`` at it, prune old ones."""
    ckpt_root = Path(ckpt_root)
    ckpt_root.mkdir(parents=True, exist_ok=True)
    name = checkpoint_name(step)
    final = ckpt_root / name
    tmp = Path(tempfile.mkdtemp(prefix=f".{name}.", dir=ckpt_root))
    try:
        make_default_permissions(tmp)
        tensors: dict[str, torch.Tensor] = {}
        encoded = encode_state(state, "state", tensors)
        save_tensors(tmp / "state.safetensors", tensors)
        (tmp / "config.yaml").write_text(config_yaml)  # a plain write: the whole folder is renamed into place
        write_json(
            tmp / "state.json",
            {
                "format": STATE_FORMAT,
                "format_version": STATE_VERSION,
                "step": step,
                "tensors_sha256": sha256_file(tmp / "state.safetensors"),
                "state": encoded,
            },
        )
        if final.exists():
            shutil.rmtree(final)
        os.replace(tmp, final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    write_json(ckpt_root / LATEST, {"checkpoint": name, "step": step})
    existing = sorted(p for p in ckpt_root.glob("step-*") if p.is_dir())
    for old in existing[: max(0, len(existing) - keep_last)]:
        if old != final:
            shutil.rmtree(old, ignore_errors=True)
    for stale in ckpt_root.glob(".step-*"):  # temporary folders left by a killed run
        shutil.rmtree(stale, ignore_errors=True)
    return final


def _step_of_name(name: str) -> int | None:
    match = _NAME_RE.fullmatch(name)
    return int(match.group(1)) if match else None


def latest_checkpoint(ckpt_root: str | os.PathLike) -> Path | None:
    """The checkpoint folder ``latest.json`` points to, or None when the run has none.

    The pointer must name a ``step-NNNNNNNNN`` folder directly inside `ckpt_root` (never a path
    elsewhere) and its ``"step"`` must be that folder's step; otherwise a `CheckpointError`.
    """
    ckpt_root = Path(ckpt_root)
    pointer = ckpt_root / LATEST
    if not pointer.is_file():
        return None
    info = read_json(pointer, "checkpoint pointer")
    name = info.get("checkpoint") if isinstance(info, dict) else None
    step = _step_of_name(name) if isinstance(name, str) else None
    if step is None:
        raise CheckpointError(
            f'{pointer}: "checkpoint" must name a step-NNNNNNNNN folder inside {ckpt_root}, got {name!r}'
        )
    if info.get("step") != step:
        raise CheckpointError(f'{pointer}: "step" {info.get("step")!r} disagrees with the checkpoint {name}')
    path = ckpt_root / name
    if not (path / "state.json").is_file():
        raise CheckpointError(f"{pointer} points to {path}, which is not a complete checkpoint")
    return path


def load_train_state(path: str | os.PathLike) -> tuple[int, dict[str, Any]]:
    """(step, nested state) of a training checkpoint folder, with the tensor file's hash checked,
    the step agreeing with the folder name, and every floating-point tensor finite."""
    path = Path(path)
    state_json = path / "state.json"
    info = read_json(state_json, "training checkpoint")
    if not isinstance(info, dict) or info.get("format") != STATE_FORMAT:
        raise CheckpointError(f"{state_json}: not a viscoin training checkpoint")
    if info.get("format_version") != STATE_VERSION:
        raise CheckpointError(f"{state_json}: unsupported format_version {info.get('format_version')!r}")
    step = info.get("step")
    if isinstance(step, bool) or not isinstance(step, int) or step < 0:
        raise CheckpointError(f'{state_json}: "step" must be an integer >= 0, got {step!r}')
    named = _step_of_name(path.name)
    if named is not None and named != step:
        raise CheckpointError(f'{state_json}: "step" {step} disagrees with its folder name {path.name}')
    expected_sha = info.get("tensors_sha256")
    if not isinstance(expected_sha, str) or not expected_sha:
        raise CheckpointError(
            f'{state_json}: no "tensors_sha256" recorded, so state.safetensors cannot be checked; refused'
        )
    tensor_file = path / "state.safetensors"
    if not tensor_file.is_file() or sha256_file(tensor_file) != expected_sha:
        raise CheckpointError(f"{tensor_file}: missing or does not match the SHA-256 in state.json")
    tensors = load_tensors(tensor_file)
    check_finite_tensors(tensors, str(tensor_file))
    return step, decode_state(info["state"], tensors)

"""The training runner shared by every viscoin trainer: Lightning Fabric as a thin layer.

Fabric handles devices, multi-GPU / multi-node DDP and mixed precision; the loops stay plain
PyTorch in each trainer (nanoGPT style). The runner adds what every trainer needs:

- `ResumableSampler`: the data order of epoch e is a fixed permutation from (seed, e), split
  across ranks, and every sample carries its own augmentation seed, so a run resumed in the
  middle of an epoch sees exactly the images an uninterrupted run would;
- `seed_step`: every random op of step s on rank r draws from a generator re-seeded from
  (seed, r, s), which is what makes resume exact (no RNG stream has to be carried over);
- checkpoints (`state.py`) written atomically by rank 0 every `ckpt_every` steps and at each
  epoch end, resumed with `--resume`;
- logs: TensorBoard and CSV under ``<out_dir>/logs/``, and a tqdm progress bar on rank 0;
- the run folder's safety: a run never starts in a folder that already holds one (or other
  files) unless told to overwrite; `--resume` refuses a config that changes the run (only the
  keys of `RESUME_MAY_CHANGE` may differ) and keeps the logs of the steps before the resume point.

Only trainable modules go through `setup_module` (and so into DDP, the optimiser and checkpoints);
frozen networks are moved with `to_device` and stay in eval mode.
"""

from __future__ import annotations

import csv
import dataclasses
import json
import math
import os
import random
import shutil
from collections.abc import Collection, Iterator, Mapping
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
import yaml
from torch import nn

from viscoin.training.config import RunConfig, save_config_yaml
from viscoin.training.state import latest_checkpoint, load_train_state, save_train_state
from viscoin.utils.config import ConfigError, config_to_dict
from viscoin.utils.io import CheckpointError, atomic_path

_MIX = (0x9E3779B97F4A7C15, 0xBF58476D1CE4E5B9, 0x94D049BB133111EB)


def mix_seed(*values: int) -> int:
    """A 63-bit seed from several integers (splitmix64-style), stable across runs and machines."""
    h = 0
    for v in values:
        h = (h + int(v) + _MIX[0]) & 0xFFFFFFFFFFFFFFFF
        h = ((h ^ (h >> 30)) * _MIX[1]) & 0xFFFFFFFFFFFFFFFF
        h = ((h ^ (h >> 27)) * _MIX[2]) & 0xFFFFFFFFFFFFFFFF
        h ^= h >> 31
    return h & 0x7FFFFFFFFFFFFFFF


class ResumableSampler(torch.utils.data.Sampler):
    """Yields (index, augmentation seed) keys for one epoch, for one rank, from a start position.

    Epoch `epoch` uses a permutation drawn from (seed, epoch); it is padded (by repeating its
    start) to a multiple of `world_size` and rank r takes positions r, r + W, r + 2W, ...
    `start` skips that many of this rank's samples (resume in the middle of an epoch).
    """

    def __init__(
        self,
        num_samples: int,       # dataset length
        seed: int,              # run seed
        epoch: int,             # epoch number (changes the order and the augmentations)
        rank: int = 0,          # this process's rank
        world_size: int = 1,    # number of processes
        shuffle: bool = True,   # random order (False: dataset order, for evaluation)
        start: int = 0,         # samples of this rank to skip
    ) -> None:
        if num_samples < 1:
            raise ValueError("ResumableSampler: the dataset is empty")
        self.num_samples = num_samples
        self.seed = seed
        self.epoch = epoch
        self.rank = rank
        self.world_size = world_size
        self.shuffle = shuffle
        self.start = start
        self.per_rank = math.ceil(num_samples / world_size)

    def _order(self) -> list[int]:
        if self.shuffle:
            g = torch.Generator().manual_seed(mix_seed(self.seed, self.epoch))
            order = torch.randperm(self.num_samples, generator=g).tolist()
        else:
            order = list(range(self.num_samples))
        total = self.per_rank * self.world_size
        order = (order * math.ceil(total / len(order)))[:total]
        return order[self.rank :: self.world_size]

    def __iter__(self) -> Iterator[tuple[int, int]]:
        order = self._order()
        for pos in range(self.start, len(order)):
            yield order[pos], mix_seed(self.seed, self.epoch, order[pos], pos * self.world_size + self.rank)

    def __len__(self) -> int:
        return max(0, self.per_rank - self.start)


def resolve_precision(run: RunConfig, accelerator: str) -> str:
    if run.precision != "auto":
        return run.precision
    if accelerator == "cuda" and torch.cuda.is_available() and torch.cuda.is_bf16_supported():
        return "bf16-mixed"
    return "32-true"


# ----------------------------------------------------------------------------------------------
# The run folder

CONFIG_NAME = "config.yaml"
RUN_OUTPUTS = (CONFIG_NAME, "checkpoints", "logs", "metrics.json", "samples")  # removed by an overwrite
# Keys of the run section that may differ on --resume: they change where and how often things are
# written or how data is fed, never a weight. A trainer's config class may add its own (e.g. an
# evaluation cadence) as a class attribute ``RESUME_MAY_CHANGE = ("eval_every", ...)``.
RESUME_MAY_CHANGE = ("out_dir", "log_every", "ckpt_every", "keep_last", "num_workers", "progress")
_REFUSED = {  # why a fresh run is refused in a folder of that kind, and what to do instead
    "run": "already holds a viscoin run; use --resume to continue it, choose a new run.out_dir, or pass "
           "--overwrite to replace it",
    "foreign": "is not empty and is not a viscoin run folder; choose a new or empty run.out_dir, or pass "
               "--overwrite to write into it anyway",
}

FolderKind = Literal["new", "run", "foreign"]


def _holds_a_run(path: Path) -> bool:
    """A viscoin run wrote here: its checkpoint pointer, or a config.yaml with a run section
    (written before anything else, so a run killed at any moment is recognised)."""
    if (path / "checkpoints" / "latest.json").is_file():
        return True
    try:
        saved = yaml.safe_load((path / CONFIG_NAME).read_text())
    except (OSError, UnicodeDecodeError, yaml.YAMLError):
        return False
    return isinstance(saved, dict) and isinstance(saved.get("run"), dict) and "out_dir" in saved["run"]


def inspect_run_folder(out_dir: str | os.PathLike) -> FolderKind:
    """"new" (absent or empty), "run" (a viscoin run wrote there) or "foreign" (holds other files).
    An unusable `out_dir` (empty, or a file) is a `ConfigError`."""
    if not str(out_dir).strip():
        raise ConfigError("run.out_dir: empty; give the run folder (an empty path would write into the working directory)")
    path = Path(out_dir)
    if not path.exists():
        return "new"
    if not path.is_dir():
        raise ConfigError(f"run.out_dir: {path} exists and is not a folder")
    with os.scandir(path) as entries:
        if next(entries, None) is None:
            return "new"
    return "run" if _holds_a_run(path) else "foreign"


def _is_viscoin_checkpoint(folder: Path) -> bool:
    try:
        info = json.loads((folder / "config.json").read_text())
    except (OSError, ValueError):
        return False
    return isinstance(info, dict) and str(info.get("format", "")).startswith("viscoin.")


def clear_run_folder(out_dir: Path) -> list[str]:
    """Delete what a previous viscoin run wrote in `out_dir` (`RUN_OUTPUTS` and the network folders
    it saved, recognised by their viscoin ``config.json``); other files stay. Returns the names removed."""
    removed = []
    for entry in sorted(out_dir.iterdir()):
        if entry.name in RUN_OUTPUTS or (entry.is_dir() and _is_viscoin_checkpoint(entry)):
            if entry.is_dir() and not entry.is_symlink():
                shutil.rmtree(entry)
            else:
                entry.unlink()
            removed.append(entry.name)
    return removed


def _flatten(data: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in data.items():
        if isinstance(value, Mapping) and value:
            out.update(_flatten(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


_ABSENT = object()  # a key one of two configs does not have


def _short(value: Any) -> str:
    text = "(absent)" if value is _ABSENT else json.dumps(value, default=str)
    return text if len(text) <= 60 else text[:57] + "..."


def changed_config_keys(
    saved: Mapping[str, Any],
    current: Mapping[str, Any],
    defaults: Mapping[str, Any] | None = None,   # the config class's defaults: a key `saved` lacks (a field added
                                                 # by a later viscoin) counts as its default, the earlier behaviour
) -> dict[str, tuple[Any, Any]]:
    """``{dotted key: (saved value, current value)}`` of every leaf that differs (a key missing on
    one side counts as a change, unless `defaults` has it)."""
    a, b = _flatten(saved), _flatten(current)
    for key, value in _flatten(defaults or {}).items():
        if key not in a and key in b:
            a[key] = value
    return {k: (a.get(k, _ABSENT), b.get(k, _ABSENT)) for k in sorted(set(a) | set(b))
            if a.get(k, _ABSENT) != b.get(k, _ABSENT)}


def check_resume_config(
    saved: Mapping[str, Any],          # the config the checkpoint was trained with (plain dict)
    current: Mapping[str, Any],        # the config given now (plain dict, YAML-normalised)
    may_change: Collection[str],       # dotted keys allowed to differ
    where: str,                        # the saved config's file, for the message
    defaults: Mapping[str, Any] | None = None,  # the config class's defaults, for keys `saved` lacks
) -> list[str]:
    """The allowed keys that changed; a `ConfigError` naming every other changed key."""
    changed = changed_config_keys(saved, current, defaults)
    refused = {k: v for k, v in changed.items() if k not in may_change}
    if refused:
        listed = ", ".join(f"{k} ({_short(old)} -> {_short(new)})" for k, (old, new) in refused.items())
        raise ConfigError(
            f"--resume: the config changes the run in {listed}, compared with {where}; resume with the run's "
            f"config, or start a new run in a new run.out_dir (only {', '.join(sorted(may_change))} may change "
            "on --resume)"
        )
    return sorted(changed)


# ----------------------------------------------------------------------------------------------
# The CSV log


class CsvLog:
    """``logs/csv/metrics.csv``: one row per `log` call, its columns the sorted metric names and "step".

    Unlike Lightning's CSV logger it never deletes an existing file: a resumed run appends to the
    history `truncate` kept. A new metric name rewrites the file (atomically) with the wider header.
    """

    NAME = "metrics.csv"

    def __init__(self, folder: Path) -> None:
        self.path = folder / self.NAME
        self.keys: list[str] = self._read()[0] if self.path.is_file() else []

    def _read(self) -> tuple[list[str], list[dict[str, str]]]:
        """(header, complete rows) of the file; rows cut short by a kill are left out."""
        with open(self.path, newline="") as f:
            reader = csv.DictReader(f)
            header = list(reader.fieldnames or [])
            rows = [r for r in reader if None not in r and None not in r.values()]
        return header, rows

    def _write(self, header: list[str], rows: list[dict[str, Any]]) -> None:
        with atomic_path(self.path) as tmp:
            with open(tmp, "w", newline="") as f:
                writer = csv.DictWriter(f, fieldnames=header)
                writer.writeheader()
                writer.writerows(rows)
        self.keys = header

    def truncate(self, step: int) -> int:
        """Keep the rows of steps <= `step`, in step order (ties in file order); returns how many."""
        if not self.path.is_file():
            return 0
        header, rows = self._read()

        def step_of(row: dict[str, str]) -> float:
            try:
                return float(row.get("step", ""))
            except ValueError:
                return math.inf  # no usable step: dropped

        kept = sorted((r for r in rows if step_of(r) <= step), key=step_of)
        self._write(header, kept)
        return len(kept)

    def log(self, metrics: Mapping[str, float], step: int) -> None:
        row = {**metrics, "step": step}
        if not set(row) <= set(self.keys):
            header = sorted(set(self.keys) | set(row))
            self._write(header, self._read()[1] if self.path.is_file() else [])
        with open(self.path, "a", newline="") as f:
            csv.DictWriter(f, fieldnames=self.keys).writerow(row)


# ----------------------------------------------------------------------------------------------
# The runner


class Runner:
    """Devices, DDP, precision, logging, seeding and checkpoints for one training run.

    The run folder (`run.out_dir`) is prepared once it is known whether the run resumes: at once
    when the folder is absent or empty (a fresh run), else by `resume_state` (every trainer calls it
    before writing anything). A fresh run in a folder that holds a run or other files is refused
    unless `overwrite` is true; then the previous run's outputs are deleted first (`clear_run_folder`).
    """

    def __init__(
        self,
        run: RunConfig,                 # the config's run section
        config: Any,                    # the trainer's whole (resolved) config, saved as config.yaml
        loggers: bool = True,           # TensorBoard + CSV logs under logs/
        overwrite: bool = False,        # a fresh run may replace what run.out_dir holds
    ) -> None:
        from lightning.fabric import Fabric

        self.run = run
        self.config = config
        self.overwrite = overwrite
        self.out_dir = Path(run.out_dir)
        self.ckpt_dir = self.out_dir / "checkpoints"
        self.folder_kind = inspect_run_folder(run.out_dir)  # before any process writes
        self.resumed_step: int | None = None
        self._prepared = False
        self._created_dir = False
        self._use_loggers = loggers
        self._tensorboard: Any = None
        self._csv: CsvLog | None = None
        accelerator = run.accelerator
        if accelerator == "auto":
            accelerator = "cuda" if torch.cuda.is_available() else "cpu"
        if accelerator == "cuda" and not torch.cuda.is_available():
            raise ValueError("run.accelerator=cuda: CUDA is not available on this machine; use run.accelerator=cpu")
        self.precision = resolve_precision(run, accelerator)
        strategy = "ddp" if run.devices * run.num_nodes > 1 else "auto"
        self.fabric = Fabric(
            accelerator=accelerator,
            devices=run.devices,
            num_nodes=run.num_nodes,
            strategy=strategy,
            precision=self.precision,
        )
        self.fabric.launch()
        # torch's switch is process-wide: remembered, and restored by close(), so that a later run or
        # evaluation in the same process (e.g. `viscoin demo --compare`) is not changed by this one's.
        self._deterministic_before = torch.are_deterministic_algorithms_enabled()
        if run.deterministic:
            torch.use_deterministic_algorithms(True, warn_only=False)
            os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        self.seed_step(0)
        if self.folder_kind == "new":
            self._start_fresh()

    # -- processes ------------------------------------------------------------------------------
    @property
    def is_main(self) -> bool:
        return self.fabric.global_rank == 0

    @property
    def rank(self) -> int:
        return self.fabric.global_rank

    @property
    def world_size(self) -> int:
        return self.fabric.world_size

    @property
    def device(self) -> torch.device:
        return self.fabric.device

    def seed_step(self, step: int) -> None:
        """Seed Python, numpy and torch (all devices) from (run seed, rank, step)."""
        s = mix_seed(self.run.seed, self.fabric.global_rank, step)
        random.seed(s)
        np.random.seed(s % 2**32)
        torch.manual_seed(s)

    # -- the run folder -------------------------------------------------------------------------
    def _start_fresh(self) -> None:
        """Prepare the folder for a run from step 0 (refused when it holds anything, unless overwriting)."""
        if self.folder_kind != "new" and not self.overwrite:
            raise ConfigError(f"run.out_dir: {self.out_dir} {_REFUSED[self.folder_kind]}")
        self.fabric.barrier()  # every process has looked at the folder before it changes
        if self.is_main:
            if self.folder_kind == "run":
                removed = clear_run_folder(self.out_dir)
                self.print(f"--overwrite: removed {', '.join(removed)} from {self.out_dir}")
            self._created_dir = not self.out_dir.exists()
            self.out_dir.mkdir(parents=True, exist_ok=True)
            save_config_yaml(self.config, self.out_dir / CONFIG_NAME)
        self._prepared = True

    def _undo_fresh_start(self) -> None:
        """Remove what `_start_fresh` wrote in a folder that was absent or empty (a failed --resume)."""
        if self.is_main and self.folder_kind == "new":
            (self.out_dir / CONFIG_NAME).unlink(missing_ok=True)
            if self._created_dir and not any(self.out_dir.iterdir()):
                self.out_dir.rmdir()
        self._prepared = False

    def _ensure_prepared(self) -> None:
        if not self._prepared:
            self._start_fresh()

    def _resume_may_change(self) -> set[str]:
        section = next((f.name for f in dataclasses.fields(self.config) if getattr(self.config, f.name) is self.run),
                       "run") if dataclasses.is_dataclass(self.config) else "run"
        own = getattr(type(self.config), "RESUME_MAY_CHANGE", ())
        return {f"{section}.{k}" for k in RESUME_MAY_CHANGE} | set(own)

    def _check_resumed_config(self, checkpoint: Path) -> None:
        """Refuse a config that differs from the checkpoint's in a key outside `RESUME_MAY_CHANGE`."""
        saved_path = checkpoint / CONFIG_NAME
        if not saved_path.is_file():
            saved_path = self.out_dir / CONFIG_NAME
        try:
            saved = yaml.safe_load(saved_path.read_text())
        except (OSError, yaml.YAMLError) as exc:
            raise CheckpointError(f"{saved_path}: cannot read the run's config ({exc})") from exc
        if not isinstance(saved, dict):
            raise CheckpointError(f"{saved_path}: expected the run's config (a mapping)")
        current = yaml.safe_load(yaml.safe_dump(config_to_dict(self.config), sort_keys=False))
        defaults = None
        if dataclasses.is_dataclass(self.config):    # a run started before a field existed resumes with its default
            try:
                defaults = yaml.safe_load(yaml.safe_dump(config_to_dict(type(self.config)()), sort_keys=False))
            except (TypeError, ValueError):          # a config class without defaults: absent keys stay changes
                defaults = None
        changed = check_resume_config(saved, current, self._resume_may_change(), str(saved_path), defaults)
        if changed:
            self.print(f"--resume: changed {', '.join(changed)} (allowed on resume)")

    def resume_state(self, resume: bool) -> tuple[int, dict[str, Any]] | None:
        """(step, state) of the last checkpoint when resuming; None for a fresh run.

        Resuming checks the config against the checkpoint's (`check_resume_config`), then rewrites
        ``config.yaml`` (only allowed keys can differ) and cuts the CSV log after the resumed step.
        A fresh run in a folder that already holds something needs `overwrite`.
        """
        if not resume:
            self._ensure_prepared()
            return None
        if self.overwrite:
            self._undo_fresh_start()  # a new folder was prepared in __init__: leave nothing behind
            raise ConfigError("--resume and --overwrite: choose one (continue the run, or replace it)")
        path = latest_checkpoint(self.ckpt_dir)
        if path is None:
            advice = {
                "new": "start the run without --resume",
                "run": f"the run in {self.out_dir} stopped before its first checkpoint; start it again with "
                       "--overwrite, or in a new run.out_dir",
                "foreign": f"{self.out_dir} holds no viscoin run; start the run in a new run.out_dir",
            }[self.folder_kind]
            if self.folder_kind == "new":
                self._undo_fresh_start()
            raise FileNotFoundError(
                f"--resume: no checkpoint in {self.ckpt_dir} (expected {self.ckpt_dir / 'latest.json'}); {advice}"
            )
        self._check_resumed_config(path)
        self.print(f"resuming from {path}")
        step, state = load_train_state(path)
        self.fabric.barrier()  # every process has read the folder before it changes
        if self.is_main:
            save_config_yaml(self.config, self.out_dir / CONFIG_NAME)
            if self._use_loggers:
                CsvLog(self.out_dir / "logs" / "csv").truncate(step)
        self.resumed_step = step
        self._prepared = True
        return step, state

    # -- modules --------------------------------------------------------------------------------
    def setup(self, module: nn.Module, *optimizers: torch.optim.Optimizer) -> Any:
        """Wrap a trainable module (and its optimisers) for the devices / DDP / precision."""
        return self.fabric.setup(module, *optimizers)

    def start(
        self,
        model: nn.Module,                       # the trainable module (unwrapped)
        optimizer: torch.optim.Optimizer,
        resume: bool,                           # continue from the last checkpoint
    ) -> tuple[Any, Any, int, list[Any]]:
        """Resume (model, optimiser and history of the last checkpoint saved by `save_training_state`) or
        start fresh, then `setup`. Returns the wrapped model and optimiser, the step and the history."""
        step, history = 0, []
        resumed = self.resume_state(resume)
        if resumed is not None:
            step, state = resumed
            model.load_state_dict(state["model"])
            optimizer.load_state_dict(state["optimizer"])
            history = state["history"]
        wrapped, optimizer = self.setup(model, optimizer)
        return wrapped, optimizer, step, history

    def save_training_state(self, step: int, model: nn.Module, optimizer: torch.optim.Optimizer,
                            history: list[Any]) -> None:
        """The checkpoint `start` resumes from: the model's and optimiser's state and the history."""
        self.save_checkpoint(step, {"model": model.state_dict(), "optimizer": optimizer.state_dict(),
                                    "history": history})

    def to_device(self, frozen: nn.Module) -> nn.Module:
        """Move a frozen network to the device, in eval mode, outside DDP and optimisers."""
        return frozen.to(self.device).eval().requires_grad_(False)

    def loader(
        self,
        dataset: torch.utils.data.Dataset,
        batch_size: int,
        epoch: int,
        start: int = 0,
        shuffle: bool = True,
        drop_last: bool = True,
    ) -> torch.utils.data.DataLoader:
        """DataLoader over this rank's share of `epoch`, from sample `start` on, moved to the device."""
        _check_batch_size(batch_size)
        sampler = ResumableSampler(
            len(dataset), self.run.seed, epoch, self.rank, self.world_size, shuffle=shuffle, start=start
        )
        dl = torch.utils.data.DataLoader(
            dataset,
            batch_size=batch_size,
            sampler=sampler,
            num_workers=self.run.num_workers,
            drop_last=drop_last,
            pin_memory=self.device.type == "cuda",
            persistent_workers=False,
        )
        return self.fabric.setup_dataloaders(dl, use_distributed_sampler=False)

    def steps_per_epoch(self, dataset_len: int, batch_size: int) -> int:
        """Optimiser steps in one epoch (full batches only) for this world size."""
        _check_batch_size(batch_size)
        return math.ceil(dataset_len / self.world_size) // batch_size

    # -- logging ----------------------------------------------------------------------------------
    def _open_logs(self) -> None:
        from lightning.fabric.loggers import TensorBoardLogger

        logs = self.out_dir / "logs"
        purge = {} if self.resumed_step is None else {"purge_step": self.resumed_step + 1}
        self._tensorboard = TensorBoardLogger(root_dir=str(logs), name="tensorboard", version="", **purge)
        (logs / "csv").mkdir(parents=True, exist_ok=True)
        self._csv = CsvLog(logs / "csv")

    def log(self, metrics: dict[str, float], step: int) -> None:
        """Log scalar metrics at `step` to TensorBoard and the CSV (rank 0; nothing without loggers)."""
        self._ensure_prepared()
        if not (self._use_loggers and self.is_main):
            return
        if self._csv is None:
            self._open_logs()
        assert self._csv is not None and self._tensorboard is not None
        values = {k: float(v) for k, v in metrics.items()}
        self._tensorboard.log_metrics(values, step=step)
        self._csv.log(values, step)

    def progress(self, total: int, initial: int = 0, desc: str = "") -> Any:
        from tqdm.auto import tqdm

        return tqdm(total=total, initial=initial, desc=desc, disable=not (self.run.progress and self.is_main),
                    dynamic_ncols=True, leave=True)

    def print(self, *args: Any) -> None:
        if self.is_main:
            print(*args, flush=True)

    # -- checkpoints ------------------------------------------------------------------------------
    def save_checkpoint(self, step: int, state: dict[str, Any]) -> None:
        """Rank 0 writes the checkpoint of `step` (atomically); every rank waits for it."""
        self._ensure_prepared()
        if self.is_main:
            save_train_state(
                self.ckpt_dir,
                step,
                state,
                yaml.safe_dump(config_to_dict(self.config), sort_keys=False),
                keep_last=self.run.keep_last,
            )
        self.fabric.barrier()

    def close(self) -> None:
        if self._tensorboard is not None:
            self._tensorboard.finalize("success")
        torch.use_deterministic_algorithms(self._deterministic_before)


def _check_batch_size(batch_size: int) -> None:
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ConfigError(f"batch size: expected an integer >= 1 images per device, got {batch_size!r}")

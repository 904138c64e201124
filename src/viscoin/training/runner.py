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
- logs: TensorBoard and CSV under ``<out_dir>/logs/``, and a tqdm progress bar on rank 0.

Only trainable modules go through `setup_module` (and so into DDP, the optimiser and checkpoints);
frozen networks are moved with `to_device` and stay in eval mode.
"""

from __future__ import annotations

import math
import os
import random
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch
import yaml
from torch import nn

from viscoin.training.config import RunConfig, save_config_yaml
from viscoin.training.state import latest_checkpoint, load_train_state, save_train_state
from viscoin.utils.config import config_to_dict

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


class Runner:
    """Devices, DDP, precision, logging, seeding and checkpoints for one training run."""

    def __init__(self, run: RunConfig, config: Any, loggers: bool = True) -> None:
        from lightning.fabric import Fabric
        from lightning.fabric.loggers import CSVLogger, TensorBoardLogger

        self.run = run
        self.config = config
        self.out_dir = Path(run.out_dir)
        self.ckpt_dir = self.out_dir / "checkpoints"
        accelerator = run.accelerator
        if accelerator == "auto":
            accelerator = "cuda" if torch.cuda.is_available() else "cpu"
        if accelerator == "cuda" and not torch.cuda.is_available():
            raise ValueError("run.accelerator=cuda: CUDA is not available on this machine; use run.accelerator=cpu")
        self.precision = resolve_precision(run, accelerator)
        log_list = []
        if loggers:
            log_list = [
                TensorBoardLogger(root_dir=str(self.out_dir / "logs"), name="tensorboard", version=""),
                CSVLogger(root_dir=str(self.out_dir / "logs"), name="csv", version="", flush_logs_every_n_steps=1),
            ]
        strategy = "ddp" if run.devices * run.num_nodes > 1 else "auto"
        self.fabric = Fabric(
            accelerator=accelerator,
            devices=run.devices,
            num_nodes=run.num_nodes,
            strategy=strategy,
            precision=self.precision,
            loggers=log_list,
        )
        self.fabric.launch()
        if run.deterministic:
            torch.use_deterministic_algorithms(True, warn_only=False)
            os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        self.seed_step(0)
        if self.is_main:
            self.out_dir.mkdir(parents=True, exist_ok=True)
            save_config_yaml(config, self.out_dir / "config.yaml")

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

    # -- modules --------------------------------------------------------------------------------
    def setup(self, module: nn.Module, *optimizers: torch.optim.Optimizer) -> Any:
        """Wrap a trainable module (and its optimisers) for the devices / DDP / precision."""
        return self.fabric.setup(module, *optimizers)

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
        return math.ceil(dataset_len / self.world_size) // batch_size

    # -- logging ----------------------------------------------------------------------------------
    def log(self, metrics: dict[str, float], step: int) -> None:
        self.fabric.log_dict({k: float(v) for k, v in metrics.items()}, step=step)

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
        if self.is_main:
            save_train_state(
                self.ckpt_dir,
                step,
                state,
                yaml.safe_dump(config_to_dict(self.config), sort_keys=False),
                keep_last=self.run.keep_last,
            )
        self.fabric.barrier()

    def resume_state(self, resume: bool) -> tuple[int, dict[str, Any]] | None:
        """(step, state) of the last checkpoint when resuming; None for a fresh run."""
        if not resume:
            return None
        path = latest_checkpoint(self.ckpt_dir)
        if path is None:
            raise FileNotFoundError(
                f"--resume: no checkpoint in {self.ckpt_dir} (expected {self.ckpt_dir / 'latest.json'}); "
                "start the run without --resume"
            )
        self.print(f"resuming from {path}")
        return load_train_state(path)

    def close(self) -> None:
        for logger in self.fabric.loggers:
            logger.finalize("success")

"""Batching, seeded subsets and progress bars: the plumbing of every pass over a dataset."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any

import torch
from tqdm.auto import tqdm


def progress_bar(iterable: Any, desc: str, enabled: bool, total: int | None = None) -> Any:
    """tqdm over `iterable`, or `iterable` itself when progress bars are off."""
    if not enabled:
        return iterable
    return tqdm(iterable, desc=desc, total=total, leave=False, dynamic_ncols=True)


def batches(n: int, batch_size: int) -> Iterator[slice]:
    """Consecutive slices of ``range(n)`` of at most `batch_size` items."""
    if batch_size < 1:
        raise ValueError(f"batch_size: expected >= 1, got {batch_size}")
    for start in range(0, n, batch_size):
        yield slice(start, min(start + batch_size, n))


def seeded_subset(n: int, count: int, seed: int) -> torch.Tensor:
    """`count` distinct indices of ``range(n)`` (all of them, sorted, when count <= 0 or >= n), seeded."""
    if count <= 0 or count >= n:
        return torch.arange(n)
    gen = torch.Generator().manual_seed(seed)
    return torch.randperm(n, generator=gen)[:count].sort().values


def load_images(dataset: Any, indices: Sequence[int] | torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Images [n, 3, R, R] and labels [n] of ``dataset[i]`` for i in `indices` (items: dicts image/label)."""
    items = [dataset[int(i)] for i in indices]
    x = torch.stack([it["image"] for it in items])
    y = torch.as_tensor([int(it["label"]) for it in items], dtype=torch.long)
    return x, y

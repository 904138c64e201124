"""Shared plumbing of the metrics: batching, progress bars, seeded sampling, and one encoding pass.

Every metric of ``shared/docs/method.md`` ("Interpretation", "Evaluation") starts from the same
per-sample quantities: the concept maps Φ(x), the support Φ'(x), the logits of g and the label.
`encode_dataset` computes them once per dataset (batched, no gradients, eval mode) so that
relevance, faithfulness and consistency only ever run the generator on modified concepts.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from tqdm.auto import tqdm

from viscoin.model.viscoin import VisCoIN


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
    """Images [n, 3, R, R] and labels [n] of ``dataset[i]`` for i in `indices` (dicts image/label)."""
    items = [dataset[int(i)] for i in indices]
    x = torch.stack([it["image"] for it in items])
    y = torch.as_tensor([int(it["label"]) for it in items], dtype=torch.long)
    return x, y


@dataclass
class Encoded:
    """Per-sample quantities of one pass of VisCoIN over (part of) a dataset, on the CPU.

    phi [N, K, 3, 3], support [N, 9K] or None, logits_g [N, C], labels [N], and `indices`: the
    dataset indices they belong to. `logits_f` [N, C] and `images` [N, 3, R, R] are kept only on
    request (`encode_dataset(..., keep_f=True, keep_images=True)`).
    """

    indices: torch.Tensor
    labels: torch.Tensor
    phi: torch.Tensor
    support: torch.Tensor | None
    logits_g: torch.Tensor
    logits_f: torch.Tensor | None = None
    images: torch.Tensor | None = None

    def __len__(self) -> int:
        return int(self.indices.numel())

    def select(self, rows: torch.Tensor) -> Encoded:
        """The rows `rows` (positions in this object, not dataset indices)."""
        pick = (lambda t: None if t is None else t[rows])  # noqa: E731
        return Encoded(self.indices[rows], self.labels[rows], self.phi[rows], pick(self.support),
                       self.logits_g[rows], pick(self.logits_f), pick(self.images))


def model_device(model: VisCoIN) -> torch.device:
    return next(model.parameters()).device


@torch.no_grad()
def encode_dataset(
    model: VisCoIN,
    dataset: Any,                                        # items are dicts with "image" and "label"
    indices: Sequence[int] | torch.Tensor | None = None, # which samples (default: all, in order)
    batch_size: int = 64,
    keep_f: bool = False,                                # also run f on x (its logits)
    keep_images: bool = False,                           # also keep the input images
    progress: bool = False,
    desc: str = "encode",
) -> Encoded:
    """Φ(x), Φ'(x) and g's logits of the chosen samples, batched, in eval mode; results on the CPU."""
    model.eval()
    device = model_device(model)
    idx = torch.arange(len(dataset)) if indices is None else torch.as_tensor(indices, dtype=torch.long)
    out: dict[str, list[torch.Tensor]] = {"labels": [], "phi": [], "support": [], "logits_g": [], "logits_f": [],
                                          "images": []}
    for sl in progress_bar(list(batches(len(idx), batch_size)), desc, progress):
        x, y = load_images(dataset, idx[sl])
        x = x.to(device)
        taps = model.f.features(x)
        phi, support = model.psi(taps)
        out["labels"].append(y)
        out["phi"].append(phi.cpu())
        if support is not None:
            out["support"].append(support.cpu())
        out["logits_g"].append(model.theta(phi).cpu())
        if keep_f:
            out["logits_f"].append(taps["logits"].cpu())
        if keep_images:
            out["images"].append(x.cpu())
    cat = (lambda k: torch.cat(out[k]) if out[k] else None)  # noqa: E731
    k = model.config.num_concepts
    return Encoded(
        indices=idx,
        labels=cat("labels") if len(idx) else torch.zeros(0, dtype=torch.long),
        phi=cat("phi") if len(idx) else torch.zeros(0, k, 3, 3),
        support=cat("support"),
        logits_g=cat("logits_g") if len(idx) else torch.zeros(0, model.num_classes),
        logits_f=cat("logits_f"),
        images=cat("images"),
    )


@torch.no_grad()
def generate_batched(
    model: VisCoIN, phi: torch.Tensor, support: torch.Tensor | None, batch_size: int,
) -> Iterator[tuple[slice, torch.Tensor]]:
    """(slice, G(w̄ + Ω(Φ[slice], Φ'[slice]))) for consecutive batches; images stay on the model's device."""
    device = model_device(model)
    for sl in batches(phi.shape[0], batch_size):
        sup = None if support is None else support[sl].to(device)
        yield sl, model.generate(phi[sl].to(device), sup)


@torch.no_grad()
def f_probabilities(model: VisCoIN, x: torch.Tensor) -> torch.Tensor:
    """Softmax of f's logits on images in [-1, 1]: [N, C] (on x's device)."""
    return model.f.features(x)["logits"].float().softmax(dim=1)

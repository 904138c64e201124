"""Passes of a concept model over a dataset: the one container of per-sample results, and the loops.

Every metric and every interpretation starts from the same per-sample quantities: the concept maps
Φ(x), the support Φ'(x), the logits of g (and of f) and the label. `encode_dataset` computes them
once per dataset (batched, no gradients, eval mode); `decode_batched` then decodes edited concept
maps; `reconstruction_batches` walks a dataset with inputs, encodings and reconstructions (the
accuracy and reconstruction metrics, and training's periodic test check).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from viscoin.model.contract import ConceptModel, Encoding
from viscoin.model.losses import soft_cross_entropy
from viscoin.utils.iteration import batches, load_images, progress_bar, seeded_subset

# The per-sample sums of `accumulate_agreement` (divided by the number of samples: the means).
AGREEMENT_SUMS = ("accuracy_g", "accuracy_f", "agreement", "mse", "reconstruction_agreement", "reconstruction_ce")


@dataclass
class Encoded:
    """Per-sample quantities of one pass of a concept model over (part of) a dataset, on the CPU.

    phi [N, K, h, w], support [N, ·] or None, logits_g [N, C], labels [N], and `indices`: the
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


@torch.no_grad()
def encode_dataset(
    model: ConceptModel,
    dataset: Any,                                        # items are dicts with "image" and "label"
    indices: Sequence[int] | torch.Tensor | None = None, # which samples (default: all, in order)
    batch_size: int = 64,
    keep_f: bool = False,                                # also keep f's logits
    keep_images: bool = False,                           # also keep the input images
    progress: bool = False,
    desc: str = "encode",
) -> Encoded:
    """Φ(x), Φ'(x) and g's logits of the chosen samples, batched, in eval mode; results on the CPU."""
    model.eval()
    device = model.device
    idx = torch.arange(len(dataset)) if indices is None else torch.as_tensor(indices, dtype=torch.long)
    out: dict[str, list[torch.Tensor]] = {"labels": [], "phi": [], "support": [], "logits_g": [], "logits_f": [],
                                          "images": []}
    for sl in progress_bar(list(batches(len(idx), batch_size)), desc, progress):
        x, y = load_images(dataset, idx[sl])
        x = x.to(device)
        enc = model.encode(x)
        out["labels"].append(y)
        out["phi"].append(enc.phi.cpu())
        if enc.support is not None:
            out["support"].append(enc.support.cpu())
        out["logits_g"].append(enc.logits_g.cpu())
        if keep_f:
            out["logits_f"].append(enc.logits_f.cpu())
        if keep_images:
            out["images"].append(x.cpu())
    if not len(idx):
        empty = model.encode(torch.zeros(1, 3, model.resolution, model.resolution, device=device))
        return Encoded(idx, torch.zeros(0, dtype=torch.long), empty.phi[:0].cpu(),
                       None if empty.support is None else empty.support[:0].cpu(), empty.logits_g[:0].cpu())
    cat = (lambda k: torch.cat(out[k]) if out[k] else None)  # noqa: E731
    return Encoded(indices=idx, labels=cat("labels"), phi=cat("phi"), support=cat("support"),
                   logits_g=cat("logits_g"), logits_f=cat("logits_f"), images=cat("images"))


@torch.no_grad()
def decode_batched(
    model: ConceptModel, phi: torch.Tensor, support: torch.Tensor | None, batch_size: int,
) -> Iterator[tuple[slice, torch.Tensor]]:
    """(slice, decode(Φ[slice], Φ'[slice])) for consecutive batches; images stay on the model's device."""
    device = model.device
    for sl in batches(phi.shape[0], batch_size):
        sup = None if support is None else support[sl].to(device)
        yield sl, model.decode(phi[sl].to(device), sup)


@torch.no_grad()
def reconstruction_batches(
    model: ConceptModel,
    dataset: Any,                                          # items dicts image/label
    indices: Sequence[int] | torch.Tensor,                 # samples to use, in this order
    batch_size: int = 64,
    progress: bool = False,
    desc: str = "accuracy/reconstruction",
) -> Iterator[tuple[torch.Tensor, torch.Tensor, Encoding, torch.Tensor]]:
    """(x, labels, encoding, reconstruction) per batch, on the model's device (eval mode, no gradients)."""
    device = model.device
    idx = torch.as_tensor(indices, dtype=torch.long)
    for sl in progress_bar(list(batches(len(idx), batch_size)), desc, progress):
        x, y = load_images(dataset, idx[sl])
        x, y = x.to(device), y.to(device)
        enc = model.encode(x)
        yield x, y, enc, model.decode(enc.phi, enc.support).float()


def agreement_check(
    model: ConceptModel,
    dataset: Any,
    batch_size: int,
    limit: int = 0,              # samples evaluated (0: all)
    seed: int = 0,               # seeds which `limit` samples
) -> dict[str, float]:
    """Test accuracy of g and of f, their agreement, the reconstructions' pixel MSE and how often f classifies a
    reconstruction as it classifies its input (with the mean CE of the γ term) on a seeded random
    subset of `limit` samples (all when 0): training's periodic check. A random subset, not the first
    files, because datasets such as CUB list their test files grouped by class; the same seed gives the
    same subset at every check, so the numbers of a run are comparable. Restores the model's train/eval mode."""
    rows = seeded_subset(len(dataset), limit, seed)
    n = len(rows)
    if n == 0:
        raise ValueError("agreement_check: no samples to evaluate")
    was = model.training
    model.eval()
    sums = dict.fromkeys(AGREEMENT_SUMS, 0.0)
    for x, y, enc, x_rec in reconstruction_batches(model, dataset, rows, batch_size):
        accumulate_agreement(sums, x, y, enc, x_rec, model.classify(x_rec))
    model.train(was)
    return {**{k: v / n for k, v in sums.items()}, "count": n}


def accumulate_agreement(sums: dict[str, float], x: torch.Tensor, y: torch.Tensor, enc: Encoding,
                         x_rec: torch.Tensor, logits_rec: torch.Tensor) -> None:
    """Add one batch's sums of `AGREEMENT_SUMS` to `sums`: correct predictions of g and of f, agreements of g
    with f, per-sample pixel MSE, and what f makes of the reconstructions: how many f classifies as it
    classifies their inputs (argmax f(x̃) = argmax f(x)) and the sum of the per-sample soft cross-entropy
    CE(f(x̃), softmax f(x)), the γ term of eq. 4 without its weight. `logits_rec`: f's logits of x̃
    (`model.classify(x_rec)`)."""
    pred_g, pred_f = enc.logits_g.argmax(1), enc.logits_f.argmax(1)
    sums["accuracy_g"] += (pred_g == y).sum().item()
    sums["accuracy_f"] += (pred_f == y).sum().item()
    sums["agreement"] += (pred_g == pred_f).sum().item()
    sums["mse"] += (x_rec - x).square().mean(dim=(1, 2, 3)).sum().item()
    sums["reconstruction_agreement"] += (logits_rec.argmax(1) == pred_f).sum().item()
    sums["reconstruction_ce"] += soft_cross_entropy(logits_rec, enc.logits_f.float().softmax(dim=1)).sum().item()

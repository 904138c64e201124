"""Training the paper's baselines, FLINT and FLAEM, on a frozen classifier (VisCoIN appendix B.3.1).

    viscoin flint train --config cub data.root=/data/CUB_200_2011 classifier=runs/f-cub/classifier \\
        run.out_dir=runs/flint-cub
    viscoin flaem train --config birds run.out_dir=runs/flaem-birds
    viscoin flint train --config cub ... --resume

One loop for both families (`train_baseline`); each family's config (`FlintTrainConfig`,
`FlaemTrainConfig`) adds its `model` and `loss` sections to the shared settings
(`BaselineTrainConfig`) and names its model class. Each step: a batch of training images (random
resized crop + flip), one pass (`VectorConceptModel.forward`: f without gradients, the concepts,
the predictor, the decoder), the family's raw loss terms (`loss_terms`), weighted by the loss
section at the current epoch or step (`schedule_unit`), and an Adam step on the extractor,
predictor and decoder only: f is frozen, outside the optimiser and the checkpoints.
`restarts` starts a fresh Adam at a new learning rate at given epochs or steps (FLINT's CUB code
restarts at epoch 19 with lr 4e-5; ``docs/baselines.md``, "Losses").

Outputs in ``run.out_dir``: ``config.yaml``, ``checkpoints/``, ``logs/`` (every raw loss term
``loss/<term>``, its weight ``weight/<term>``, the weighted ``loss/total``), ``samples/`` (a row of
inputs over a row of their decoded reconstructions), ``flint/`` or ``flaem/`` (the final model,
with its data config, class names and test results) and ``metrics.json``.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any, ClassVar, Literal

import torch

from viscoin.classifier.model import Classifier, load_classifier, read_classifier_info
from viscoin.data import DataConfig, build_dataset
from viscoin.model.baseline import Schedule, VectorConceptModel, check_schedule, scheduled
from viscoin.model.contract import check_training_data
from viscoin.model.flaem import Flaem, FlaemConfig, FlaemLossConfig
from viscoin.model.flint import Flint, FlintConfig, FlintLossConfig
from viscoin.model.passes import agreement_check
from viscoin.pretrained import resolve
from viscoin.training.config import RunConfig
from viscoin.training.runner import Runner
from viscoin.utils.device import environment_info
from viscoin.utils.config import ConfigError, DictConfig
from viscoin.utils.images import image_grid, save_image, to_uint8
from viscoin.utils.io import write_json

SAMPLE_COUNT = 8   # images in a sample grid (one row of inputs, one of reconstructions)


@dataclass(frozen=True)
class BaselineTrainConfig(DictConfig):
    """What training either baseline needs, besides its `model` and `loss` sections."""

    # Keys that may change on --resume (they change when things are looked at, never a weight).
    RESUME_MAY_CHANGE: ClassVar[tuple[str, ...]] = ("sample_every", "eval_every", "eval_samples")
    model_class: ClassVar[type[VectorConceptModel]]

    data: DataConfig = field(default_factory=DataConfig)
    classifier: str = ""                  # f: a classifier folder (`viscoin classifier train`) or viscoin:birds/classifier
    lr: float = 2.0e-4                    # Adam learning rate
    betas: tuple[float, float] = (0.9, 0.999)  # Adam betas
    epochs: int = 51                      # passes over the training split (ignored when iterations > 0)
    iterations: int = 0                   # optimiser steps; 0: epochs × steps per epoch
    batch_size: int = 16                  # images per step (over all devices)
    schedule_unit: Literal["epoch", "step"] = "epoch"  # what the starts of loss schedules and restarts count (from 1)
    restarts: Schedule = ()               # [[from, lr], ...]: a fresh Adam at lr from that epoch (or step) on
    sample_every: int = 500               # inputs / reconstructions grid every N steps (0: never)
    eval_every: int = 0                   # test accuracy of g against f every N steps (0: only at the end)
    eval_samples: int = 0                 # test images of periodic evaluations: a seeded random subset (0: all)
    run: RunConfig = field(default_factory=lambda: RunConfig(out_dir="runs/baseline"))

    def __post_init__(self) -> None:
        if self.epochs < 1 or self.iterations < 0:
            raise ConfigError(f"epochs: expected >= 1 and iterations >= 0, got {self.epochs} and {self.iterations}")
        if self.batch_size < 1:
            raise ConfigError(f"batch_size: expected >= 1, got {self.batch_size}")
        if self.lr <= 0:
            raise ConfigError(f"lr: expected > 0, got {self.lr}")
        check_schedule(self.restarts, "restarts")
        if any(v <= 0 for _, v in self.restarts):
            raise ConfigError(f"restarts: every learning rate must be > 0, got {[v for _, v in self.restarts]}")


@dataclass(frozen=True)
class FlintTrainConfig(BaselineTrainConfig):
    """`viscoin flint train`: FLINT's architecture and loss schedule (baselines.md, "FLINT")."""

    model_class: ClassVar[type[VectorConceptModel]] = Flint

    model: FlintConfig = field(default_factory=FlintConfig)
    loss: FlintLossConfig = field(default_factory=FlintLossConfig)
    run: RunConfig = field(default_factory=lambda: RunConfig(out_dir="runs/flint"))


@dataclass(frozen=True)
class FlaemTrainConfig(BaselineTrainConfig):
    """`viscoin flaem train`: FLAEM's K and loss weights (baselines.md, "FLAEM"); Adam 1e-3 as its code."""

    model_class: ClassVar[type[VectorConceptModel]] = Flaem

    lr: float = 1.0e-3
    epochs: int = 100
    batch_size: int = 128
    model: FlaemConfig = field(default_factory=FlaemConfig)
    loss: FlaemLossConfig = field(default_factory=FlaemLossConfig)
    run: RunConfig = field(default_factory=lambda: RunConfig(out_dir="runs/flaem"))


def load_frozen_classifier(cfg: BaselineTrainConfig) -> Classifier:
    """f from a folder or a shipped name (``viscoin:birds/classifier``), frozen."""
    if not cfg.classifier:
        raise ConfigError("classifier: set it to a classifier folder (from `viscoin classifier train`) "
                          "or viscoin:birds/classifier")
    return load_classifier(resolve(cfg.classifier))


def check_classes(cfg: BaselineTrainConfig, f: Classifier, classes: list[str]) -> None:
    """ConfigError unless the training data has f's class count, its class names in order and its resolution
    (when f's checkpoint records them: `check_training_data`)."""
    if len(classes) != f.num_classes:
        raise ConfigError(f"classifier {cfg.classifier} has {f.num_classes} classes; "
                          f"{cfg.data.root or cfg.data.kind} has {len(classes)}")
    check_training_data(read_classifier_info(resolve(cfg.classifier)), cfg.classifier, classes, cfg.data.resolution)


def schedule_position(cfg: BaselineTrainConfig, step: int, steps_per_epoch: int) -> int:
    """The 1-based epoch (or step) that optimiser step `step` (0-based) belongs to, in `schedule_unit`."""
    return step // steps_per_epoch + 1 if cfg.schedule_unit == "epoch" else step + 1


def restarts_at(cfg: BaselineTrainConfig, step: int, steps_per_epoch: int) -> bool:
    """Whether a restart begins with optimiser step `step` (a fresh Adam: its moments are dropped)."""
    if step == 0:
        return False
    before, now = (schedule_position(cfg, s, steps_per_epoch) for s in (step - 1, step))
    return any(before < start <= now for start, _ in cfg.restarts)


def weighted_losses(
    model: torch.nn.Module,              # the baseline, possibly wrapped (DDP / precision) by the runner
    raw: VectorConceptModel,             # the unwrapped model
    x: torch.Tensor,                     # training images [N, 3, R, R]
    weights: dict[str, float],           # the weight of each term now
) -> tuple[Any, dict[str, torch.Tensor]]:
    """One pass and the family's raw terms, plus ``total`` = Σ weight · term."""
    out = model(x)
    terms = raw.loss_terms(out, x)
    terms["total"] = torch.stack([weights[k] * terms[k] for k in weights]).sum()
    return out, terms


def train_baseline(
    cfg: BaselineTrainConfig,
    resume: bool = False,        # continue from the last checkpoint in run.out_dir
    overwrite: bool = False,     # replace the run in run.out_dir (refused otherwise)
) -> dict[str, Any]:
    """Train the family of `cfg` (FLINT or FLAEM) on its frozen f; returns the final metrics."""
    family = type(cfg).model_class
    f = load_frozen_classifier(cfg)
    train_set = build_dataset(cfg.data, "train")
    test_set = build_dataset(cfg.data, "test")
    check_classes(cfg, f, train_set.classes)
    torch.manual_seed(cfg.run.seed)                                 # the initial weights depend on run.seed only
    model = family(cfg.model, f, resolution=cfg.data.resolution)   # type: ignore[attr-defined]

    runner = Runner(cfg.run, cfg, overwrite=overwrite)
    world = runner.world_size
    if cfg.batch_size % world:
        raise ConfigError(f"batch_size={cfg.batch_size} must be divisible by the {world} devices")
    batch = cfg.batch_size // world
    steps_per_epoch = runner.steps_per_epoch(len(train_set), batch)
    if steps_per_epoch < 1:
        raise ConfigError(f"batch_size={cfg.batch_size} is larger than the training split ({len(train_set)} images)")
    total_steps = cfg.iterations or cfg.epochs * steps_per_epoch

    optimizer = torch.optim.Adam(model.parameters(), lr=cfg.lr, betas=cfg.betas)
    model, optimizer, step, history = runner.start(model, optimizer, resume)   # moves f along (ConceptModel._apply)
    raw: VectorConceptModel = model.module if hasattr(model, "module") else model
    model.train()
    runner.print(f"{family.family}: K={raw.num_concepts}, {total_steps} steps ({steps_per_epoch} per epoch, batch "
                 f"{cfg.batch_size}), schedules in {cfg.schedule_unit}s, precision {runner.precision}"
                 + (f"; resumed at step {step}" if step else ""))

    def checkpoint() -> None:
        runner.save_training_state(step, model, optimizer, history)

    def write_samples(x: torch.Tensor, x_rec: torch.Tensor) -> None:
        if runner.is_main:
            n = min(SAMPLE_COUNT, len(x))
            rows = torch.cat([x[:n].float(), x_rec[:n].float().clamp(-1, 1)])   # inputs over reconstructions
            save_image(runner.out_dir / "samples" / f"rec-{step:09d}.png", image_grid(to_uint8(rows), ncols=n, pad=2))

    bar = runner.progress(total_steps, initial=step, desc=f"train {family.network}")
    t0, images_since = time.perf_counter(), 0
    while step < total_steps:
        epoch, in_epoch = divmod(step, steps_per_epoch)
        for data in runner.loader(train_set, batch, epoch, start=in_epoch * batch):
            runner.seed_step(step)
            position = schedule_position(cfg, step, steps_per_epoch)
            if restarts_at(cfg, step, steps_per_epoch):
                getattr(optimizer, "optimizer", optimizer).state.clear()     # Adam re-initialises its moments
                runner.print(f"step {step}: optimiser restarted at lr {scheduled(cfg.restarts, position, cfg.lr):g}")
            for group in optimizer.param_groups:
                group["lr"] = scheduled(cfg.restarts, position, cfg.lr)
            weights = cfg.loss.weights(position)                             # type: ignore[attr-defined]
            x = data["image"]
            out, terms = weighted_losses(model, raw, x, weights)
            optimizer.zero_grad(set_to_none=True)
            runner.fabric.backward(terms["total"])
            optimizer.step()
            step += 1
            images_since += len(x) * world
            bar.update(1)
            if step % cfg.run.log_every == 0 or step == total_steps:
                dt = time.perf_counter() - t0
                acc = (out.encoding.logits_g.argmax(1) == data["label"]).float().mean().item()
                metrics = {f"loss/{k}": v.item() for k, v in terms.items()}
                metrics.update({f"weight/{k}": w for k, w in weights.items()})
                metrics.update({"train/accuracy_g": acc, "train/lr": optimizer.param_groups[0]["lr"],
                                "train/epoch": epoch + 1, "speed/images_per_s": images_since / max(dt, 1e-9)})
                runner.log(metrics, step)
                bar.set_postfix(loss=f"{terms['total'].item():.4f}", acc_g=f"{acc:.2f}")
                t0, images_since = time.perf_counter(), 0
            if cfg.sample_every and step % cfg.sample_every == 0:
                write_samples(x.detach(), out.x_rec.detach())
            if cfg.eval_every and step % cfg.eval_every == 0 and runner.is_main:
                result = agreement_check(raw, test_set, batch, cfg.eval_samples, cfg.run.seed)
                runner.log({f"test/{k}": v for k, v in result.items() if k != "count"}, step)
                history.append({"step": step, **result})
                runner.print(f"step {step}: test accuracy g {100 * result['accuracy_g']:.2f}% "
                             f"(f {100 * result['accuracy_f']:.2f}%), agreement {100 * result['agreement']:.2f}%, "
                             f"reconstruction MSE {result['mse']:.4f}")
            if step % cfg.run.ckpt_every == 0 or step % steps_per_epoch == 0 or step == total_steps:
                checkpoint()
            if step >= total_steps:
                break
    bar.close()

    out_metrics: dict[str, Any] = {"family": family.family, "steps": step, "history": history}
    if runner.is_main:
        final = agreement_check(raw, test_set, batch)
        out_metrics.update({f"test_{k}": v for k, v in final.items()})
        out_metrics["environment"] = environment_info(runner.device)
        folder = runner.out_dir / family.network
        raw.save_checkpoint(folder, cfg.classifier,
                            extra={"data": cfg.data.to_dict(), "loss": cfg.loss.to_dict(),   # type: ignore[attr-defined]
                                   "classes": train_set.classes, "test": final})
        write_json(runner.out_dir / "metrics.json", out_metrics)
        runner.print(f"test accuracy g {100 * final['accuracy_g']:.2f}% vs f {100 * final['accuracy_f']:.2f}% "
                     f"(agreement {100 * final['agreement']:.2f}%), reconstruction MSE {final['mse']:.4f}; "
                     f"model saved to {folder}")
    runner.fabric.barrier()
    runner.close()
    return out_metrics

"""Fine-tuning the classifier f (paper appendix B.2) and measuring its accuracy.

    viscoin classifier train --config cub data.root=/data/CUB_200_2011 run.out_dir=runs/f-cub
    viscoin classifier train --config cub data.root=/data/CUB_200_2011 run.out_dir=runs/f-cub --resume
    viscoin classifier test runs/f-cub/classifier --data.kind cub --data.root /data/CUB_200_2011

Read top to bottom: the config, the optimiser and schedule, evaluation, the training loop.
The loop runs on `viscoin.training.Runner` (devices, DDP, precision, logs, exact resume).
Outputs in ``run.out_dir``: ``config.yaml``, ``checkpoints/`` (resumable training state),
``logs/`` (TensorBoard + CSV), ``classifier/`` (the final network, our checkpoint format) and
``metrics.json``.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, Literal

import torch
import torch.nn.functional as F

from viscoin.classifier.model import Classifier, ClassifierConfig, load_classifier, read_classifier_info, save_classifier
from viscoin.data import DataConfig, ImageDataset, build_dataset
from viscoin.training.config import RunConfig, data_config_with_overrides
from viscoin.training.runner import ResumableSampler, Runner
from viscoin.utils.config import ConfigError, DictConfig
from viscoin.utils.io import write_json


@dataclass(frozen=True)
class OptimConfig(DictConfig):
    """Optimiser (paper: Adam 1e-4 for CUB, Adam 1e-3 for CelebA-HQ, SGD 0.1 for Cars)."""

    name: Literal["adam", "adamw", "sgd"] = "adam"  # optimiser
    lr: float = 1e-4                                # learning rate
    momentum: float = 0.9                           # SGD momentum
    nesterov: bool = False                          # SGD Nesterov momentum
    betas: tuple[float, float] = (0.9, 0.999)       # Adam betas
    weight_decay: float = 0.0                       # L2 (adam, sgd) or decoupled (adamw) weight decay

    def __post_init__(self) -> None:
        if self.lr <= 0:
            raise ConfigError(f"optim.lr: expected > 0, got {self.lr}")


@dataclass(frozen=True)
class ScheduleConfig(DictConfig):
    """Learning-rate schedule, stepped once per epoch."""

    kind: Literal["constant", "multistep", "cosine"] = "constant"  # schedule
    milestones: tuple[int, ...] = ()                # multistep: epochs after which lr is multiplied by gamma
    gamma: float = 0.1                              # multistep factor


@dataclass(frozen=True)
class ClassifierTrainConfig(DictConfig):
    """Everything `viscoin classifier train` needs. `classifier.num_classes` 0 = from the dataset."""

    data: DataConfig = field(default_factory=DataConfig)
    classifier: ClassifierConfig = field(default_factory=lambda: ClassifierConfig(num_classes=0))
    optim: OptimConfig = field(default_factory=OptimConfig)
    schedule: ScheduleConfig = field(default_factory=ScheduleConfig)
    epochs: int = 30                                # training epochs
    batch_size: int = 32                            # images per optimiser step (over all devices)
    eval_batch_size: int = 64                       # images per evaluation batch (per device)
    eval_every: int = 1                             # evaluate on the test split every N epochs (0: only at the end)
    max_steps: int = 0                              # stop after this many steps (0: no limit)
    run: RunConfig = field(default_factory=lambda: RunConfig(out_dir="runs/classifier"))

    def __post_init__(self) -> None:
        if self.epochs < 1:
            raise ConfigError(f"epochs: expected >= 1, got {self.epochs}")
        if self.batch_size < 1 or self.eval_batch_size < 1:
            raise ConfigError("batch_size and eval_batch_size: expected >= 1")


def build_optimizer(cfg: OptimConfig, params: Any) -> torch.optim.Optimizer:
    if cfg.name == "sgd":
        return torch.optim.SGD(params, lr=cfg.lr, momentum=cfg.momentum, nesterov=cfg.nesterov,
                               weight_decay=cfg.weight_decay)
    cls = torch.optim.AdamW if cfg.name == "adamw" else torch.optim.Adam
    return cls(params, lr=cfg.lr, betas=cfg.betas, weight_decay=cfg.weight_decay)


def build_scheduler(cfg: ScheduleConfig, optimizer: torch.optim.Optimizer, epochs: int) -> Any:
    if cfg.kind == "multistep":
        return torch.optim.lr_scheduler.MultiStepLR(optimizer, milestones=list(cfg.milestones), gamma=cfg.gamma)
    if cfg.kind == "cosine":
        return torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=epochs)
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda epoch: 1.0)


@torch.no_grad()
def evaluate(
    model: torch.nn.Module,             # classifier (plain or Fabric-wrapped)
    dataset: ImageDataset,              # evaluation split (no augmentation)
    batch_size: int,                    # images per batch on this process
    device: torch.device,               # where the model lives
    num_workers: int = 0,               # data-loading workers
    runner: Runner | None = None,       # when given: split over its ranks and sum the counts
) -> dict[str, float]:
    """Top-1 accuracy and mean cross-entropy of `model` on `dataset`."""
    was_training = model.training
    model.eval()
    rank, world = (runner.rank, runner.world_size) if runner is not None else (0, 1)
    sampler = ResumableSampler(len(dataset), seed=0, epoch=0, rank=rank, world_size=world, shuffle=False)
    loader = torch.utils.data.DataLoader(dataset, batch_size=batch_size, sampler=sampler, num_workers=num_workers)
    totals = torch.zeros(3, dtype=torch.float64, device=device)  # correct, loss sum, count
    seen = 0
    for batch in loader:
        images, labels = batch["image"].to(device), batch["label"].to(device)
        logits = model(images).float()
        # This rank's j-th sample sits at position rank + world * j of the padded order; drop the padding.
        pos = rank + world * (seen + torch.arange(len(labels), device=device))
        keep = pos < len(dataset)
        seen += len(labels)
        totals[0] += ((logits.argmax(1) == labels) & keep).sum()
        totals[1] += (F.cross_entropy(logits, labels, reduction="none") * keep).sum()
        totals[2] += keep.sum()
    if runner is not None:
        totals = runner.fabric.all_reduce(totals, reduce_op="sum")
    model.train(was_training)
    correct, loss_sum, count = totals.tolist()
    return {"accuracy": correct / count, "loss": loss_sum / count, "count": int(count)}


def train_classifier(
    cfg: ClassifierTrainConfig,
    resume: bool = False,        # continue from the last checkpoint in run.out_dir
    overwrite: bool = False,     # replace the run in run.out_dir (refused otherwise)
) -> dict[str, Any]:
    """Fine-tune the classifier; returns the final metrics. See the module docstring for outputs."""
    train_set = build_dataset(cfg.data, "train")
    test_set = build_dataset(cfg.data, "test")
    if cfg.classifier.num_classes in (0, train_set.num_classes):
        cfg = dataclasses.replace(cfg, classifier=dataclasses.replace(cfg.classifier, num_classes=train_set.num_classes))
    else:
        raise ConfigError(
            f"classifier.num_classes={cfg.classifier.num_classes} but the dataset has {train_set.num_classes} classes; "
            "set classifier.num_classes=0 to take it from the data"
        )

    runner = Runner(cfg.run, cfg, overwrite=overwrite)
    if cfg.batch_size % runner.world_size != 0:
        raise ConfigError(f"batch_size={cfg.batch_size} is not divisible by the {runner.world_size} devices")
    batch_per_device = cfg.batch_size // runner.world_size
    steps_per_epoch = runner.steps_per_epoch(len(train_set), batch_per_device)
    if steps_per_epoch < 1:
        raise ConfigError(
            f"batch_size={cfg.batch_size} is larger than the training split ({len(train_set)} images): no full batch"
        )
    total_steps = steps_per_epoch * cfg.epochs
    if cfg.max_steps:
        total_steps = min(total_steps, cfg.max_steps)

    resumed = runner.resume_state(resume)
    model = Classifier(cfg.classifier, load_pretrained=resumed is None)
    optimizer = build_optimizer(cfg.optim, model.parameters())
    scheduler = build_scheduler(cfg.schedule, optimizer, cfg.epochs)
    step, history = 0, []
    if resumed is not None:
        step, state = resumed
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        history = state["history"]
    model, optimizer = runner.setup(model, optimizer)
    model.train()

    def checkpoint() -> None:
        runner.save_checkpoint(step, {
            "model": model.state_dict(),
            "optimizer": optimizer.state_dict(),
            "scheduler": scheduler.state_dict(),
            "history": history,
        })

    bar = runner.progress(total_steps, initial=step, desc="train")
    while step < total_steps:
        epoch, in_epoch = divmod(step, steps_per_epoch)
        loader = runner.loader(train_set, batch_per_device, epoch, start=in_epoch * batch_per_device)
        for batch in loader:
            runner.seed_step(step)
            logits = model(batch["image"])
            loss = F.cross_entropy(logits.float(), batch["label"])
            optimizer.zero_grad(set_to_none=True)
            runner.fabric.backward(loss)
            optimizer.step()
            step += 1
            bar.update(1)
            if step % cfg.run.log_every == 0 or step == total_steps:
                acc = (logits.argmax(1) == batch["label"]).float().mean()
                metrics = {"train/loss": loss.item(), "train/accuracy": acc.item(),
                           "train/lr": optimizer.param_groups[0]["lr"], "epoch": epoch}
                runner.log(metrics, step)
                bar.set_postfix(loss=f"{loss.item():.4f}", epoch=epoch)
            epoch_done = step % steps_per_epoch == 0
            if epoch_done:
                scheduler.step()
                if cfg.eval_every and (epoch + 1) % cfg.eval_every == 0:
                    result = evaluate(model, test_set, cfg.eval_batch_size, runner.device, cfg.run.num_workers, runner)
                    runner.log({"test/accuracy": result["accuracy"], "test/loss": result["loss"]}, step)
                    history.append({"epoch": epoch + 1, "step": step, **result})
                    runner.print(f"epoch {epoch + 1}: test accuracy {100 * result['accuracy']:.2f}%")
            if epoch_done or step % cfg.run.ckpt_every == 0 or step == total_steps:
                checkpoint()
            if step >= total_steps:
                break
    bar.close()

    final = evaluate(model, test_set, cfg.eval_batch_size, runner.device, cfg.run.num_workers, runner)
    out = {"test_accuracy": final["accuracy"], "test_loss": final["loss"], "test_count": final["count"],
           "steps": step, "epochs": step / steps_per_epoch, "history": history,
           "classes": train_set.classes}
    if runner.is_main:
        raw = model.module if hasattr(model, "module") else model
        save_classifier(raw, runner.out_dir / "classifier",
                        extra={"test_accuracy": final["accuracy"], "classes": train_set.classes,
                               "data": cfg.data.to_dict()})
        write_json(runner.out_dir / "metrics.json", out)
        runner.print(f"test accuracy {100 * final['accuracy']:.2f}% on {final['count']} images; "
                     f"classifier saved to {runner.out_dir / 'classifier'}")
    runner.close()
    return out


def test_classifier(
    checkpoint: str,                           # classifier folder (our format)
    overrides: list[str] = (),                 # "data.key=value" changes to the data config saved with it
    split: Literal["train", "test"] = "test",  # which split to score
    batch_size: int = 64,                      # images per batch
    device: str | torch.device = "cpu",        # where to run
    num_workers: int = 0,                      # data-loading workers
) -> dict[str, Any]:
    """Top-1 accuracy of a saved classifier. The data config defaults to the one it was trained with."""
    model = load_classifier(checkpoint, device=device)
    saved = read_classifier_info(checkpoint).get("extra", {}).get("data")
    data_cfg = data_config_with_overrides(saved, overrides, where=str(checkpoint))
    dataset = build_dataset(data_cfg, split, augment=False)
    if dataset.num_classes != model.num_classes:
        raise ConfigError(f"the classifier has {model.num_classes} classes but {data_cfg.root} has {dataset.num_classes}")
    result = evaluate(model, dataset, batch_size, torch.device(device), num_workers)
    return {"split": split, "data": data_cfg.to_dict(), **result}

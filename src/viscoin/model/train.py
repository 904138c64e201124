"""Training VisCoIN (paper section 3.4, eqs. 2-5; appendix B.1 and table 3 for the settings).

    viscoin train --config cub data.root=/data/CUB_200_2011 classifier=runs/f-cub/classifier \\
        generator=nets/cub-G run.out_dir=runs/viscoin-cub
    viscoin train --config cub ... --resume

Each step: 8 real training images (random resized crop + flip) and 8 synthetic images
G(mapping(z, c)), z ~ N(0, I), c a uniform class when G is conditional, truncation 1, drawn
without autograd; both go through the same path and losses. Adam on Ψ, Θ, Ω only (f and G are
frozen but differentiated through). Optional late learning-rate decay: ×0.8 every 1000 steps
after the halfway point (authors' code).
Outputs in ``run.out_dir``: ``config.yaml``, ``checkpoints/``, ``logs/``, ``samples/`` (input /
reconstruction grids), ``viscoin/`` (the final model) and ``metrics.json``.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

import torch

from viscoin.classifier.model import load_classifier, read_classifier_info
from viscoin.data import DataConfig, build_dataset
from viscoin.model.contract import check_training_data
from viscoin.model.losses import LossConfig, viscoin_losses
from viscoin.model.passes import agreement_check
from viscoin.model.perceptual import PerceptualDistance, build_perceptual
from viscoin.model.viscoin_model import TrainingPass, VisCoIN, VisCoINConfig, save_viscoin
from viscoin.pretrained import resolve
from viscoin.stylegan.checkpoint import load_generator
from viscoin.training.config import RunConfig
from viscoin.training.runner import Runner
from viscoin.utils.device import environment_info
from viscoin.utils.config import ConfigError, DictConfig
from viscoin.utils.images import image_grid, save_image, to_uint8
from viscoin.utils.io import write_json


@dataclass(frozen=True)
class VisCoINTrainConfig(DictConfig):
    """Everything `viscoin train` needs (paper table 3 in the shipped configs)."""

    data: DataConfig = field(default_factory=DataConfig)
    classifier: str = ""                  # f: a classifier folder from `viscoin classifier train`
    generator: str = ""                   # G: a generator folder or an official .pkl
    model: VisCoINConfig = field(default_factory=VisCoINConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    lr: float = 1e-4                      # Adam learning rate
    betas: tuple[float, float] = (0.9, 0.999)  # Adam betas
    lr_decay: bool = True                 # ×decay_factor every decay_every steps after half the run
    decay_every: int = 1000
    decay_factor: float = 0.8
    iterations: int = 100_000             # optimiser steps
    batch_real: int = 8                   # real images per step (over all devices)
    batch_synthetic: int = 8              # images from G per step (over all devices)
    sample_every: int = 1000              # input / reconstruction grid every N steps (0: never)
    eval_every: int = 5000                # test accuracy of g against f every N steps (0: only at the end)
    eval_samples: int = 0                 # test images of periodic evaluations: a seeded random subset (0: all)
    run: RunConfig = field(default_factory=lambda: RunConfig(out_dir="runs/viscoin"))

    def __post_init__(self) -> None:
        if self.iterations < 1:
            raise ConfigError(f"iterations: expected >= 1, got {self.iterations}")
        if self.batch_real < 1 or self.batch_synthetic < 0:
            raise ConfigError("batch_real: expected >= 1; batch_synthetic: expected >= 0")
        if self.lr <= 0:
            raise ConfigError(f"lr: expected > 0, got {self.lr}")


def lr_factor(step: int, cfg: VisCoINTrainConfig) -> float:
    """Late decay (authors' code): ×decay_factor per decay_every steps completed after iterations/2."""
    if not cfg.lr_decay:
        return 1.0
    half = cfg.iterations // 2
    return cfg.decay_factor ** (max(0, step - half) // cfg.decay_every)


def load_frozen_networks(cfg: VisCoINTrainConfig) -> tuple[torch.nn.Module, torch.nn.Module]:
    """f and G from folders or shipped names (``viscoin:birds/classifier``), frozen."""
    if not cfg.classifier:
        raise ConfigError("classifier: set it to a classifier folder (from `viscoin classifier train`)")
    if not cfg.generator:
        raise ConfigError("generator: set it to a generator folder or an official .pkl")
    return load_classifier(resolve(cfg.classifier)), load_generator(resolve(cfg.generator))


def training_losses(
    model: torch.nn.Module,              # VisCoIN, possibly wrapped (DDP / precision) by the runner
    raw: VisCoIN,                        # the unwrapped model
    x_real: torch.Tensor,                # [B_real, 3, R, R] training images
    n_synthetic: int,                    # images to draw from G
    loss_cfg: LossConfig,
    perceptual: PerceptualDistance | None,
) -> tuple[torch.Tensor, TrainingPass, dict[str, torch.Tensor]]:
    """One step's batch (real + G(mapping(z, c)), z ~ N(0, I), c uniform if G is conditional, truncation 1,
    no autograd), forward and losses."""
    x = x_real
    if n_synthetic:
        x = torch.cat([x, raw.sample_images(n_synthetic, x_real.device).to(x.dtype)])
    out = model(x)
    orth = raw.orthogonality_loss(loss_cfg.orthogonality_reduction) if loss_cfg.orthogonality else None
    return x, out, viscoin_losses(out, x, loss_cfg, perceptual, orth)


def train_viscoin(
    cfg: VisCoINTrainConfig,
    resume: bool = False,        # continue from the last checkpoint in run.out_dir
    overwrite: bool = False,     # replace the run in run.out_dir (refused otherwise)
) -> dict[str, Any]:
    """Train Ψ, Θ, Ω; returns the final metrics."""
    f, G = load_frozen_networks(cfg)
    train_set = build_dataset(cfg.data, "train")
    test_set = build_dataset(cfg.data, "test")
    if train_set.num_classes != f.num_classes:
        raise ConfigError(f"classifier {cfg.classifier} has {f.num_classes} classes; {cfg.data.root} has "
                          f"{train_set.num_classes}")
    check_training_data(read_classifier_info(resolve(cfg.classifier)), cfg.classifier, train_set.classes,
                        cfg.data.resolution, G.img_resolution)

    runner = Runner(cfg.run, cfg, overwrite=overwrite)
    world = runner.world_size
    if cfg.batch_real % world or cfg.batch_synthetic % world:
        raise ConfigError(f"batch_real and batch_synthetic must be divisible by the {world} devices")
    b_real, b_syn = cfg.batch_real // world, cfg.batch_synthetic // world
    steps_per_epoch = runner.steps_per_epoch(len(train_set), b_real)
    if steps_per_epoch < 1:
        raise ConfigError(f"batch_real={cfg.batch_real} is larger than the training split ({len(train_set)} images)")

    model = VisCoIN(cfg.model, f, G, resolution=cfg.data.resolution)
    perceptual = build_perceptual(cfg.loss.perceptual, classifier=f, vgg_weights_path=cfg.loss.lpips_vgg_path) \
        if cfg.loss.beta > 0 else None
    optimizer = torch.optim.Adam(model.parameters(), lr=cfg.lr, betas=cfg.betas)
    model, optimizer, step, history = runner.start(model, optimizer, resume)  # moves f and G along (VisCoIN._apply)
    if perceptual is not None:
        perceptual = perceptual.to(runner.device)
    raw: VisCoIN = model.module if hasattr(model, "module") else model
    model.train()
    runner.print(f"VisCoIN: K={cfg.model.num_concepts}, perceptual term: "
                 f"{perceptual.name if perceptual is not None else 'off'}, precision {runner.precision}")

    def checkpoint() -> None:
        runner.save_training_state(step, model, optimizer, history)

    def write_samples(x: torch.Tensor, x_rec: torch.Tensor) -> None:
        if not runner.is_main:
            return
        pairs = torch.stack([x[:8].float(), x_rec[:8].float().clamp(-1, 1)], dim=1).flatten(0, 1)
        save_image(runner.out_dir / "samples" / f"rec-{step:09d}.png", image_grid(to_uint8(pairs), ncols=8, pad=2))

    bar = runner.progress(cfg.iterations, initial=step, desc="train")
    t0, images_since = time.perf_counter(), 0
    while step < cfg.iterations:
        epoch, in_epoch = divmod(step, steps_per_epoch)
        for batch in runner.loader(train_set, b_real, epoch, start=in_epoch * b_real):
            runner.seed_step(step)
            for group in optimizer.param_groups:
                group["lr"] = cfg.lr * lr_factor(step, cfg)
            x, out, terms = training_losses(model, raw, batch["image"], b_syn, cfg.loss, perceptual)
            optimizer.zero_grad(set_to_none=True)
            runner.fabric.backward(terms["total"])
            optimizer.step()
            step += 1
            images_since += len(x) * world
            bar.update(1)
            if step % cfg.run.log_every == 0 or step == cfg.iterations:
                dt = time.perf_counter() - t0
                metrics = {f"loss/{k}": v.item() for k, v in terms.items()}
                n_real = len(batch["image"])
                acc = (out.logits_g[:n_real].argmax(1) == batch["label"]).float().mean().item()
                metrics.update({"train/accuracy_g": acc, "train/lr": optimizer.param_groups[0]["lr"],
                                "speed/images_per_s": images_since / max(dt, 1e-9)})
                runner.log(metrics, step)
                bar.set_postfix(loss=f"{terms['total'].item():.4f}", acc_g=f"{acc:.2f}")
                t0, images_since = time.perf_counter(), 0
            if cfg.sample_every and step % cfg.sample_every == 0:
                write_samples(x.detach(), out.x_rec.detach())
            if cfg.eval_every and step % cfg.eval_every == 0 and runner.is_main:
                result = agreement_check(raw, test_set, b_real + b_syn, cfg.eval_samples, cfg.run.seed)
                runner.log({f"test/{k}": v for k, v in result.items() if k != "count"}, step)
                history.append({"step": step, **result})
                runner.print(f"step {step}: test accuracy g {100 * result['accuracy_g']:.2f}% "
                             f"(f {100 * result['accuracy_f']:.2f}%), agreement {100 * result['agreement']:.2f}%, "
                             f"reconstructions of the input's class {100 * result['reconstruction_agreement']:.1f}%")
            if step % cfg.run.ckpt_every == 0 or step == cfg.iterations:
                checkpoint()
            if step >= cfg.iterations:
                break
    bar.close()

    out_metrics: dict[str, Any] = {"steps": step, "history": history}
    if runner.is_main:
        final = agreement_check(raw, test_set, b_real + b_syn)
        out_metrics.update({f"test_{k}": v for k, v in final.items()})
        out_metrics["perceptual"] = perceptual.name if perceptual is not None else "off"
        out_metrics["environment"] = environment_info(runner.device)
        save_viscoin(raw, runner.out_dir / "viscoin", cfg.classifier, cfg.generator,
                     extra={"data": cfg.data.to_dict(), "loss": cfg.loss.to_dict(), "classes": train_set.classes,
                            "perceptual": out_metrics["perceptual"], "test": final})
        write_json(runner.out_dir / "metrics.json", out_metrics)
        runner.print(f"test accuracy g {100 * final['accuracy_g']:.2f}% vs f {100 * final['accuracy_f']:.2f}% "
                     f"(agreement {100 * final['agreement']:.2f}%); model saved to {runner.out_dir / 'viscoin'}")
    runner.fabric.barrier()
    runner.close()
    return out_metrics

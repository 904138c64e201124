"""Training and fine-tuning the StyleGAN2 generator with adaptive discriminator augmentation.

    viscoin generator train --config auto --data /data/images run.out_dir=runs/g-mine
    viscoin generator train --config cub --data /data/CUB_200_2011 init.source=imagenet.pkl run.out_dir=runs/g-cub
    viscoin generator train --config cub --data /data/CUB_200_2011 init.source=imagenet.pkl run.out_dir=runs/g-cub \
        --resume

StyleGAN2-ADA (Karras et al., NeurIPS 2020; StyleGAN2: Karras et al., CVPR 2020), clean-room:
non-saturating logistic loss, lazy R1 and path-length regularisation with the matching Adam
settings, style mixing, the moving-average generator G_ema, ADA (`viscoin.stylegan.augment`) and
the 'auto' configuration. Fine-tuning starts from an official ``.pkl`` or from one of our runs,
copying tensors by name as the official ``--resume`` does (§2.6).

Read top to bottom: the config, the 'auto' formulas, data, networks and optimisers, the losses,
samples and FID, the training loop, the command line. The loop runs on `viscoin.training.Runner`
(devices, DDP, precision, logs, exact resume). Outputs in ``run.out_dir``: ``config.yaml`` (the
resolved config), ``checkpoints/`` (resumable state), ``logs/`` (TensorBoard + CSV),
``samples/`` (image grids at fixed seeds), ``G_ema/``, ``G/``, ``D/`` (our checkpoint format,
with the final augmentation probability in their extras) and ``metrics.json``.

Section numbers (§) refer to ``docs/stylegan2-ada-training.md``, the clean-room description of the
official networks and training in this repository.
"""

from __future__ import annotations

import copy
import dataclasses
import math
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Literal

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from viscoin.data import DataConfig, ImageDataset, build_dataset
from viscoin.pretrained import resolve
from viscoin.stylegan.augment import AdaController, AugmentConfig, AugmentPipe
from viscoin.stylegan.checkpoint import load_network, read_checkpoint_info, save_network
from viscoin.stylegan.config import (
    DiscriminatorConfig,
    GeneratorConfig,
    MappingConfig,
    SynthesisConfig,
)
from viscoin.stylegan.discriminator import Discriminator
from viscoin.stylegan.generator import Generator
from viscoin.stylegan.official import load_official
from viscoin.stylegan.sampling import sample
from viscoin.training.config import RunConfig, load_config
from viscoin.training.runner import CONFIG_NAME, Runner
from viscoin.training.state import latest_checkpoint, load_train_state
from viscoin.utils.config import ConfigError, DictConfig
from viscoin.utils.fid import InceptionFeatures, fid_from_features
from viscoin.utils.images import image_grid, pixel_features, save_image, to_uint8
from viscoin.utils.io import CheckpointError, claim_empty_folder, write_json

AUTO = "auto"
Auto = Literal["auto"]

# ----------------------------------------------------------------------------------------------
# Config


@dataclass(frozen=True)
class GanLossConfig(DictConfig):
    """StyleGAN2 loss and its lazy regularisation (§2.2-2.3)."""

    r1_gamma: float | Auto = AUTO                   # R1 weight gamma (auto: 0.0002 res^2 / batch)
    pl_weight: float = 2.0                          # path-length regularisation weight (0: off)
    pl_batch_shrink: int = 2                        # path-length batch = per-device batch // this
    pl_decay: float = 0.01                          # decay of the running mean path length
    style_mixing_prob: float = 0.9                  # probability of mixing two latents in a G forward
    mode_seeking: float = 0.0                       # weight of the mode-seeking term on G (`mode_seeking_penalty`;
                                                    # not official; 0: off)
    G_reg_interval: int = 4                         # path-length phase every N iterations (lazy)
    D_reg_interval: int = 16                        # R1 phase every N iterations (lazy)

    def __post_init__(self) -> None:
        if self.r1_gamma != AUTO and self.r1_gamma < 0:
            raise ConfigError(f"loss.r1_gamma: expected >= 0, got {self.r1_gamma}")
        if not self.mode_seeking >= 0:
            raise ConfigError(f"loss.mode_seeking: expected >= 0, got {self.mode_seeking}")
        if self.pl_weight < 0 or not 0 <= self.style_mixing_prob <= 1:
            raise ConfigError("loss.pl_weight: expected >= 0; loss.style_mixing_prob: expected in [0, 1]")
        if min(self.pl_batch_shrink, self.G_reg_interval, self.D_reg_interval) < 1:
            raise ConfigError("loss.pl_batch_shrink, loss.G_reg_interval, loss.D_reg_interval: expected >= 1")


@dataclass(frozen=True)
class GanOptimConfig(DictConfig):
    """Adam for G and D; lr and betas are adjusted for lazy regularisation (§2.2)."""

    lr: float | Auto = AUTO                         # learning rate of G and D (auto: 0.0025, 0.002 from 1024 px)
    betas: tuple[float, float] = (0.0, 0.99)        # Adam betas
    eps: float = 1e-8                               # Adam epsilon

    def __post_init__(self) -> None:
        if self.lr != AUTO and not self.lr > 0:
            raise ConfigError(f"optim.lr: expected > 0, got {self.lr}")


@dataclass(frozen=True)
class EmaConfig(DictConfig):
    """The moving-average generator G_ema (§2.4)."""

    kimg: float | Auto = AUTO                       # half-life in thousands of images (auto: batch * 10 / 32)
    rampup: float | None | Auto = AUTO              # half-life <= this * images shown (auto: 0.05, none if fine-tuning)


@dataclass(frozen=True)
class InitConfig(DictConfig):
    """Fine-tuning: where the starting weights come from (§2.6)."""

    source: str = ""                                # official .pkl, a viscoin run folder (G/, G_ema/, D/) or a G folder
    architecture: Literal["config", "source"] = "config"  # build the networks from this config or from the source's
    augment_p: bool = True                          # start ADA at the source's p (when it has one)


@dataclass(frozen=True)
class SamplesConfig(DictConfig):
    """Image grids of G_ema at fixed seeds, written to ``samples/``."""

    every_kimg: float = 200.0                       # a grid every N kimg (also at the start and the end; 0: only those)
    grid: int = 32                                  # images per grid: seeds 0 .. grid-1 (classes cycle if conditional)


@dataclass(frozen=True)
class FidConfig(DictConfig):
    """FID of G_ema against the training images (needs torchmetrics + torch-fidelity and its Inception weights)."""

    every_kimg: float = 0.0                         # every N kimg and at the end (0: off)
    num_images: int = 10000                         # generated images (and at most this many real ones)


@dataclass(frozen=True)
class GeneratorTrainConfig(DictConfig):
    """Everything `viscoin generator train` needs. Fields set to "auto" come from `cfg_preset`.

    The networks' `img_resolution` is `data.resolution` and their `c_dim` is the number of
    classes when `conditional` (0 otherwise); the values in `generator` / `discriminator` are replaced.
    `--resume` may change the training length (`kimg`: nothing in the recipe depends on it, so a
    run extended from 100 to 300 kimg trains exactly as one started with 300) and the cadence of
    samples, FID and progress lines.
    """

    RESUME_MAY_CHANGE: ClassVar[tuple[str, ...]] = (
        "kimg", "tick_kimg", "samples.every_kimg", "samples.grid", "fid.every_kimg", "fid.num_images")

    data: DataConfig = field(default_factory=lambda: DataConfig(kind="folder"))
    generator: GeneratorConfig = field(default_factory=lambda: GeneratorConfig(
        mapping=MappingConfig(num_layers=2), synthesis=SynthesisConfig(num_fp16_res=4, conv_clamp=256)))
    discriminator: DiscriminatorConfig = field(default_factory=lambda: DiscriminatorConfig(
        num_fp16_res=4, conv_clamp=256))
    augment: AugmentConfig = field(default_factory=AugmentConfig)
    loss: GanLossConfig = field(default_factory=GanLossConfig)
    optim: GanOptimConfig = field(default_factory=GanOptimConfig)
    ema: EmaConfig = field(default_factory=EmaConfig)
    init: InitConfig = field(default_factory=InitConfig)
    samples: SamplesConfig = field(default_factory=SamplesConfig)
    fid: FidConfig = field(default_factory=FidConfig)
    cfg_preset: Literal["auto", "none"] = "auto"    # auto: the official 'auto' formulas (§2.5) fill the "auto" fields
    fmaps: float | None | Auto = AUTO               # G and D channel_base = fmaps * 32768 (auto: 1 from 512 px,
                                                    # else 0.5; null: keep the sections' channel_base)
    batch_size: int | Auto = AUTO                   # images per iteration over all devices (auto: §2.5)
    kimg: float = 25000.0                           # training length in thousands of real images shown
    conditional: bool = False                       # class-conditional G and D (labels from the dataset's classes)
    mirror: bool = False                            # add x-flipped copies of the training images (official --mirror)
    class_groups: bool = False                      # conditional: each of D's minibatch-stddev groups holds one class
                                                    # (reals and fakes), so D sees within-class collapse (not official);
                                                    # with transition_kimg, from its end on (mixed groups before)
    transition_kimg: tuple[float, float] = (0.0, 0.0)  # conditional: [start, end] of transitional conditioning:
                                                    # labels blended from uniform to one-hot (`blend_labels`; not
                                                    # official); equal values: off
    fp16_blocks: bool | Auto = AUTO                 # float16 in the num_fp16_res highest-resolution blocks of G and D,
                                                    # as the official training (auto: on CUDA); run.precision: 32-true
    tick_kimg: float = 4.0                          # print a status line every N kimg
    run: RunConfig = field(default_factory=lambda: RunConfig(out_dir="runs/generator"))

    def __post_init__(self) -> None:
        if self.batch_size != AUTO and self.batch_size < 1:
            raise ConfigError(f"batch_size: expected >= 1 or 'auto', got {self.batch_size}")
        if self.kimg < 0 or self.tick_kimg <= 0:
            raise ConfigError("kimg: expected >= 0; tick_kimg: expected > 0")
        if self.fmaps not in (None, AUTO) and not self.fmaps > 0:
            raise ConfigError(f"fmaps: expected > 0, null or 'auto', got {self.fmaps}")
        if self.class_groups and not self.conditional:
            raise ConfigError("class_groups: needs conditional: true (it groups the batch by class)")
        start, end = self.transition_kimg
        if not 0 <= start <= end:
            raise ConfigError(f"transition_kimg: expected [start, end] with 0 <= start <= end, got {list(self.transition_kimg)}")
        if end > 0 and not self.conditional:
            raise ConfigError("transition_kimg: needs conditional: true (it blends the class labels)")


# ----------------------------------------------------------------------------------------------
# The 'auto' configuration (§2.5)


def auto_settings(resolution: int, gpus: int) -> dict[str, Any]:
    """The official 'auto' cfg for a dataset resolution and a number of GPUs."""
    batch = max(min(gpus * min(4096 // resolution, 32), 64), gpus)
    return {
        "batch_size": batch,
        "mbstd": min(batch // gpus, 4),
        "fmaps": 1.0 if resolution >= 512 else 0.5,
        "lr": 0.002 if resolution >= 1024 else 0.0025,
        "r1_gamma": 0.0002 * resolution**2 / batch,
        "ema_kimg": batch * 10 / 32,
        "ema_rampup": 0.05,
        "map": 2,
    }


def resolve_config(
    cfg: GeneratorTrainConfig,
    num_classes: int,                               # classes of the training set
    source: InitSource | None = None,               # the fine-tuning source, when architecture=source
) -> GeneratorTrainConfig:
    """The config with no "auto" left: preset formulas, resolution and labels written into the networks."""
    gpus = cfg.run.devices * cfg.run.num_nodes
    fine_tune = bool(cfg.init.source)
    if cfg.run.precision not in ("auto", "32-true"):
        raise ConfigError(f"run.precision={cfg.run.precision}: the StyleGAN2 networks run their own float16 blocks "
                          "(fp16_blocks, as the official training); use run.precision=32-true (or auto)")
    G, D, data = cfg.generator, cfg.discriminator, cfg.data
    from_source = cfg.init.architecture == "source" and source is not None
    if from_source:
        G = source.G_ema.config
        data = dataclasses.replace(data, resolution=G.img_resolution)
    res = data.resolution
    preset = auto_settings(res, gpus) if cfg.cfg_preset == AUTO else {}

    def pick(value: Any, key: str, name: str) -> Any:
        if value != AUTO:
            return value
        if key not in preset:
            raise ConfigError(f"{name}: 'auto' needs cfg_preset=auto; give a value with cfg_preset=none")
        return preset[key]

    batch = pick(cfg.batch_size, "batch_size", "batch_size")
    rampup = cfg.ema.rampup
    if rampup == AUTO:
        rampup = None if fine_tune else preset.get("ema_rampup")
    ada_kimg = cfg.augment.kimg if cfg.augment.kimg != AUTO else (100.0 if fine_tune else 500.0)
    c_dim = num_classes if cfg.conditional else 0

    fmaps = cfg.fmaps if cfg.fmaps != AUTO else preset.get("fmaps")
    base = int(fmaps * 32768) if fmaps is not None else None
    if not from_source:
        syn = dataclasses.replace(G.synthesis, channel_base=base) if base else G.synthesis
        G = dataclasses.replace(G, img_resolution=res, c_dim=c_dim, img_channels=3, synthesis=syn)
    if from_source and source.D is not None:
        D = source.D.config
    else:
        D = dataclasses.replace(D, img_resolution=res, c_dim=c_dim, img_channels=3, channel_base=base or D.channel_base)
    if from_source:
        if G.c_dim != c_dim or D.c_dim != c_dim:
            raise ConfigError(f"init.source {source.path}: its networks have c_dim {G.c_dim}/{D.c_dim}, but the "
                              f"data gives {c_dim} (conditional={cfg.conditional}, {num_classes} classes)")
        if D.img_resolution != res:
            raise ConfigError(f"init.source {source.path}: G is {res} px but D is {D.img_resolution} px")
    batch_gpu = batch // gpus
    if batch % gpus != 0:
        raise ConfigError(f"batch_size={batch} is not divisible by the {gpus} devices")
    group = min(D.epilogue.mbstd_group_size or batch_gpu, batch_gpu)
    if batch_gpu % group != 0:
        raise ConfigError(f"batch_size: {batch_gpu} images per device is not a multiple of the minibatch-stddev "
                          f"group {group} (discriminator.epilogue.mbstd_group_size)")
    if cfg.class_groups and group < 2:
        raise ConfigError("class_groups: the minibatch-stddev group (discriminator.epilogue.mbstd_group_size, at most "
                          f"the {batch_gpu} images per device) is {group}; it must hold at least 2 images")
    return dataclasses.replace(
        cfg, data=data, generator=G, discriminator=D, cfg_preset="none", fmaps=None, batch_size=batch,
        run=dataclasses.replace(cfg.run, precision="32-true"),
        loss=dataclasses.replace(cfg.loss, r1_gamma=pick(cfg.loss.r1_gamma, "r1_gamma", "loss.r1_gamma")),
        optim=dataclasses.replace(cfg.optim, lr=pick(cfg.optim.lr, "lr", "optim.lr")),
        ema=dataclasses.replace(cfg.ema, kimg=pick(cfg.ema.kimg, "ema_kimg", "ema.kimg"), rampup=rampup),
        augment=dataclasses.replace(cfg.augment, kimg=ada_kimg),
    )


# ----------------------------------------------------------------------------------------------
# Data


class GanImages(torch.utils.data.Dataset):
    """The training images as the GAN sees them: whole images, optionally with x-flipped copies
    (`mirror`), repeated so that one epoch holds at least `min_len` images (tiny datasets)."""

    def __init__(self, images: ImageDataset, mirror: bool, min_len: int) -> None:
        self.images = images
        self.mirror = mirror
        self.distinct = len(images) * (2 if mirror else 1)
        self.length = self.distinct * max(1, math.ceil(min_len / self.distinct))

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, key: int | tuple[int, int]) -> dict[str, Any]:
        index = key[0] if isinstance(key, (tuple, list)) else key
        i = index % self.distinct
        item = self.images[i % len(self.images)]
        image = item["image"].flip(2) if i >= len(self.images) else item["image"]
        return {"image": image, "label": item["label"]}


class ClassGroupedImages(torch.utils.data.Dataset):
    """`GanImages` in groups of `group` images of one class: item i is a dict of ``image`` [group, 3, R, R]
    and ``label`` [group] (for `class_groups`).

    Each class's images (with their mirrored copies) are put in a seeded random order and cut into
    groups, the last one filled from the start of that order; a class with fewer images than a group
    repeats them. The groups are fixed; the loader shuffles their order every epoch. Repeated (as
    `GanImages`) so that an epoch holds at least `min_items` groups.
    """

    def __init__(self, images: GanImages, group: int, seed: int, min_items: int) -> None:
        if group < 1:
            raise ValueError(f"ClassGroupedImages: group must be >= 1, got {group}")
        self.images, self.group = images, group
        base = images.images
        labels = torch.tensor([y for _, y in base.samples])
        labels = labels.repeat(images.distinct // len(base))              # [distinct]: mirrored copies too
        gen = torch.Generator().manual_seed(seed)
        groups: list[list[int]] = []
        for c in labels.unique().tolist():
            members = (labels == c).nonzero()[:, 0]
            members = members[torch.randperm(len(members), generator=gen)].tolist()
            count = math.ceil(len(members) / group)
            cycled = members * math.ceil(count * group / len(members))
            groups.extend(cycled[k * group : (k + 1) * group] for k in range(count))
        self.groups = groups
        self.length = len(groups) * max(1, math.ceil(min_items / len(groups)))

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, key: int | tuple[int, int]) -> dict[str, Any]:
        index = key[0] if isinstance(key, (tuple, list)) else key
        items = [self.images[i] for i in self.groups[index % len(self.groups)]]
        return {"image": torch.stack([it["image"] for it in items]),
                "label": torch.tensor([int(it["label"]) for it in items])}


def ungroup(batch: torch.Tensor) -> torch.Tensor:
    """[B, G, ...] (B groups of G) -> [G·B, ...] ordered so that D's minibatch-stddev groups, which are strided
    (sample i is in group i mod B, see `MinibatchStdLayer`), are exactly the B groups."""
    return batch.transpose(0, 1).reshape(-1, *batch.shape[2:])


def transition_weight(kimg: float, start: float, end: float) -> float:
    """How much of the class label G and D see at `kimg` under transitional conditioning: 0 until `start`,
    rising linearly to 1 at `end` (1 throughout when start == end, i.e. off)."""
    if end <= start:
        return 1.0
    return min(max((kimg - start) / (end - start), 0.0), 1.0)


def blend_labels(c: torch.Tensor, weight: float) -> torch.Tensor:
    """Transitional conditioning by label blending: ``weight * c + (1 - weight) / C`` for one-hot labels
    c [N, C].

    A variant of Shahbazi et al. (ICLR 2023, "Collapse by conditioning"), who add the class embedding to
    an unconditional G and D with a weight rising from 0 to 1. Blending the one-hot label towards the
    uniform vector does the same through the networks' own class inputs: at weight 0 every image gets
    the mean class embedding, so G and D are unconditional, meant to let G learn the data's variety
    (pose, size, facing) before the classes split it; at weight 1 the label is the one-hot one, and the
    networks keep the official architecture and format.
    """
    if weight >= 1.0:
        return c
    return c * weight + (1.0 - weight) / c.shape[1]


def mode_seeking_penalty(
    fake: torch.Tensor,                 # [N, 3, R, R] generated images
    z: torch.Tensor,                    # [N, z_dim] their latents
    c: torch.Tensor | None,             # [N, C] their labels, or None (unconditional)
    eps: float = 1e-5,
) -> torch.Tensor | None:
    """Mode seeking (after Mao et al., CVPR 2019, MSGAN): ``1 / (d(G(z1), G(z2)) / d(z1, z2) + eps)``, the
    mean over the pairs (i, i + N/2) of the batch with the same label; None when no pair has one.

    Image distances are mean absolute differences of `pixel_features` (16x16 pixels less each image's
    background colour), so a G cannot lower the term by varying only a uniform tint: it has to move, size
    or shape what it draws differently for different z. With `class_groups` every pair shares a class.
    """
    assert fake.ndim == 4 and z.ndim == 2 and len(fake) == len(z), (fake.shape, z.shape)
    half = len(z) // 2
    if half == 0:
        return None
    same = torch.ones(half, dtype=torch.bool, device=z.device)
    if c is not None:
        same = (c[:half] == c[half : 2 * half]).all(dim=1)
    if not bool(same.any()):
        return None
    feats = pixel_features(fake)
    d_img = (feats[:half] - feats[half : 2 * half]).abs().mean(dim=1)
    d_z = (z[:half] - z[half : 2 * half]).abs().mean(dim=1)
    return (1.0 / (d_img / d_z + eps))[same].mean()


# ----------------------------------------------------------------------------------------------
# Networks, optimisers, G_ema, fine-tuning sources


class MixingGenerator(nn.Module):
    """G's training forward (§2.3): mapping with style mixing, then synthesis; returns (images, ws).

    One module so that DDP sees one forward per backward; the parameters are G's.
    """

    def __init__(self, G: Generator, style_mixing_prob: float, fp16: bool = False) -> None:
        super().__init__()
        self.G = G
        self.style_mixing_prob = style_mixing_prob
        self.fp16 = fp16

    def forward(self, z: torch.Tensor, c: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
        ws = self.G.mapping(z, c)                                    # updates w_avg in training mode
        if self.style_mixing_prob > 0:
            num_ws = ws.shape[1]
            cutoff = int(torch.randint(1, num_ws, ()))
            if float(torch.rand(())) >= self.style_mixing_prob:
                cutoff = num_ws                                      # no mixing this time
            ws[:, cutoff:] = self.G.mapping(torch.randn_like(z), c, update_w_avg=False)[:, cutoff:]
        return self.G.synthesis(ws, fp16=self.fp16), ws


def lazy_adam(params: Any, cfg: GanOptimConfig, reg_interval: int) -> torch.optim.Adam:
    """Adam with lr and betas scaled for a regulariser run every `reg_interval` iterations (§2.2)."""
    c = reg_interval / (reg_interval + 1)
    assert cfg.lr != AUTO
    return torch.optim.Adam(params, lr=cfg.lr * c, betas=(cfg.betas[0] ** c, cfg.betas[1] ** c), eps=cfg.eps)


def ema_beta(cur_nimg: int, batch_size: int, ema_kimg: float, rampup: float | None) -> float:
    """G_ema decay of one iteration (§2.4); 0 on the first iteration with a ramp-up."""
    ema_nimg = ema_kimg * 1000
    if rampup is not None:
        ema_nimg = min(ema_nimg, cur_nimg * rampup)
    return 0.5 ** (batch_size / max(ema_nimg, 1e-8))


@torch.no_grad()
def update_ema(G_ema: nn.Module, G: nn.Module, beta: float) -> None:
    """p_ema <- p + beta (p_ema - p) for every parameter; buffers (w_avg included) copied from G."""
    for p_ema, p in zip(G_ema.parameters(), G.parameters()):
        p_ema.copy_(p.detach().lerp(p_ema, beta))
    for b_ema, b in zip(G_ema.buffers(), G.buffers()):
        b_ema.copy_(b)


@dataclass
class InitSource:
    """Networks to fine-tune from, read from an official pickle or one of our folders."""

    path: str
    G: nn.Module | None
    G_ema: nn.Module
    D: nn.Module | None
    augment_p: float | None


def read_init_source(path: str) -> InitSource:
    """An official ``.pkl``, a folder with ``G_ema/`` (+ ``G/``, ``D/``), or a single generator folder
    (or a shipped one's name, ``viscoin:birds/generator``)."""
    p = resolve(path)
    if p.suffix.lower() in (".pkl", ".pickle"):
        nets = load_official(p)
        assert nets.G_ema is not None
        return InitSource(str(p), nets.G, nets.G_ema, nets.D, nets.augment_p)
    if (p / "G_ema" / "config.json").is_file():
        found = {k: load_network(p / k) for k in ("G", "G_ema", "D") if (p / k / "config.json").is_file()}
        extra = read_checkpoint_info(p / ("D" if "D" in found else "G_ema")).get("extra", {})
        return InitSource(str(p), found.get("G"), found["G_ema"], found.get("D"), extra.get("augment_p"))
    if (p / "config.json").is_file():
        info = read_checkpoint_info(p)
        if info["network"] != "generator":
            raise ConfigError(f"init.source {p}: holds a {info['network']}; expected a generator or a run folder")
        G = load_network(p)
        return InitSource(str(p), G, G, None, info.get("extra", {}).get("augment_p"))
    raise ConfigError(f"init.source {p}: expected an official .pkl, a folder with G_ema/ (a viscoin generator "
                      "run) or a generator folder (config.json + weights.safetensors)")


def init_source_of_run(cfg: GeneratorTrainConfig, resume: bool) -> InitSource | None:
    """The fine-tuning source a run reads: none when it resumes from a checkpoint and builds its networks
    from the config (the weights then come from the checkpoint, so a source moved or deleted since the
    start does not stop the run); with ``init.architecture=source`` the networks' shapes come from the
    source, which is then needed on resume too."""
    if not cfg.init.source:
        return None
    resuming = resume and latest_checkpoint(Path(cfg.run.out_dir) / "checkpoints") is not None
    if resuming and cfg.init.architecture == "config":
        return None
    try:
        return read_init_source(cfg.init.source)
    except (OSError, ConfigError) as exc:
        if resuming:
            raise ConfigError(f"init.source {cfg.init.source}: cannot be read ({exc}); --resume still needs it "
                              "because init.architecture=source builds the networks from it") from exc
        raise


@torch.no_grad()
def copy_by_name(dst: nn.Module, src: nn.Module, where: str) -> list[str]:
    """Copy each parameter and buffer of `src` whose name exists in `dst` (§2.6); returns the names left alone."""
    own, theirs = dst.state_dict(), src.state_dict()
    bad = [f"{k} {list(own[k].shape)} vs {list(theirs[k].shape)}" for k in own
           if k in theirs and own[k].shape != theirs[k].shape]
    if bad:
        raise ConfigError(f"init.source {where}: tensors of different shapes ({len(bad)}): {bad[:4]}; build the "
                          "networks like the source (init.architecture=source) or match the config to it")
    for k, t in own.items():
        if k in theirs:
            t.copy_(theirs[k])
    return [k for k in own if k not in theirs]


# ----------------------------------------------------------------------------------------------
# Losses (§2.3). D(.) always sees augmented images.


def run_D(D: nn.Module, pipe: AugmentPipe | None, img: torch.Tensor, c: torch.Tensor | None,
          fp16: bool = False) -> torch.Tensor:
    """D's float32 logits [N, 1] on the augmented images."""
    if pipe is not None:
        img = pipe(img)
    return D(img, c, fp16=fp16).float()


def r1_penalty(D: nn.Module, pipe: AugmentPipe | None, real: torch.Tensor, c: torch.Tensor | None,
               fp16: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-sample squared norm of dD(aug(x))/dx at the un-augmented reals x, and the logits."""
    real = real.detach().requires_grad_(True)
    logits = run_D(D, pipe, real, c, fp16)
    (grad,) = torch.autograd.grad(logits.sum(), real, create_graph=True)
    return grad.square().sum(dim=[1, 2, 3]), logits


def path_length_penalty(img: torch.Tensor, ws: torch.Tensor, pl_mean: torch.Tensor,
                        decay: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-sample (|J_w^T y| - a)^2 with y ~ N(0, 1) / sqrt(HW), and the updated running mean a."""
    y = torch.randn_like(img) / math.sqrt(img.shape[2] * img.shape[3])
    (grad,) = torch.autograd.grad((img * y).sum(), ws, create_graph=True)
    lengths = grad.square().sum(dim=2).mean(dim=1).sqrt()
    new_mean = pl_mean.lerp(lengths.mean(), decay)                   # keeps its graph, as in §2.3
    return (lengths - new_mean).square(), new_mean.detach()


def finish_step(opt: torch.optim.Optimizer, module: nn.Module) -> None:
    """NaN gradients -> 0, clamp to +-1e5, then the optimiser step (§2.2)."""
    for p in module.parameters():
        if p.grad is not None:
            torch.nan_to_num(p.grad, nan=0.0, posinf=1e5, neginf=-1e5, out=p.grad).clamp_(-1e5, 1e5)
    opt.step()


# ----------------------------------------------------------------------------------------------
# Samples and FID


@torch.no_grad()
def fake_grid(G: Generator, num: int) -> np.ndarray:
    """uint8 grid of G at seeds 0..num-1 (const noise); conditional: seed s gets class s mod c_dim."""
    if G.c_dim == 0:
        images = sample(G, list(range(num)))[0]
    else:
        images = torch.cat([sample(G, [s], class_idx=s % G.c_dim)[0] for s in range(num)])
    return image_grid(to_uint8(images))


class Fid:
    """FID of a generator against the training images, with `viscoin.utils.fid` (Inception features).

    `Fid.create` returns None (after one notice) when the standard Inception weights are not on
    this machine (torch hub cache) or torchmetrics is missing: nothing is ever downloaded.
    """

    def __init__(self, features: torch.nn.Module, num_images: int) -> None:
        self.features = features
        self.num_images = num_images
        self.real: torch.Tensor | None = None

    @staticmethod
    def create(num_images: int, device: torch.device, printer: Any = print) -> Fid | None:
        try:
            return Fid(InceptionFeatures().to(device).eval(), num_images)
        except (ImportError, FileNotFoundError) as exc:
            printer(f"notice: FID skipped, no Inception feature extractor available: {str(exc).splitlines()[0]}")
            return None

    @torch.no_grad()
    def __call__(self, G: Generator, reals: torch.utils.data.Dataset, c_pool: torch.Tensor | None) -> float:
        dev = G.device
        if self.real is None:
            n = min(len(reals), self.num_images)
            self.real = torch.cat([
                self.features(torch.stack([reals[i]["image"] for i in range(start, min(start + 64, n))]).to(dev)).cpu()
                for start in range(0, n, 64)
            ])
        gen = torch.Generator(device="cpu").manual_seed(123)
        fake = []
        for start in range(0, self.num_images, 64):
            n = min(64, self.num_images - start)
            z = torch.randn(n, G.z_dim, generator=gen).to(dev)
            c = c_pool[torch.randint(len(c_pool), (n,), generator=gen)].to(dev) if c_pool is not None else None
            fake.append(self.features(G.synthesis(G.map(z, c), noise_mode="const")).cpu())
        return fid_from_features(self.real, torch.cat(fake))


# ----------------------------------------------------------------------------------------------
# Training


def train_generator(
    cfg: GeneratorTrainConfig,
    resume: bool = False,        # continue from the last checkpoint in run.out_dir
    overwrite: bool = False,     # replace the run in run.out_dir (refused otherwise)
) -> dict[str, Any]:
    """Train (or fine-tune) G and D; returns the final metrics. See the module docstring for outputs."""
    source = init_source_of_run(cfg, resume)
    num_classes = build_dataset(cfg.data, "train", augment=False).num_classes
    cfg = resolve_config(cfg, num_classes, source)
    train_set = build_dataset(cfg.data, "train", augment=False)

    runner = Runner(cfg.run, cfg, overwrite=overwrite)
    dev, world = runner.device, runner.world_size
    fp16 = cfg.fp16_blocks if cfg.fp16_blocks != AUTO else dev.type == "cuda"
    if dev.type == "cuda":  # as the official training: cuDNN autotuning, no TF32 (§2.5)
        torch.backends.cudnn.benchmark = not cfg.run.deterministic
        torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False
    batch_size = int(cfg.batch_size)
    batch_gpu = batch_size // world
    dataset: torch.utils.data.Dataset = GanImages(train_set, cfg.mirror, min_len=batch_size)
    group = min(cfg.discriminator.epilogue.mbstd_group_size or batch_gpu, batch_gpu)   # D's minibatch-stddev group
    per_load = batch_gpu                      # loader items per iteration: images, or groups of one class
    if cfg.class_groups:
        dataset = ClassGroupedImages(dataset, group, cfg.run.seed, min_items=batch_size // group)
        per_load = batch_gpu // group
    steps_per_epoch = runner.steps_per_epoch(len(dataset), per_load)
    total_iters = math.ceil(cfg.kimg * 1000 / batch_size)
    c_dim = cfg.generator.c_dim
    c_pool = F.one_hot(torch.tensor([y for _, y in train_set.samples]), c_dim).float() if c_dim else None

    # Networks. G_ema and the augmentation pipe are not trained by an optimiser.
    G, D = Generator(cfg.generator).train(), Discriminator(cfg.discriminator).train()
    G_ema = copy.deepcopy(G).eval().requires_grad_(False)
    pipe = AugmentPipe(cfg.augment) if cfg.augment.mode != "noaug" else None
    ada = None
    if pipe is not None:
        ada = AdaController(pipe, batch_size, cfg.augment.target if cfg.augment.mode == "ada" else None,
                            cfg.augment.interval, float(cfg.augment.kimg))
    pl_mean = torch.zeros([], device=dev)
    cur_nimg, batch_idx, rt, fid_history = 0, 0, None, []

    resumed = runner.resume_state(resume)
    if resumed is not None:
        _, state = resumed
        G.load_state_dict(state["G"])
        D.load_state_dict(state["D"])
        G_ema.load_state_dict(state["G_ema"])
        if pipe is not None and ada is not None:
            pipe.load_state_dict(state["augment"])
            ada.load_state_dict(state["ada"])
        pl_mean = state["pl_mean"].to(dev)
        cur_nimg, batch_idx, rt, fid_history = state["cur_nimg"], state["batch_idx"], state["rt"], state["fid"]
    elif source is not None:
        kept = copy_by_name(G, source.G if source.G is not None else source.G_ema, source.path)
        copy_by_name(G_ema, source.G_ema, source.path)
        kept_d = copy_by_name(D, source.D, source.path) if source.D is not None else ["(no D in the source)"]
        if pipe is not None and cfg.augment.mode == "ada" and cfg.init.augment_p and source.augment_p is not None:
            pipe.p.fill_(source.augment_p)
        runner.print(f"fine-tuning from {source.path}: G keeps {len(kept)} tensors of its own init, D {len(kept_d)}"
                     + (f"; augment p starts at {float(pipe.p):.4f}" if pipe is not None else ""))

    G_train = MixingGenerator(G, cfg.loss.style_mixing_prob, fp16)
    opt_G = lazy_adam(G.parameters(), cfg.optim, cfg.loss.G_reg_interval)
    opt_D = lazy_adam(D.parameters(), cfg.optim, cfg.loss.D_reg_interval)
    G_ddp, opt_G = runner.setup(G_train, opt_G)      # DDP / precision for the module being trained;
    D_ddp, opt_D = runner.setup(D, opt_D)            # G and D are also called directly when frozen
    if resumed is not None:
        opt_G.load_state_dict(resumed[1]["opt_G"])
        opt_D.load_state_dict(resumed[1]["opt_D"])
    elif source is None:
        G_ema.load_state_dict(G.state_dict())         # after setup: the same init on every rank
    G_ema = runner.to_device(G_ema)
    if pipe is not None:
        pipe.to(dev)
    all_reduce = lambda t: runner.fabric.all_reduce(t, reduce_op="sum")  # noqa: E731
    gamma, pl_weight = float(cfg.loss.r1_gamma), cfg.loss.pl_weight
    G_reg, D_reg = cfg.loss.G_reg_interval, cfg.loss.D_reg_interval

    def class_weight() -> float:                  # transitional conditioning: the share of the label G and D see
        return transition_weight(cur_nimg / 1000, *cfg.transition_kimg)

    def grouped_now() -> bool:                    # class_groups hold once the labels are one-hot: while G and D
        return cfg.class_groups and class_weight() >= 1.0   # see blended labels, groups of one class would ask an
                                                    # (in part) unconditional G for one class's low variety

    def latents(n: int) -> tuple[torch.Tensor, torch.Tensor | None]:
        z = torch.randn(n, G.z_dim, device=dev)
        if c_pool is None:
            return z, None
        if grouped_now() and n % group == 0:      # one class per minibatch-stddev group (strided, see `ungroup`)
            c = c_pool[torch.randint(len(c_pool), (n // group,))].repeat(group, 1)
        else:
            c = c_pool[torch.randint(len(c_pool), (n,))]
        return z, blend_labels(c.to(dev), class_weight())

    def checkpoint() -> None:
        runner.save_checkpoint(batch_idx, {
            "G": G.state_dict(), "D": D.state_dict(), "G_ema": G_ema.state_dict(),
            "opt_G": opt_G.state_dict(), "opt_D": opt_D.state_dict(),
            "augment": pipe.state_dict() if pipe is not None else {},
            "ada": ada.state_dict(all_reduce) if ada is not None else {},
            "pl_mean": pl_mean, "cur_nimg": cur_nimg, "batch_idx": batch_idx, "rt": rt, "fid": fid_history,
        })

    fid = None
    if cfg.fid.every_kimg > 0 and runner.is_main:
        fid = Fid.create(cfg.fid.num_images, dev, runner.print)

    def snapshot(grid: bool, with_fid: bool) -> None:
        if not runner.is_main:
            return
        if grid:
            name = f"fakes{cur_nimg / 1000:010.3f}.png"           # kimg, e.g. fakes000200.000.png
            save_image(runner.out_dir / "samples" / name, fake_grid(G_ema, cfg.samples.grid))
        if fid is not None and with_fid:
            value = fid(G_ema, train_set, c_pool)
            fid_history.append({"kimg": cur_nimg / 1000, "fid": value})
            runner.log({"fid": value}, batch_idx)
            runner.print(f"kimg {cur_nimg / 1000:.1f}: FID {value:.2f} ({cfg.fid.num_images} images)")

    def next_multiple(every_kimg: float) -> float:
        every = every_kimg * 1000
        return (math.floor(cur_nimg / every) + 1) * every if every > 0 else math.inf

    samples_dir = runner.out_dir / "samples"
    if runner.is_main and not (samples_dir / "reals.png").exists():
        reals = torch.stack([train_set[i]["image"] for i in range(min(cfg.samples.grid, len(train_set)))])
        save_image(samples_dir / "reals.png", image_grid(to_uint8(reals)))
    next_snap, next_fid, next_tick = next_multiple(cfg.samples.every_kimg), next_multiple(cfg.fid.every_kimg), 0.0
    if batch_idx == 0:
        snapshot(grid=True, with_fid=False)

    window: dict[str, list[torch.Tensor]] = {}     # values since the last log line
    shown: dict[str, float] = {}                  # latest logged value of each (the reg terms are not in every window)
    def note(name: str, value: torch.Tensor) -> None:  # noqa: E306
        window.setdefault(name, []).append(value.detach().float().mean())

    bar = runner.progress(total_iters, initial=batch_idx, desc="train")
    t_last, nimg_last, t_start = time.time(), cur_nimg, time.time()
    while batch_idx < total_iters:
        epoch, in_epoch = divmod(batch_idx, steps_per_epoch)
        for batch in runner.loader(dataset, per_load, epoch, start=in_epoch * per_load):
            runner.seed_step(batch_idx)
            real, labels = batch["image"], batch["label"]
            if cfg.class_groups:                  # [B, G, ...] groups of one class -> D's strided groups
                real, labels = ungroup(real), ungroup(labels)
                if not grouped_now():             # during transitional conditioning: groups of mixed classes
                    order = torch.randperm(len(labels)).to(labels.device)
                    real, labels = real[order], labels[order]
            real_c = blend_labels(F.one_hot(labels, c_dim).float(), class_weight()) if c_dim else None

            # Gmain: non-saturating loss on fresh fakes; D frozen, gradients flow through it and the pipe.
            G.requires_grad_(True)
            D.requires_grad_(False)
            opt_G.zero_grad(set_to_none=True)
            z, c = latents(batch_gpu)
            fake, _ = G_ddp(z, c)
            fake_logits = run_D(D, pipe, fake, c, fp16)
            loss_G = F.softplus(-fake_logits).mean()
            note("loss/G", loss_G)
            seeking = mode_seeking_penalty(fake, z, c) if cfg.loss.mode_seeking > 0 else None
            if seeking is not None:
                note("loss/mode_seeking", seeking)
                loss_G = loss_G + cfg.loss.mode_seeking * seeking
            runner.fabric.backward(loss_G)
            finish_step(opt_G, G)

            # Greg: lazy path-length regularisation on a smaller batch, x G_reg_interval.
            if pl_weight > 0 and batch_idx % G_reg == 0:
                opt_G.zero_grad(set_to_none=True)
                z, c = latents(max(batch_gpu // cfg.loss.pl_batch_shrink, 1))
                img, ws = G_ddp(z, c)
                penalty, pl_mean = path_length_penalty(img, ws, pl_mean, cfg.loss.pl_decay)
                # img[:, 0, 0, 0] * 0 keeps every G parameter in the graph (DDP expects all of them).
                runner.fabric.backward((img[:, 0, 0, 0] * 0 + penalty * pl_weight).mean() * G_reg)
                finish_step(opt_G, G)
                note("loss/pl", penalty)

            # Dmain: softplus(D(fake)) + softplus(-D(real)); G frozen.
            G.requires_grad_(False)
            D.requires_grad_(True)
            opt_D.zero_grad(set_to_none=True)
            z, c = latents(batch_gpu)
            with runner.fabric.no_backward_sync(D_ddp, enabled=world > 1):  # two forwards, one gradient sync
                with torch.no_grad():
                    fake, _ = G_train(z, c)
                fake_logits = run_D(D_ddp, pipe, fake, c, fp16=fp16)
                runner.fabric.backward(F.softplus(fake_logits).mean())
            real_logits = run_D(D_ddp, pipe, real, real_c, fp16=fp16)
            runner.fabric.backward(F.softplus(-real_logits).mean())
            finish_step(opt_D, D)
            if ada is not None:
                ada.observe(real_logits)
            note("loss/D", F.softplus(fake_logits) + F.softplus(-real_logits))
            note("scores/fake", fake_logits)
            note("scores/real", real_logits)

            # Dreg: lazy R1 on the un-augmented reals, through the augmentation, x D_reg_interval.
            if gamma > 0 and batch_idx % D_reg == 0:
                opt_D.zero_grad(set_to_none=True)
                penalty, logits = r1_penalty(D_ddp, pipe, real, real_c, fp16=fp16)
                runner.fabric.backward((logits[:, 0] * 0 + penalty * (gamma / 2)).mean() * D_reg)
                finish_step(opt_D, D)
                if ada is not None:
                    ada.observe(logits)
                note("loss/r1", penalty)

            # G_ema, counters, ADA (§2.4, §3.4).
            update_ema(G_ema, G, ema_beta(cur_nimg, batch_size, float(cfg.ema.kimg), cfg.ema.rampup))
            cur_nimg += batch_size
            batch_idx += 1
            if ada is not None and batch_idx % cfg.augment.interval == 0:
                rt = ada.update(all_reduce)
            bar.update(1)
            done = batch_idx >= total_iters

            if batch_idx % cfg.run.log_every == 0 or done:
                now = time.time()
                speed = (cur_nimg - nimg_last) / max(now - t_last, 1e-9)
                t_last, nimg_last = now, cur_nimg
                metrics = {k: torch.stack(v).mean().item() for k, v in window.items()}
                window.clear()
                metrics.update({"kimg": cur_nimg / 1000, "speed/img_per_s": speed, "pl_mean": float(pl_mean)})
                if pipe is not None:
                    metrics["augment/p"] = float(pipe.p)
                if rt is not None:
                    metrics["augment/rt"] = rt
                if cfg.transition_kimg[1] > 0:
                    metrics["transition/weight"] = class_weight()
                runner.log(metrics, batch_idx)
                shown.update(metrics)
                bar.set_postfix(kimg=f"{cur_nimg / 1000:.1f}", G=f"{shown['loss/G']:.3f}", D=f"{shown['loss/D']:.3f}",
                                p=f"{shown.get('augment/p', 0):.3f}")
                if cur_nimg >= next_tick or done:
                    next_tick = next_multiple(cfg.tick_kimg)
                    runner.print(f"kimg {cur_nimg / 1000:8.1f}  loss G {shown['loss/G']:.3f}  D {shown['loss/D']:.3f}  "
                                 f"r1 {shown.get('loss/r1', 0):.4f}  pl {shown.get('loss/pl', 0):.4f}  "
                                 f"p {shown.get('augment/p', 0):.3f}  rt {rt if rt is not None else 0:.3f}  "
                                 f"{1000 / max(speed, 1e-9):.1f} s/kimg")
            if not done and (cur_nimg >= next_snap or cur_nimg >= next_fid):
                snapshot(grid=cur_nimg >= next_snap, with_fid=cur_nimg >= next_fid)
                next_snap, next_fid = next_multiple(cfg.samples.every_kimg), next_multiple(cfg.fid.every_kimg)
            if batch_idx % cfg.run.ckpt_every == 0 or done:
                checkpoint()
            if done:
                break
    bar.close()

    # Final outputs.
    snapshot(grid=True, with_fid=True)
    p_final = float(pipe.p) if pipe is not None else 0.0
    out = {"kimg": cur_nimg / 1000, "iterations": batch_idx, "augment_p": p_final, "augment_rt": rt,
           "pl_mean": float(pl_mean), "fid": fid_history, "seconds": time.time() - t_start,
           "images": len(train_set), "classes": train_set.classes if c_dim else []}
    if runner.is_main:
        extra = {"augment_p": p_final, "kimg": cur_nimg / 1000, "data": cfg.data.to_dict()}
        src = {"init": cfg.init.source} if cfg.init.source else None
        for name, net in (("G_ema", G_ema), ("G", G), ("D", D)):
            save_network(net, runner.out_dir / name, source=src, extra=extra)
        write_json(runner.out_dir / "metrics.json", out)
        runner.print(f"{cur_nimg / 1000:.1f} kimg, augment p {p_final:.4f}; networks saved to "
                     f"{runner.out_dir / 'G_ema'} (use this one), G/, D/")
    runner.close()
    return out


# ----------------------------------------------------------------------------------------------
# Export: a generator from a run's last checkpoint (the run may still be going, or was killed).


def export_generator(
    run_dir: str | os.PathLike,  # a `viscoin generator train` run folder (config.yaml + checkpoints/)
    out_dir: str | os.PathLike,  # the generator folder to write (config.json + weights.safetensors)
    which: Literal["G_ema", "G", "all"] = "G_ema",  # G_ema is the one to use; G is the raw training network;
                                 # all: G_ema/, G/ and D/ under out_dir, as the end of training writes them
    overwrite: bool = False,     # write into a non-empty `out_dir`
) -> dict[str, Any]:
    """Write the generator of `run_dir`'s latest checkpoint as a generator folder, as the end of
    training would (its extras: kimg, augment p, the training data); returns those extras.

    Reads only the checkpoint (safetensors + JSON, hash-checked) and the run's ``config.yaml``, so a
    training run that is still writing checkpoints can be inspected without stopping it. With
    ``which="all"`` the three networks go to ``out_dir/{G_ema,G,D}/``: a folder that ``init.source``
    takes, so a new run can branch from this point with a changed recipe (its optimiser state starts
    afresh, as in any fine-tuning).
    """
    run_dir, out_dir = Path(run_dir), Path(out_dir)
    ckpt = latest_checkpoint(run_dir / "checkpoints") if (run_dir / "checkpoints").is_dir() else None
    if ckpt is None or not (run_dir / CONFIG_NAME).is_file():
        raise CheckpointError(f"{run_dir}: no training checkpoint (expected {CONFIG_NAME} and checkpoints/latest.json "
                              "of a `viscoin generator train` run)")
    cfg = load_config(GeneratorTrainConfig, run_dir / CONFIG_NAME)
    replaces = "replace its G_ema/, G/ and D/" if which == "all" else "replace its config.json and weights.safetensors"
    claim_empty_folder(out_dir, overwrite, replaces)
    step, state = load_train_state(ckpt)
    names = ("G_ema", "G", "D") if which == "all" else (which,)
    missing = [name for name in names if name not in state]
    if missing:
        raise CheckpointError(f"{ckpt}: no {', '.join(missing)} in this checkpoint; is it a generator run?")
    p = float(state["augment"]["p"]) if state.get("augment") else 0.0
    extra = {"augment_p": p, "kimg": state["cur_nimg"] / 1000, "data": cfg.data.to_dict(), "step": step,
             "run": str(run_dir)}
    src = {"init": cfg.init.source} if cfg.init.source else None
    for name in names:
        net = Discriminator(cfg.discriminator) if name == "D" else Generator(cfg.generator)
        net.load_state_dict(state[name])
        save_network(net.eval().requires_grad_(False), out_dir / name if which == "all" else out_dir,
                     source=src, extra=extra)
    return extra

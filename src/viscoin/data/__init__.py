"""Datasets of viscoin: labelled images in [-1, 1] at a fixed resolution, with the method's transforms.

``build_dataset(DataConfig(kind=..., root=...), "train" | "test")`` reads one of the layouts

- ``"folder"``: any image folder, one sub-folder per class (`viscoin.data.folder`);
- ``"cub"``: CUB-200-2011 with its 312 binary attributes (`viscoin.data.cub`);
- ``"cars"``: Stanford Cars, original or per-class folders (`viscoin.data.cars`);
- ``"celebahq"``: CelebA-HQ young/old with its 40 binary attributes (`viscoin.data.celebahq`);
- ``"synthetic"``: the synthetic birds with 17 ground-truth attributes, drawn on first use and
  cached (`viscoin.data.synthetic`); ``root`` may be empty (the user cache folder);

into an `ImageDataset` (`viscoin.data.base`). Train: random resized crop + horizontal flip,
seeded per sample; test: resize the shorter side + center crop.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from viscoin.data.base import DatasetError, ImageDataset, LoadedSplit
from viscoin.data.cars import load_cars
from viscoin.data.celebahq import load_celebahq
from viscoin.data.cub import load_cub
from viscoin.data.folder import load_folder
from viscoin.data.synthetic import default_root, load_synthetic
from viscoin.utils.config import ConfigError, DictConfig

__all__ = ["DataConfig", "DatasetError", "ImageDataset", "build_dataset"]

DatasetKind = Literal["folder", "cub", "cars", "celebahq", "synthetic"]
KINDS = ("folder", "cub", "cars", "celebahq", "synthetic")


def _check_range(value: tuple[float, float], name: str, upper: float | None = None) -> None:
    lo, hi = value
    if not (0 < lo <= hi) or not math.isfinite(hi) or (upper is not None and hi > upper):
        bound = f" <= {upper}" if upper is not None else ""
        raise ConfigError(f"data.{name}: expected 0 < low <= high{bound}, got {list(value)}")


@dataclass(frozen=True)
class DataConfig(DictConfig):
    """Which dataset to read and how to transform its images."""

    kind: DatasetKind = "folder"                        # dataset layout
    root: str = ""                                      # dataset folder
    resolution: int = 256                               # output images are resolution x resolution
    test_fraction: float = 0.2                          # folder without train/test levels: seeded stratified split
    split_seed: int = 0                                 # seed of that split (synthetic: of the drawing)
    synthetic_per_class: tuple[int, int] = (500, 100)   # synthetic: train and test images per class
    crop_scale: tuple[float, float] = (0.08, 1.0)       # random resized crop: area fraction range (train)
    crop_ratio: tuple[float, float] = (0.75, 4 / 3)     # random resized crop: aspect-ratio range (train)
    hflip: float = 0.5                                  # probability of a horizontal flip (train)
    on_bad_image: Literal["error", "skip"] = "error"    # unreadable image: raise, or leave it out (decodes all once)

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ConfigError(f"data.kind: expected one of {', '.join(KINDS)}, got {self.kind!r}")
        if not isinstance(self.root, str):
            raise ConfigError(f"data.root: expected a string, got {self.root!r}")
        if isinstance(self.resolution, bool) or not isinstance(self.resolution, int) or self.resolution < 8:
            raise ConfigError(f"data.resolution: expected an integer >= 8, got {self.resolution!r}")
        if not 0 < self.test_fraction < 1:
            raise ConfigError(f"data.test_fraction: expected 0 < test_fraction < 1, got {self.test_fraction}")
        if isinstance(self.split_seed, bool) or not isinstance(self.split_seed, int):
            raise ConfigError(f"data.split_seed: expected an integer, got {self.split_seed!r}")
        counts = self.synthetic_per_class
        if len(counts) != 2 or any(isinstance(c, bool) or not isinstance(c, int) or c < 1 for c in counts):
            raise ConfigError(f"data.synthetic_per_class: expected [train, test] integers >= 1, got {counts!r}")
        object.__setattr__(self, "synthetic_per_class", (int(counts[0]), int(counts[1])))
        for name in ("crop_scale", "crop_ratio"):
            value = getattr(self, name)
            if len(value) != 2:
                raise ConfigError(f"data.{name}: expected [low, high], got {value!r}")
            object.__setattr__(self, name, (float(value[0]), float(value[1])))
        _check_range(self.crop_scale, "crop_scale", upper=1.0)
        _check_range(self.crop_ratio, "crop_ratio")
        if not 0 <= self.hflip <= 1:
            raise ConfigError(f"data.hflip: expected a probability in [0, 1], got {self.hflip}")
        if self.on_bad_image not in ("error", "skip"):
            raise ConfigError(f"data.on_bad_image: expected 'error' or 'skip', got {self.on_bad_image!r}")


def _load(cfg: DataConfig, root: Path, split: str) -> LoadedSplit:
    if cfg.kind == "folder":
        return load_folder(root, split, cfg.test_fraction, cfg.split_seed)
    if cfg.kind == "cub":
        return load_cub(root, split)
    if cfg.kind == "cars":
        return load_cars(root, split)
    if cfg.kind == "synthetic":
        return load_synthetic(root, split, cfg.split_seed, cfg.synthetic_per_class)
    return load_celebahq(root, split)


def build_dataset(cfg: DataConfig, split: Literal["train", "test"], augment: bool | None = None) -> ImageDataset:
    """The `split` of the dataset described by `cfg`; `augment` defaults to ``split == "train"``.

    Raises DatasetError (a ValueError) naming the folder or file when the layout is wrong.
    """
    if split not in ("train", "test"):
        raise ValueError(f"split: expected 'train' or 'test', got {split!r}")
    if not cfg.root and cfg.kind != "synthetic":
        raise DatasetError("data.root: not set; give the dataset folder")
    root = Path(cfg.root).expanduser() if cfg.root else default_root()
    if not root.exists() and cfg.kind != "synthetic":  # the synthetic dataset is drawn there on first use
        raise DatasetError(f"data.root: folder {root} does not exist")
    if root.exists() and not root.is_dir():
        raise DatasetError(f"data.root: {root} is not a folder")
    loaded = _load(cfg, root, split)
    return ImageDataset(
        loaded.samples,
        loaded.classes,
        split=split,
        resolution=cfg.resolution,
        augment=(split == "train") if augment is None else augment,
        attribute_names=loaded.attribute_names,
        attributes=loaded.attributes,
        crop_scale=cfg.crop_scale,
        crop_ratio=cfg.crop_ratio,
        hflip=cfg.hflip,
        on_bad_image=cfg.on_bad_image,
    )

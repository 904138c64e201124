"""The one dataset class of viscoin, its image loader and its seeded transforms.

Every layout (`folder`, `cub`, `cars`, `celebahq`) is read by a loader module into a
`LoadedSplit`: a list of `(file, label)` samples, the class names and, optionally, binary
attributes aligned with the samples. `ImageDataset` turns that into training samples:

- images are decoded with PIL and converted to 8-bit RGB (`load_image`), then mapped to
  float32 ``[3, R, R]`` in [-1, 1] as ``x / 127.5 - 1``;
- test transform (``augment=False``): resize the shorter side to R (bilinear, antialiased) and
  center-crop R x R;
- train transform (``augment=True``): torchvision's random resized crop (`random_resized_crop`)
  resized to R x R, then a horizontal flip with probability ``hflip``. All random numbers come
  from a `torch.Generator` seeded from the key (see `ImageDataset.__getitem__`), never from the
  global RNG, so a resumed run or any number of DataLoader workers sees exactly the same images.

With ``on_bad_image="skip"`` every image is decoded once when the dataset is built and the
unreadable ones are left out (one `BadImageWarning` gives their count and names them), so the
dataset's length, its label counts and every metric computed over it count readable images only.

Crop and resize happen in a single PIL ``resize(..., box=...)`` call (no intermediate image).
PIL's filters then also read the source pixels just around the box. For the test transform
this is torchvision's ``Resize(R)`` + ``CenterCrop(R)`` (which resize the whole image) to within
one 8-bit level (float rounding of the filter weights); for the random crop, the output matches
torchvision's ``RandomResizedCrop`` (crop, then resize) likewise, except in the outermost output
pixels, whose filter window reaches past the crop box.
"""

from __future__ import annotations

import math
import operator
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import torch
from PIL import Image

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff")


class DatasetError(ValueError):
    """A dataset folder, annotation file or image is missing or unreadable. The message names it."""


class BadImageWarning(UserWarning):
    """Unreadable images were left out of a dataset (``on_bad_image="skip"``)."""


class DataWarning(UserWarning):
    """The data is usable but probably not what was meant (e.g. a test class with no training image)."""


class LoadedSplit(NamedTuple):
    """What a layout loader returns for one split."""

    samples: list[tuple[Path, int]]                 # (image file, label), label in [0, len(classes))
    classes: list[str]                              # class names; label i is classes[i]
    attribute_names: list[str] | None = None        # names of the binary attributes, if any
    attributes: torch.Tensor | None = None          # [len(samples), len(attribute_names)] float32 0/1


def listing(items: Sequence[str], most: int, sep: str = ", ") -> str:
    """The first `most` items joined by `sep`, and how many more there are (for messages)."""
    more = f"{sep}and {len(items) - most} more" if len(items) > most else ""
    return sep.join(items[:most]) + more


def find_file(name: str, folders: Sequence[Path], what: str) -> Path:
    """First ``folder / name`` that exists, else a DatasetError naming the file and the folders searched."""
    for folder in folders:
        if (folder / name).is_file():
            return folder / name
    where = ", ".join(str(f) for f in dict.fromkeys(folders))
    raise DatasetError(f"missing {what} {name!r}: looked in {where}")


# ----------------------------------------------------------------------------------------------
# Image decoding


def load_image(path: str | Path) -> Image.Image:
    """Decode an image file into an 8-bit RGB PIL image; DatasetError naming the file if that fails.

    Conversions: grayscale, palette (with or without transparency), CMYK, YCbCr, ... -> RGB via
    PIL; alpha is dropped (the colour channels are kept as stored, as torchvision does);
    16-bit / 32-bit integer grayscale is scaled from [0, 65535] to [0, 255]; float grayscale
    is clipped to [0, 255].
    """
    try:
        with Image.open(path) as img:
            img.load()
            return _to_rgb(img)
    except Exception as exc:  # PIL raises many types (OSError, SyntaxError, ValueError, ...)
        reason = str(exc) or type(exc).__name__
        raise DatasetError(f"cannot read image {path}: {reason}") from exc


def _to_rgb(img: Image.Image) -> Image.Image:
    if img.mode == "RGB":
        return img.copy()
    if img.mode.startswith("I"):  # I, I;16, I;16B, ...: high bit depth grayscale
        arr = np.asarray(img).astype(np.float64) / 257.0
        img = Image.fromarray(np.clip(np.rint(arr), 0, 255).astype(np.uint8))  # 2-D uint8: mode L
    elif img.mode == "F":
        img = Image.fromarray(np.clip(np.rint(np.asarray(img)), 0, 255).astype(np.uint8))  # 2-D uint8: mode L
    elif img.mode == "P" and "transparency" in img.info:
        img = img.convert("RGBA")  # PIL warns when converting such palettes straight to RGB
    return img.convert("RGB")


def to_tensor(img: Image.Image) -> torch.Tensor:
    """8-bit RGB PIL image -> float32 [3, H, W] in [-1, 1] (x / 127.5 - 1)."""
    arr = torch.from_numpy(np.array(img, dtype=np.uint8, copy=True))
    return arr.permute(2, 0, 1).to(torch.float32).div_(127.5).sub_(1.0).contiguous()


# ----------------------------------------------------------------------------------------------
# Transforms

Box = tuple[float, float, float, float]  # (left, top, right, bottom) in source pixels


def center_box(width: int, height: int, size: int) -> Box:
    """The source box of "resize the shorter side to `size`, center-crop `size` x `size`".

    Rounded as torchvision's ``Resize(size)`` + ``CenterCrop(size)`` do (resized longer side
    truncated, crop offset rounded), so resizing this box to `size` x `size` gives their output.
    """
    if width <= height:
        new_w, new_h = size, int(size * height / width)
    else:
        new_w, new_h = int(size * width / height), size
    left, top = int(round((new_w - size) / 2)), int(round((new_h - size) / 2))
    sx, sy = width / new_w, height / new_h
    return (left * sx, top * sy, (left + size) * sx, (top + size) * sy)


def random_resized_crop(
    width: int,
    height: int,
    scale: tuple[float, float],
    ratio: tuple[float, float],
    generator: torch.Generator,
) -> Box:
    """torchvision's `RandomResizedCrop.get_params`, drawing from `generator` (same draws, same order).

    Up to 10 attempts of an area fraction uniform in `scale` and an aspect ratio log-uniform in
    `ratio`; the first that fits is placed uniformly at random; else a center crop of the
    whole image clamped to the ratio range.
    """
    area = height * width
    log_ratio = torch.log(torch.tensor(ratio)).tolist()
    for _ in range(10):
        target_area = area * torch.empty(1).uniform_(scale[0], scale[1], generator=generator).item()
        aspect = math.exp(torch.empty(1).uniform_(log_ratio[0], log_ratio[1], generator=generator).item())
        w = int(round(math.sqrt(target_area * aspect)))
        h = int(round(math.sqrt(target_area / aspect)))
        if 0 < w <= width and 0 < h <= height:
            top = int(torch.randint(0, height - h + 1, size=(1,), generator=generator).item())
            left = int(torch.randint(0, width - w + 1, size=(1,), generator=generator).item())
            return (left, top, left + w, top + h)
    in_ratio = width / height
    if in_ratio < min(ratio):
        w, h = width, int(round(width / min(ratio)))
    elif in_ratio > max(ratio):
        w, h = int(round(height * max(ratio))), height
    else:
        w, h = width, height
    top, left = (height - h) // 2, (width - w) // 2
    return (left, top, left + w, top + h)


def _seed_generator(seed: int) -> torch.Generator:
    # torch accepts seeds in [-2**63, 2**64); fold any Python int into [0, 2**64).
    return torch.Generator().manual_seed(seed % (1 << 64))


# ----------------------------------------------------------------------------------------------
# Dataset


class ImageDataset(torch.utils.data.Dataset):
    """Labelled images (and optional binary attributes) with viscoin's train/test transforms.

    ``dataset[i]`` or ``dataset[i, seed]`` returns ``{"image": float32 [3, R, R] in [-1, 1],
    "label": int, "index": int}`` plus ``"attributes": float32 [A]`` when the dataset has
    attributes. With ``on_bad_image="skip"`` the unreadable images are left out when the dataset
    is built (`skipped` lists them); an image that cannot be read later is an error in both modes.
    """

    def __init__(
        self,
        samples: Sequence[tuple[Path, int]],
        classes: Sequence[str],
        *,
        split: str,
        resolution: int,
        augment: bool,
        attribute_names: Sequence[str] | None = None,
        attributes: torch.Tensor | None = None,
        crop_scale: tuple[float, float] = (0.08, 1.0),
        crop_ratio: tuple[float, float] = (0.75, 4 / 3),
        hflip: float = 0.5,
        on_bad_image: str = "error",
    ) -> None:
        self.samples: list[tuple[Path, int]] = [(Path(p), int(y)) for p, y in samples]
        self.classes: list[str] = list(classes)
        self.num_classes: int = len(self.classes)
        self.split = split
        self.resolution = int(resolution)
        self.augment = bool(augment)
        self.crop_scale = (float(crop_scale[0]), float(crop_scale[1]))
        self.crop_ratio = (float(crop_ratio[0]), float(crop_ratio[1]))
        self.hflip = float(hflip)
        if on_bad_image not in ("error", "skip"):
            raise ValueError(f"on_bad_image: expected 'error' or 'skip', got {on_bad_image!r}")
        self.on_bad_image = on_bad_image
        bad = [y for _, y in self.samples if not 0 <= y < self.num_classes]
        if bad:
            raise DatasetError(f"label {bad[0]} out of range for {self.num_classes} classes")
        if (attribute_names is None) != (attributes is None):
            raise ValueError("attribute_names and attributes must be given together")
        self.attribute_names: list[str] | None = None if attribute_names is None else list(attribute_names)
        self.attributes: torch.Tensor | None = None
        if attributes is not None:
            assert self.attribute_names is not None
            attributes = torch.as_tensor(attributes, dtype=torch.float32)
            expected = (len(self.samples), len(self.attribute_names))
            if tuple(attributes.shape) != expected:
                raise ValueError(f"attributes: expected shape {list(expected)}, got {list(attributes.shape)}")
            self.attributes = attributes
        self.skipped: list[Path] = []  # unreadable images left out (skip mode)
        if on_bad_image == "skip":
            self._leave_out_unreadable()

    def _leave_out_unreadable(self) -> None:
        """Decode every image once; drop the unreadable ones (and their attribute rows), with one warning."""
        readable, reasons = [], []
        for i, (path, _) in enumerate(self.samples):
            try:
                load_image(path)
                readable.append(i)
            except DatasetError as exc:
                self.skipped.append(path)
                reasons.append(str(exc))
        if not self.skipped:
            return
        total = len(self.samples)
        if not readable:
            raise DatasetError(f"no readable image in the {self.split} split ({total} files tried): {reasons[0]}")
        self.samples = [self.samples[i] for i in readable]
        if self.attributes is not None:
            self.attributes = self.attributes[readable]
        warnings.warn(
            f"{self.split} split: left out {len(self.skipped)} unreadable image(s) of {total} "
            f"(data.on_bad_image=skip), {len(self.samples)} remain: {listing(reasons, 5, '; ')}",
            BadImageWarning,
            stacklevel=3,
        )

    def __len__(self) -> int:
        return len(self.samples)

    def label_counts(self) -> list[int]:
        """Number of samples of each class, indexed by label."""
        counts = [0] * self.num_classes
        for _, label in self.samples:
            counts[label] += 1
        return counts

    def __getitem__(self, key: int | tuple[int, int]) -> dict[str, Any]:
        """``key`` is an index, or ``(index, seed)``.

        With ``augment=True`` the crop and flip are drawn from a `torch.Generator` seeded with
        ``seed``; for a plain index, ``seed = index``. The same key always gives the same image.
        """
        if isinstance(key, (tuple, list)):
            if len(key) != 2:
                raise TypeError(f"expected an index or (index, seed), got {key!r}")
            index, seed = operator.index(key[0]), operator.index(key[1])
        else:
            index = operator.index(key)
            seed = index
        n = len(self.samples)
        if not -n <= index < n:
            raise IndexError(f"index {index} out of range for a dataset of {n} samples")
        i = index % n
        path, label = self.samples[i]
        try:
            img = load_image(path)
        except DatasetError as exc:
            if self.on_bad_image == "skip":  # it was readable when the dataset was built
                raise DatasetError(f"{exc} (it was readable when the {self.split} split was read)") from exc
            raise
        item: dict[str, Any] = {"image": self.transform(img, seed), "label": label, "index": i}
        if self.attributes is not None:
            item["attributes"] = self.attributes[i].clone()
        return item

    def transform(self, img: Image.Image, seed: int = 0) -> torch.Tensor:
        """RGB PIL image -> float32 [3, R, R] in [-1, 1]: the train transform if `augment`, else the test one."""
        flip = False
        if self.augment:
            gen = _seed_generator(seed)
            box = random_resized_crop(img.width, img.height, self.crop_scale, self.crop_ratio, gen)
            flip = bool(torch.rand(1, generator=gen).item() < self.hflip)
        else:
            box = center_box(img.width, img.height, self.resolution)
        r = self.resolution
        out = img.resize((r, r), Image.Resampling.BILINEAR, box=box, reducing_gap=None)
        if flip:
            out = out.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
        return to_tensor(out)

    def __repr__(self) -> str:
        attrs = f", {len(self.attribute_names)} attributes" if self.attribute_names else ""
        return (
            f"{type(self).__name__}({self.split}: {len(self)} images, {self.num_classes} classes{attrs}, "
            f"{self.resolution}x{self.resolution}, augment={self.augment})"
        )

"""Image conversions and grids. Images in viscoin are float tensors in [-1, 1], [N, C, H, W]."""

from __future__ import annotations

import math
import os

import numpy as np
import torch

from viscoin.utils.io import atomic_path


def to_uint8(img: torch.Tensor) -> np.ndarray:
    """[N, C, H, W] in [-1, 1] -> uint8 [N, H, W, C], as NVIDIA exports images (x*127.5+128, clamp, truncate)."""
    if img.ndim != 4:
        raise ValueError(f"expected images of shape [N, C, H, W], got {list(img.shape)}")
    x = (img.detach().to(torch.float32).permute(0, 2, 3, 1) * 127.5 + 128).clamp(0, 255).to(torch.uint8)
    return x.cpu().numpy()


def image_grid(images: np.ndarray, ncols: int | None = None, pad: int = 0, pad_value: int = 0) -> np.ndarray:
    """Tile uint8 images [N, H, W, C] into one [rows*H, cols*W, C] image (row-major, `pad` pixels apart)."""
    if images.ndim != 4 or images.shape[0] == 0:
        raise ValueError(f"expected a non-empty batch [N, H, W, C], got shape {images.shape}")
    n, h, w, c = images.shape
    ncols = ncols or int(math.ceil(math.sqrt(n)))
    nrows = int(math.ceil(n / ncols))
    grid = np.full((nrows * h + (nrows - 1) * pad, ncols * w + (ncols - 1) * pad, c), pad_value, dtype=images.dtype)
    for i in range(n):
        r, col = divmod(i, ncols)
        grid[r * (h + pad) : r * (h + pad) + h, col * (w + pad) : col * (w + pad) + w] = images[i]
    return grid


def pixel_features(images: torch.Tensor, size: int = 16) -> torch.Tensor:
    """Images [N, 3, R, R] in [-1, 1] (clamped), average-pooled to `size` x `size`, less each image's
    background colour (the per-channel median of its border pixels), flattened: [N, 3·size²].

    Subtracting the border colour keeps a generator that varies only the background tint (a uniform
    offset) from counting as diverse: what remains is the object's pose, size, shape and colours.
    """
    assert images.ndim == 4 and images.shape[1] == 3, images.shape
    pooled = torch.nn.functional.adaptive_avg_pool2d(images.float().clamp(-1, 1), size)    # [N, 3, s, s]
    border = torch.cat([pooled[:, :, 0], pooled[:, :, -1], pooled[:, :, 1:-1, 0], pooled[:, :, 1:-1, -1]], dim=2)
    background = border.median(dim=2).values                                                 # [N, 3]
    return (pooled - background[:, :, None, None]).flatten(1)


def image_format(path: str | os.PathLike) -> str:
    """PIL's format name for `path`'s suffix ("PNG", "JPEG", ...); ValueError naming the file otherwise."""
    from PIL import Image

    fmt = Image.registered_extensions().get(os.path.splitext(str(path))[1].lower())
    if fmt is None:
        raise ValueError(f"{path}: unknown image file extension; use .png or .jpg")
    return fmt


def save_image(path: str | os.PathLike, image: np.ndarray) -> None:
    """Write a uint8 [H, W, C] (C = 1 or 3) image; the format follows the suffix (PNG, JPEG, ...). Atomic."""
    from PIL import Image

    if image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] not in (1, 3, 4):
        raise ValueError(f"expected a uint8 image [H, W, 1|3|4], got {image.dtype} {image.shape}")
    pil = Image.fromarray(image[:, :, 0] if image.shape[2] == 1 else image)
    fmt = image_format(path)
    with atomic_path(path) as tmp:
        pil.save(tmp, format=fmt)

"""Synthetic birds: a procedurally drawn dataset whose concepts are known (ground truth).

CUB has attributes, but nobody can say whether a learnt concept is "correct". Here every image
is drawn from known factors, so the concepts VisCoIN learns can be compared with the truth
(`viscoin.metrics.ground_truth`). Each image is a side view of a bird on a plain background:

    factor          values                                   role
    body_color      red, blue, yellow, green                 defines the class
    head_color      black, white, orange, purple             defines the class
    wing_pattern    plain, stripes, spots                    defines the class
    body_shape      round, slender                           random (attribute, not class)
    size            small, large                             random (attribute, not class)
    beak            short, long                              random (attribute, not class)
    background colour, position, facing left/right, colour jitter     nuisance (no attribute)

The 12 classes are the 4 body colours x 3 wing patterns; a class's head colour is
``HEAD_COLORS[(body + pattern) % 4]``, so each head colour is shared by 3 classes. Every image
carries a 17-dim binary attribute vector, one entry per factor value, named as CUB names its
attributes (``"has_body_color::red"``); `CLASS_DEFINING` lists the 11 that define classes.

The images are drawn at 4x the stored size and downsampled (anti-aliased), stored once as PNG
files under a cache folder (``root/<version>-seed<S>-<train>x<test>/{train,test}/<class>/``
plus ``attributes.json``), written to a temporary folder and renamed, so an interrupted
generation never leaves a half dataset behind. Images are 64x64; other resolutions come from
`DataConfig.resolution` (e.g. 32). Generation is deterministic: image i of a split depends only
on the seed, the split and i (numpy's PCG64 seeded with ``[seed, split, i]``).
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageDraw

from viscoin.data.base import DatasetError, LoadedSplit
from viscoin.utils.io import make_default_permissions

VERSION = "birds-v1"
IMAGE_SIZE = 64                   # stored side (pixels)
_SUPER = 4                        # drawn at IMAGE_SIZE * _SUPER, then downsampled

BODY_COLORS: dict[str, tuple[int, int, int]] = {
    "red": (205, 40, 40), "blue": (40, 85, 205), "yellow": (240, 205, 40), "green": (45, 160, 60),
}
HEAD_COLORS: dict[str, tuple[int, int, int]] = {
    "black": (25, 25, 25), "white": (245, 245, 245), "orange": (245, 135, 20), "purple": (135, 45, 170),
}
WING_PATTERNS = ("plain", "stripes", "spots")
BODY_SHAPES = ("round", "slender")
SIZES = ("small", "large")
BEAKS = ("short", "long")

FACTORS: dict[str, tuple[str, ...]] = {
    "body_color": tuple(BODY_COLORS),
    "head_color": tuple(HEAD_COLORS),
    "wing_pattern": WING_PATTERNS,
    "body_shape": BODY_SHAPES,
    "size": SIZES,
    "beak": BEAKS,
}
ATTRIBUTE_NAMES: list[str] = [f"has_{factor}::{value}" for factor, values in FACTORS.items() for value in values]
CLASS_FACTORS = ("body_color", "head_color", "wing_pattern")
CLASS_DEFINING: list[str] = [a for a in ATTRIBUTE_NAMES if a[4:].split("::")[0] in CLASS_FACTORS]


def class_table() -> list[dict[str, str]]:
    """The 12 classes: ``{"body_color", "head_color", "wing_pattern"}`` each, in label order."""
    bodies, heads = list(BODY_COLORS), list(HEAD_COLORS)
    return [
        {"body_color": body, "head_color": heads[(b + p) % len(heads)], "wing_pattern": pattern}
        for b, body in enumerate(bodies)
        for p, pattern in enumerate(WING_PATTERNS)
    ]


def class_names() -> list[str]:
    """Names of the classes, e.g. ``"red-body_black-head_plain-wings"``."""
    return [f"{c['body_color']}-body_{c['head_color']}-head_{c['wing_pattern']}-wings" for c in class_table()]


def attribute_vector(factors: dict[str, str]) -> np.ndarray:
    """float32 [17] 0/1: one entry per factor value of `ATTRIBUTE_NAMES`."""
    out = np.zeros(len(ATTRIBUTE_NAMES), np.float32)
    for factor, value in factors.items():
        out[ATTRIBUTE_NAMES.index(f"has_{factor}::{value}")] = 1.0
    return out


# ----------------------------------------------------------------------------------------------
# Drawing


def _jitter(rng: np.random.Generator, color: tuple[int, int, int], amount: int) -> tuple[int, int, int]:
    return tuple(int(np.clip(c + rng.integers(-amount, amount + 1), 0, 255)) for c in color)  # type: ignore[return-value]


def _shade(color: tuple[int, int, int], factor: float) -> tuple[int, int, int]:
    return tuple(int(np.clip(round(c * factor), 0, 255)) for c in color)  # type: ignore[return-value]


def _background(rng: np.random.Generator) -> tuple[int, int, int]:
    """A light, weakly saturated colour of random hue (sky, haze, foliage...)."""
    hue, sat, val = rng.uniform(0, 1), rng.uniform(0.08, 0.3), rng.uniform(0.82, 0.97)
    rgb = Image.new("HSV", (1, 1), (int(hue * 255), int(sat * 255), int(val * 255))).convert("RGB")
    return rgb.getpixel((0, 0))  # type: ignore[return-value]


def draw_bird(factors: dict[str, str], rng: np.random.Generator, size: int = IMAGE_SIZE) -> Image.Image:
    """One RGB image ``size`` x ``size`` of a bird with the given factor values; nuisances from `rng`."""
    big = size * _SUPER
    u = big / 256.0                                          # drawing unit: coordinates below are for 256 px
    img = Image.new("RGB", (big, big), _background(rng))
    draw = ImageDraw.Draw(img)
    s = (0.78 if factors["size"] == "small" else 1.0) * rng.uniform(0.95, 1.05) * u
    half_w, half_h = (62, 46) if factors["body_shape"] == "round" else (80, 34)
    bw, bh = half_w * s, half_h * s                          # body half-axes
    cx = big / 2 + rng.uniform(-22, 22) * u - 10 * s         # body centre (the head sits to its right)
    cy = big / 2 + rng.uniform(-16, 16) * u + 12 * s
    body = _jitter(rng, BODY_COLORS[factors["body_color"]], 14)
    head = _jitter(rng, HEAD_COLORS[factors["head_color"]], 10)
    dark = _shade(body, 0.6)

    # legs, then tail, body, wing, head, beak, eye (back to front)
    leg = (70, 60, 50)
    for dx in (-0.25, 0.15):
        x = cx + dx * bw
        draw.line([(x, cy + bh * 0.8), (x - 4 * s, cy + bh + 26 * s)], fill=leg, width=max(1, round(5 * s)))
    draw.polygon([(cx - bw * 0.8, cy - 4 * s), (cx - bw - 42 * s, cy - 26 * s), (cx - bw - 38 * s, cy + 16 * s)], fill=dark)
    draw.ellipse([cx - bw, cy - bh, cx + bw, cy + bh], fill=body)

    ww, wh = bw * 0.62, bh * 0.58                            # wing half-axes
    wx, wy = cx - bw * 0.12, cy - bh * 0.05
    wing_box = [wx - ww, wy - wh, wx + ww, wy + wh]
    mask = Image.new("L", img.size, 0)
    ImageDraw.Draw(mask).ellipse(wing_box, fill=255)
    layer = Image.new("RGB", img.size, dark)
    pattern = factors["wing_pattern"]
    if pattern != "plain":
        ldraw = ImageDraw.Draw(layer)
        if pattern == "stripes":
            step = 22 * s
            x = wx - ww + step * 0.5
            while x < wx + ww:
                ldraw.polygon([(x, wy - wh), (x + 10 * s, wy - wh), (x - 2 * s, wy + wh), (x - 12 * s, wy + wh)],
                              fill=(20, 20, 20))
                x += step
        else:
            r = 8 * s
            for gx, gy in ((-0.55, -0.25), (-0.1, -0.45), (0.35, -0.2), (-0.35, 0.35), (0.15, 0.3), (0.6, 0.25)):
                px, py = wx + gx * ww, wy + gy * wh
                ldraw.ellipse([px - r, py - r, px + r, py + r], fill=(250, 250, 250))
    img.paste(layer, (0, 0), mask)
    draw.ellipse(wing_box, outline=_shade(body, 0.4), width=max(1, round(3 * s)))

    hr = 30 * s                                              # head radius
    hx, hy = cx + bw * 0.78, cy - bh * 0.78
    beak_len = (20 if factors["beak"] == "short" else 44) * s
    beak = (235, 160, 40) if factors["body_color"] != "yellow" else (200, 110, 30)
    draw.polygon([(hx + hr * 0.7, hy - 10 * s), (hx + hr * 0.7 + beak_len, hy + 4 * s), (hx + hr * 0.7, hy + 12 * s)],
                 fill=beak)
    draw.ellipse([hx - hr, hy - hr, hx + hr, hy + hr], fill=head)
    ex, ey, er = hx + 11 * s, hy - 7 * s, 7 * s
    ring = (250, 250, 250) if factors["head_color"] != "white" else (30, 30, 30)
    draw.ellipse([ex - er - 3 * s, ey - er - 3 * s, ex + er + 3 * s, ey + er + 3 * s], fill=ring)
    draw.ellipse([ex - er, ey - er, ex + er, ey + er], fill=(10, 10, 10))

    if rng.uniform() < 0.5:
        img = img.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
    return img.resize((size, size), Image.Resampling.LANCZOS)


SPLITS = {"train": 0, "test": 1}


def sample_factors(label: int, rng: np.random.Generator) -> dict[str, str]:
    """The class's defining factors plus random values of the others."""
    factors = dict(class_table()[label])
    for factor in ("body_shape", "size", "beak"):
        values = FACTORS[factor]
        factors[factor] = values[int(rng.integers(len(values)))]
    return factors


def render_split(split: str, count_per_class: int, seed: int) -> tuple[list[Image.Image], list[int], np.ndarray]:
    """Images, labels and attributes [N, 17] of a split; image i is class ``i % 12``."""
    num_classes = len(class_table())
    images, labels, attrs = [], [], []
    for i in range(count_per_class * num_classes):
        rng = np.random.default_rng([seed, SPLITS[split], i])
        label = i % num_classes
        factors = sample_factors(label, rng)
        images.append(draw_bird(factors, rng))
        labels.append(label)
        attrs.append(attribute_vector(factors))
    return images, labels, np.stack(attrs)


# ----------------------------------------------------------------------------------------------
# Cache folder


def default_root() -> Path:
    """Where the dataset is cached when `DataConfig.root` is empty: ``$VISCOIN_CACHE`` or
    ``$XDG_CACHE_HOME/viscoin`` (default ``~/.cache/viscoin``), sub-folder ``datasets``."""
    if os.environ.get("VISCOIN_CACHE"):
        return Path(os.environ["VISCOIN_CACHE"]).expanduser() / "datasets"
    xdg = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(xdg).expanduser() / "viscoin" / "datasets"


def dataset_folder(root: Path, seed: int, per_class: tuple[int, int]) -> Path:
    return root / f"{VERSION}-seed{seed}-{per_class[0]}x{per_class[1]}"


def ensure_synthetic(root: Path, seed: int, per_class: tuple[int, int], progress: bool = True) -> Path:
    """The dataset folder, generated (atomically) if it is not there yet."""
    folder = dataset_folder(root, seed, per_class)
    if (folder / "attributes.json").is_file():
        return folder
    try:
        root.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{folder.name}.", dir=root))
        make_default_permissions(tmp)  # the cache folder as mkdir() would make it, not mkdtemp's 0o700
    except OSError as exc:
        raise DatasetError(f"data.root: cannot create the synthetic dataset under {root}: {exc}") from exc
    try:
        names = class_names()
        meta: dict[str, object] = {
            "version": VERSION, "seed": seed, "image_size": IMAGE_SIZE, "classes": names,
            "class_factors": class_table(), "attribute_names": ATTRIBUTE_NAMES, "class_defining": CLASS_DEFINING,
            "files": {},
        }
        for split, count in zip(SPLITS, per_class):
            if progress:
                print(f"viscoin: drawing the synthetic birds ({split}: {count * len(names)} images) in {folder}",
                      flush=True)
            images, labels, attrs = render_split(split, count, seed)
            files = []
            for i, (img, label) in enumerate(zip(images, labels)):
                rel = f"{split}/{names[label]}/{i:05d}.png"
                (tmp / rel).parent.mkdir(parents=True, exist_ok=True)
                img.save(tmp / rel)
                files.append([rel, label, attrs[i].astype(int).tolist()])
            meta["files"][split] = files  # type: ignore[index]
        (tmp / "attributes.json").write_text(json.dumps(meta), encoding="utf-8")
        try:
            tmp.rename(folder)
        except OSError:
            if not (folder / "attributes.json").is_file():  # not another process winning the race
                raise
            shutil.rmtree(tmp, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return folder


def load_synthetic(root: Path, split: str, seed: int, per_class: tuple[int, int]) -> LoadedSplit:
    """Samples, classes and the 17 attributes of a split of the synthetic birds (generated if needed)."""
    folder = ensure_synthetic(root, seed, per_class)
    meta_file = folder / "attributes.json"
    try:
        meta = json.loads(meta_file.read_text(encoding="utf-8"))
        rows = meta["files"][split]
        samples = [(folder / rel, int(label)) for rel, label, _ in rows]
        attrs = torch.tensor([a for _, _, a in rows], dtype=torch.float32)
        return LoadedSplit(samples, list(meta["classes"]), list(meta["attribute_names"]), attrs)
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise DatasetError(f"{meta_file}: unreadable synthetic dataset index ({exc}); delete {folder} to redraw it") from exc

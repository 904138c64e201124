"""CelebA-HQ young/old, from CelebAMask-HQ.

Layout (``root`` is the ``CelebAMask-HQ`` folder, or the folder that contains it)::

    CelebAMask-HQ/CelebA-HQ-img/<i>.jpg                 30000 images, i = 0 .. 29999
    CelebAMask-HQ/CelebAMask-HQ-attribute-anno.txt
        line 1: number of images
        line 2: the 40 attribute names (5_o_Clock_Shadow ... Young)
        then:   "<i>.jpg  v1 ... v40", values 1 (present) or -1 (absent)

Classes are ``["old", "young"]`` (label 1 iff attribute ``Young`` is 1). The 40 attributes are
exposed as float 0/1 in file order.

Split (CelebAMask-HQ has none; this one is fixed and documented): image ``<i>.jpg`` is in
test iff ``i % 5 == 0``, else in train (a 20 % / 80 % split, spread evenly over the file).
"""

from __future__ import annotations

import warnings
from pathlib import Path

import torch

from viscoin.data.base import DatasetError, LoadedSplit, find_file

CLASSES = ["old", "young"]
ANNOTATION_FILE = "CelebAMask-HQ-attribute-anno.txt"
IMAGE_FOLDER = "CelebA-HQ-img"


def is_test_image(i: int) -> bool:
    """The fixed split: image i is a test image iff i % 5 == 0."""
    return i % 5 == 0


def _read_annotations(path: Path) -> tuple[list[str], list[tuple[str, int, list[int]]]]:
    """Attribute names and (file name, image index, ±1 values) rows."""
    lines = path.read_text(encoding="utf-8").splitlines()
    if len(lines) < 2:
        raise DatasetError(f"{path}: expected a count line and an attribute-names line")
    names = lines[1].split()
    rows = []
    for n, line in enumerate(lines[2:], start=3):
        parts = line.split()
        if not parts:
            continue
        try:
            if len(parts) != len(names) + 1:
                raise ValueError(f"expected a file name and {len(names)} values, got {len(parts)} fields")
            values = [int(v) for v in parts[1:]]
            if any(v not in (1, -1) for v in values):
                raise ValueError("values must be 1 or -1")
            rows.append((parts[0], int(Path(parts[0]).stem), values))
        except ValueError as exc:
            raise DatasetError(f"{path}, line {n}: {exc}") from None
    try:
        declared = int(lines[0].split()[0])
    except (ValueError, IndexError):
        raise DatasetError(f"{path}, line 1: expected the number of images, got {lines[0]!r}") from None
    if declared != len(rows):
        warnings.warn(f"{path}: declares {declared} images but lists {len(rows)}", stacklevel=3)
    return names, rows


def load_celebahq(root: Path, split: str) -> LoadedSplit:
    """Samples (old/young), classes and the 40 binary attributes of a CelebA-HQ split."""
    anno = find_file(ANNOTATION_FILE, [root, root / "CelebAMask-HQ"], "CelebAMask-HQ annotation file")
    images = anno.parent / IMAGE_FOLDER
    if not images.is_dir():
        raise DatasetError(f"missing CelebA-HQ image folder {IMAGE_FOLDER}/ in {anno.parent}")
    names, rows = _read_annotations(anno)
    if "Young" not in names:
        raise DatasetError(f"{anno}: no attribute 'Young' in line 2 (found {names})")
    young = names.index("Young")
    chosen = [row for row in rows if is_test_image(row[1]) == (split == "test")]
    if not chosen:
        raise DatasetError(f"{anno}: no {split} images")
    samples = [(images / fname, int(values[young] == 1)) for fname, _, values in chosen]
    attributes = (torch.tensor([values for _, _, values in chosen], dtype=torch.float32) + 1) / 2
    return LoadedSplit(samples, list(CLASSES), names, attributes)

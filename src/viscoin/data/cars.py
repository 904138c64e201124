"""Stanford Cars (196 classes), from its original layout or its per-class-folder re-distribution.

Original layout (``root``, or ``root/stanford_cars`` as torchvision stores it)::

    devkit/cars_meta.mat                    "class_names": 1 x 196 cell of names
    devkit/cars_train_annos.mat             "annotations": struct array with fields bbox_x1,
                                            bbox_y1, bbox_x2, bbox_y2, class (from 1), fname
    cars_test_annos_withlabels.mat          same fields, for cars_test/ (a separate download;
                                            also looked for in devkit/)
    cars_train/<fname>, cars_test/<fname>   images (also accepted: cars_train/cars_train/...)

The .mat files may also sit in ``car_devkit/devkit/`` or next to the image folders. Labels are
``class - 1``, class names those of cars_meta.mat, in its order. Bounding boxes are not used.

Re-distribution (for example the Kaggle "stanford-car-dataset-by-classes-folder")::

    [car_data/[car_data/]]train/<class name>/*.jpg
    [car_data/[car_data/]]test/<class name>/*.jpg

read like an image folder with train/test levels (`viscoin.data.folder`): classes are the
folder names, sorted alphabetically, so labels are NOT in cars_meta.mat order.

The layout is detected: a train/ or test/ folder means the re-distribution.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from viscoin.data.base import DatasetError, LoadedSplit, find_file
from viscoin.data.folder import has_split_folders, load_split_folders

ANNOTATIONS = {"train": "cars_train_annos.mat", "test": "cars_test_annos_withlabels.mat"}
IMAGE_FOLDERS = {"train": "cars_train", "test": "cars_test"}


def _loadmat(path: Path) -> dict[str, Any]:
    try:
        from scipy.io import loadmat
    except ImportError as exc:  # scipy is only needed for this layout
        raise DatasetError(f"reading {path} needs scipy (pip install scipy)") from exc
    try:
        return loadmat(str(path), squeeze_me=True)
    except Exception as exc:
        raise DatasetError(f"cannot read {path}: {exc}") from exc


def _mat_field(mat: dict[str, Any], key: str, path: Path) -> np.ndarray:
    if key not in mat:
        raise DatasetError(f"{path}: no variable {key!r} (found {sorted(k for k in mat if not k.startswith('__'))})")
    return np.atleast_1d(mat[key])


def _read_annotations(path: Path) -> list[tuple[str, int]]:
    """(fname, 1-based class) of each entry of the "annotations" struct array of `path`."""
    ann = _mat_field(_loadmat(path), "annotations", path)
    fields = ann.dtype.names or ()
    for field in ("fname", "class"):
        if field not in fields:
            raise DatasetError(f"{path}: annotations have no field {field!r} (fields: {list(fields)})")
    return [(str(f), int(c)) for f, c in zip(ann["fname"], ann["class"])]


def _original_base(root: Path) -> Path:
    return root / "stanford_cars" if (root / "stanford_cars").is_dir() else root


def load_cars_original(root: Path, split: str) -> LoadedSplit:
    """A split of the original Stanford Cars layout (see the module docstring)."""
    base = _original_base(root)
    mat_folders = [base, base / "devkit", base / "car_devkit" / "devkit", base / "car_devkit"]
    meta = find_file("cars_meta.mat", mat_folders, "Stanford Cars devkit file")
    classes = [str(name) for name in _mat_field(_loadmat(meta), "class_names", meta)]
    ann_file = find_file(ANNOTATIONS[split], mat_folders, "Stanford Cars annotation file")
    images = base / IMAGE_FOLDERS[split]
    if (images / IMAGE_FOLDERS[split]).is_dir():  # archives extracted into a folder of the same name
        images = images / IMAGE_FOLDERS[split]
    if not images.is_dir():
        raise DatasetError(f"missing Stanford Cars image folder {IMAGE_FOLDERS[split]}/ in {base}")
    samples = []
    for fname, cls in _read_annotations(ann_file):
        if not 1 <= cls <= len(classes):
            raise DatasetError(f"{ann_file}: {fname} has class {cls}, expected 1..{len(classes)} ({meta})")
        samples.append((images / fname, cls - 1))
    if not samples:
        raise DatasetError(f"{ann_file}: no annotations")
    return LoadedSplit(samples, classes)


def load_cars(root: Path, split: str) -> LoadedSplit:
    """A split of Stanford Cars, original layout or per-class folders (detected)."""
    for candidate in (root, root / "car_data", root / "car_data" / "car_data"):
        if has_split_folders(candidate):
            return load_split_folders(candidate, split)
    base = _original_base(root)
    markers = ("devkit", "car_devkit", "cars_train", "cars_test", "cars_meta.mat")
    if not any((base / m).exists() for m in markers):
        raise DatasetError(
            f"no Stanford Cars layout in {root}: expected devkit/*.mat with cars_train/ and cars_test/, "
            "or train/<class>/*.jpg and test/<class>/*.jpg (optionally under car_data/car_data/)"
        )
    return load_cars_original(root, split)

"""Any folder of images, one sub-folder per class.

Layouts (``root`` is `DataConfig.root`)::

    root/<class>/**/<image>                          one set, split by a seeded fraction
    root/<image>                                     no class folders: one class, named after root
                                                     (a plain image collection, e.g. for a GAN)
    root/train/<class>/**/<image>                    explicit splits (when root has a train/ or
    root/test/<class>/**/<image>                     test/ folder, those two names are reserved)

- classes are the class folder names, sorted; with train/ and test/ levels, the union of both,
  so a label means the same class in both splits;
- images are found recursively below each class folder, extensions jpg, jpeg, png, bmp, gif,
  webp, tif, tiff in any case; hidden files and folders (name starting with ".") are ignored;
- with train/ and test/ levels, a class that has test images but no training image is named in a
  `DataWarning` (a model cannot learn it; its test images can only count as errors);
- without split levels, each class is split on its own (stratified): its files are ranked by
  ``sha256(f"{seed}/{relative path}")`` and the first ``round(test_fraction * n)`` go to test
  (at least one image on each side when the class has two or more). The split depends only on
  the seed and the file names, not on the OS, the scan order or the library versions.
"""

from __future__ import annotations

import hashlib
import math
import os
import warnings
from collections.abc import Iterator
from pathlib import Path

from viscoin.data.base import IMAGE_EXTENSIONS, DatasetError, DataWarning, LoadedSplit, listing

LAYOUT = (
    "expected root/<class>/<image>, or root/train/<class>/<image> and root/test/<class>/<image> "
    f"(images: {', '.join(e[1:] for e in IMAGE_EXTENSIONS)})"
)


def class_folders(folder: Path) -> list[str]:
    """Sorted names of the non-hidden sub-folders of `folder`."""
    return sorted(e.name for e in os.scandir(folder) if e.is_dir() and not e.name.startswith("."))


def _walk_images(folder: Path) -> Iterator[Path]:
    """Image files below `folder` (recursively), in scan order; hidden files and folders skipped."""
    for dirpath, dirnames, filenames in os.walk(folder, followlinks=True):
        dirnames[:] = [d for d in dirnames if not d.startswith(".")]
        for f in filenames:
            if not f.startswith(".") and os.path.splitext(f)[1].lower() in IMAGE_EXTENSIONS:
                yield Path(dirpath, f)


def image_files(folder: Path) -> list[Path]:
    """Image files below `folder` (recursively), sorted; hidden files and folders skipped."""
    return sorted(_walk_images(folder))


def _warn_untrained_classes(root: Path, classes: list[str], samples: list[tuple[Path, int]]) -> None:
    """`DataWarning` naming the test classes that have no training image."""
    tested = sorted({label for _, label in samples})
    missing = [classes[c] for c in tested if next(_walk_images(root / "train" / classes[c]), None) is None]
    if missing:
        warnings.warn(
            f"{root / 'test'}: {len(missing)} class(es) have test images but no training image in {root / 'train'}: "
            f"{listing(missing, 10)}; a model cannot learn them, and their test images can only count as errors",
            DataWarning,
            stacklevel=4,
        )


def has_split_folders(root: Path) -> bool:
    return (root / "train").is_dir() or (root / "test").is_dir()


def load_split_folders(root: Path, split: str) -> LoadedSplit:
    """``root/train/<class>/...`` and ``root/test/<class>/...``: the `split` part, labels over both."""
    classes = sorted({c for s in ("train", "test") if (root / s).is_dir() for c in class_folders(root / s)})
    if not classes:
        raise DatasetError(f"no class folders in {root / 'train'} or {root / 'test'}; {LAYOUT}")
    if not (root / split).is_dir():
        raise DatasetError(f"no {split}/ folder in {root}; {LAYOUT}")
    samples = [
        (path, label)
        for label, name in enumerate(classes)
        if (root / split / name).is_dir()
        for path in image_files(root / split / name)
    ]
    if not samples:
        raise DatasetError(f"no images in the class folders of {root / split}; {LAYOUT}")
    if split == "test":
        _warn_untrained_classes(root, classes, samples)
    return LoadedSplit(samples, classes)


def _split_rank(seed: int, root: Path, path: Path) -> str:
    return hashlib.sha256(f"{seed}/{path.relative_to(root).as_posix()}".encode()).hexdigest()


def num_test(n: int, test_fraction: float) -> int:
    """Test images of a class of `n`: round(test_fraction * n), keeping one on each side when n >= 2."""
    if n < 2:
        return 0
    return min(max(math.floor(test_fraction * n + 0.5), 1), n - 1)


def load_folder(root: Path, split: str, test_fraction: float = 0.2, split_seed: int = 0) -> LoadedSplit:
    """Samples and classes of `split` from an image folder (see the module docstring)."""
    if has_split_folders(root):
        return load_split_folders(root, split)
    classes = class_folders(root)
    folders = [root / name for name in classes]
    if not classes and image_files(root):
        classes, folders = [root.name or "images"], [root]
    if not classes:
        raise DatasetError(f"no class folders in {root}; {LAYOUT}")
    samples: list[tuple[Path, int]] = []
    for label, folder in enumerate(folders):
        files = sorted(image_files(folder), key=lambda p: _split_rank(split_seed, root, p))
        k = num_test(len(files), test_fraction)
        chosen = files[:k] if split == "test" else files[k:]
        samples.extend((path, label) for path in sorted(chosen))
    if not samples:
        raise DatasetError(f"no {split} images in the class folders of {root}; {LAYOUT}")
    return LoadedSplit(samples, classes)

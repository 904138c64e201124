"""CUB-200-2011 (Caltech-UCSD Birds), from its official folder.

Layout (``root`` is the ``CUB_200_2011`` folder, or the folder that contains it)::

    CUB_200_2011/images.txt                  "<image_id> <class folder>/<file>.jpg"
    CUB_200_2011/image_class_labels.txt      "<image_id> <class_id>"   (class ids from 1)
    CUB_200_2011/train_test_split.txt        "<image_id> <is_training_image>"
    CUB_200_2011/classes.txt                 "<class_id> <class name>" (optional; else the
                                             class folder names of images.txt)
    CUB_200_2011/images/<class folder>/<file>.jpg
    CUB_200_2011/attributes/image_attribute_labels.txt   (optional)
        "<image_id> <attribute_id> <is_present> <certainty_id> <time>"; a few lines of the
        real file have extra columns, so only the first three are read
    CUB_200_2011/attributes/attributes.txt or attributes.txt next to CUB_200_2011/ (optional)
        "<attribute_id> <name>", e.g. "1 has_bill_shape::curved_(up_or_down)"

Labels are the class ids in increasing order, from 0. Attributes (312 in the real data) are
``is_present`` as float 0/1; without a names file they are named ``attribute_<id>``.
"""

from __future__ import annotations

import functools
from pathlib import Path

import numpy as np
import torch

from viscoin.data.base import DatasetError, LoadedSplit, find_file


def _read_pairs(path: Path) -> dict[int, str]:
    """``"<int id> <rest>"`` lines -> {id: rest}; blank lines skipped."""
    out: dict[int, str] = {}
    for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        parts = line.strip().split(maxsplit=1)
        if not parts:
            continue
        try:
            if len(parts) != 2:
                raise ValueError
            out[int(parts[0])] = parts[1].strip()
        except ValueError:
            raise DatasetError(f"{path}, line {n}: expected '<id> <value>', got {line!r}") from None
    return out


def _read_ints(path: Path) -> dict[int, int]:
    out: dict[int, int] = {}
    for key, value in _read_pairs(path).items():
        try:
            out[key] = int(value.split()[0])
        except ValueError:
            raise DatasetError(f"{path}: id {key}: expected an integer, got {value!r}") from None
    return out


@functools.lru_cache(maxsize=4)
def _read_attribute_table(path: str, _mtime_ns: int, _size: int) -> np.ndarray:
    """[M, 3] int64 rows (image_id, attribute_id, is_present). Cached: train and test share it."""
    try:
        table = np.loadtxt(path, usecols=(0, 1, 2), dtype=np.int64, ndmin=2)
    except ValueError as exc:
        raise DatasetError(f"{path}: cannot parse '<image_id> <attribute_id> <is_present> ...' lines: {exc}") from exc
    if table.size and (table[:, :2].min() < 1 or not np.isin(table[:, 2], (0, 1)).all()):
        raise DatasetError(f"{path}: expected ids >= 1 and is_present in {{0, 1}}")
    return table


def _load_attributes(folder: Path, image_ids: list[int]) -> tuple[list[str], torch.Tensor] | None:
    labels_file = folder / "attributes" / "image_attribute_labels.txt"
    if not labels_file.is_file():
        return None
    stat = labels_file.stat()
    table = _read_attribute_table(str(labels_file), stat.st_mtime_ns, stat.st_size)
    try:
        names_file = find_file("attributes.txt", [folder / "attributes", folder, folder.parent], "CUB attribute names")
        names_by_id = _read_pairs(names_file)
    except DatasetError:  # names are optional
        names_by_id = {}
    num = max([*names_by_id, int(table[:, 1].max()) if table.size else 0])
    names = [names_by_id.get(i, f"attribute_{i}") for i in range(1, num + 1)]
    dense = np.zeros((max([*image_ids, int(table[:, 0].max()) if table.size else 0]) + 1, num), np.float32)
    dense[table[:, 0], table[:, 1] - 1] = table[:, 2]
    return names, torch.from_numpy(dense[image_ids])


def load_cub(root: Path, split: str) -> LoadedSplit:
    """Samples, classes and (when present) the 312 binary attributes of a CUB-200-2011 split."""
    images_file = find_file("images.txt", [root, root / "CUB_200_2011"], "CUB annotation file")
    folder = images_file.parent
    images = _read_pairs(images_file)
    class_of = _read_ints(find_file("image_class_labels.txt", [folder], "CUB annotation file"))
    is_train = _read_ints(find_file("train_test_split.txt", [folder], "CUB annotation file"))
    for name, table in (("image_class_labels.txt", class_of), ("train_test_split.txt", is_train)):
        missing = sorted(set(images) - set(table))
        if missing:
            raise DatasetError(f"{folder / name}: no entry for image id {missing[0]} (of images.txt)")

    if (folder / "classes.txt").is_file():
        class_names = _read_pairs(folder / "classes.txt")
    else:  # class folder names, e.g. "001.Black_footed_Albatross"
        class_names = {class_of[i]: Path(rel).parent.name for i, rel in images.items()}
    unknown = sorted(set(class_of.values()) - set(class_names))
    if unknown:
        raise DatasetError(f"{folder / 'classes.txt'}: no name for class id {unknown[0]}")
    class_ids = sorted(class_names)
    label_of = {cid: label for label, cid in enumerate(class_ids)}

    want = 1 if split == "train" else 0
    ids = sorted(i for i in images if is_train[i] == want)
    samples = [(folder / "images" / images[i], label_of[class_of[i]]) for i in ids]
    if not samples:
        raise DatasetError(f"{folder / 'train_test_split.txt'}: no {split} images")
    attributes = _load_attributes(folder, ids)
    names, values = attributes if attributes is not None else (None, None)
    return LoadedSplit(samples, [class_names[c] for c in class_ids], names, values)

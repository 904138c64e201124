"""Loading any trained concept model with the data it was trained on: the one preamble of every command.

    trained = load_trained("runs/viscoin-cub/viscoin", ["data.root=/mnt/CUB"], device="cuda")
    test = trained.dataset("test")                 # no augmentation; class count and names checked
    trained.model.encode(x)                        # the concept-model contract

A checkpoint folder's format tag (``config.json``) says which family wrote it; `load_concept_model`
dispatches on it. The data config saved with the checkpoint can be changed with ``data.KEY=VALUE``
overrides (the data moved); the dataset must then have the classes, in the same order, and the
resolution the model was trained with.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from viscoin.data import DataConfig, build_dataset
from viscoin.model.contract import ConceptModel
from viscoin.model.flaem import FORMAT as FLAEM_FORMAT
from viscoin.model.flaem import load_flaem, read_flaem_info
from viscoin.model.flint import FORMAT as FLINT_FORMAT
from viscoin.model.flint import load_flint, read_flint_info
from viscoin.model.viscoin_model import FORMAT as VISCOIN_FORMAT
from viscoin.model.viscoin_model import load_viscoin, read_viscoin_info
from viscoin.pretrained import resolve
from viscoin.training.config import data_config_with_overrides
from viscoin.utils.config import ConfigError
from viscoin.utils.io import CheckpointError, read_json

# format tag -> (read its config.json, load it(path, device=...)); every concept-model family adds itself here.
FAMILIES: dict[str, tuple[Callable[[str | os.PathLike], dict[str, Any]], Callable[..., ConceptModel]]] = {
    VISCOIN_FORMAT: (read_viscoin_info, load_viscoin),
    FLINT_FORMAT: (read_flint_info, load_flint),
    FLAEM_FORMAT: (read_flaem_info, load_flaem),
}


def checkpoint_format(path: str | os.PathLike) -> str:
    """The format tag of a checkpoint folder; a clear error when it is not a concept-model checkpoint."""
    config = resolve(path) / "config.json"
    if not config.is_file():
        raise CheckpointError(f"{path}: no config.json; expected a model folder written by `viscoin train`, "
                              f"`viscoin flint train` or `viscoin flaem train` (RUN/viscoin, RUN/flint, RUN/flaem)")
    info = read_json(config, what="checkpoint config")
    fmt = info.get("format") if isinstance(info, dict) else None
    if fmt not in FAMILIES:
        raise CheckpointError(f"{path}: format {fmt!r} is not a concept model; expected one of {sorted(FAMILIES)}")
    return str(fmt)


def read_model_info(path: str | os.PathLike) -> dict[str, Any]:
    """The checked ``config.json`` of a concept-model checkpoint (any family)."""
    return FAMILIES[checkpoint_format(path)][0](path)


def load_concept_model(path: str | os.PathLike, device: str | torch.device = "cpu") -> ConceptModel:
    """Any trained concept model, with its frozen networks from the recorded paths (checked by SHA-256)."""
    return FAMILIES[checkpoint_format(path)][1](path, device=device)


def class_names(info: dict[str, Any], num_classes: int) -> list[str]:
    """Class names saved with the checkpoint (``extra.classes``), else 'class i'."""
    names = (info.get("extra") or {}).get("classes")
    if isinstance(names, list) and len(names) == num_classes:
        return [str(n) for n in names]
    return [f"class {i}" for i in range(num_classes)]


@dataclass
class TrainedModel:
    """A loaded concept model, its checkpoint info, its data config and class names."""

    path: Path
    model: ConceptModel
    info: dict[str, Any]
    data: DataConfig
    classes: list[str]

    def dataset(self, split: str) -> Any:
        """The `split` without augmentation, checked against the model (classes, their order, resolution)."""
        ds = build_dataset(self.data, split, augment=False)
        if ds.num_classes != self.model.num_classes:
            raise ConfigError(f"the model has {self.model.num_classes} classes but {self.data.root or self.data.kind} "
                              f"has {ds.num_classes}")
        saved = (self.info.get("extra") or {}).get("classes")
        if isinstance(saved, list) and list(ds.classes) != [str(c) for c in saved]:
            diff = next(i for i, (a, b) in enumerate(zip(ds.classes, saved)) if a != str(b))
            raise ConfigError(f"{self.data.root or self.data.kind}: its classes differ from those the model was "
                              f"trained on (class {diff}: {ds.classes[diff]!r} here, {saved[diff]!r} in training)")
        return ds


def load_trained(
    path: str | os.PathLike,                # a concept-model folder (RUN/viscoin, RUN/flint, ...)
    data_overrides: Sequence[str] = (),     # "data.KEY=VALUE" changes to the saved data config
    device: str | torch.device = "cpu",
) -> TrainedModel:
    """Load a checkpoint with its data config (changed by `data_overrides`); checks the resolution."""
    path = Path(path)
    info = read_model_info(path)
    data = data_config_with_overrides((info.get("extra") or {}).get("data"), data_overrides, where=str(path))
    model = load_concept_model(path, device=device)
    if data.resolution != model.resolution:
        raise ConfigError(f"data.resolution={data.resolution} but the model takes {model.resolution}x{model.resolution}")
    return TrainedModel(path, model, info, data, class_names(info, model.num_classes))

"""Networks shipped inside the package (safetensors + JSON), named ``viscoin:<name>``.

``birds/classifier`` and ``birds/generator`` are the classifier f and the StyleGAN2 generator G of
the synthetic birds (`viscoin.data.synthetic`), used by ``viscoin demo``. They were produced by
viscoin's own commands with the shipped configs (``configs/classifier/birds.yaml``;
``configs/generator/birds-stage1.yaml`` to ``birds-stage4.yaml``, four stages that each fine-tune the
previous one; the README gives the exact command lines). Anywhere a
classifier or generator folder is expected (``viscoin train classifier=...``, ``viscoin generator
sample --generator ...``, ``viscoin classifier test ...``, ``init.source=...``), the name
``viscoin:birds/classifier`` can be given instead of a path; checkpoints record that name, so
they stay valid when the package moves.

The name is resolved in one place, where a checkpoint folder is read
(`viscoin.utils.checkpoint.read_checkpoint_folder_info`, under every classifier, generator and
concept-model loader), so a caller passes the name on as it is.
"""

from __future__ import annotations

import os
from pathlib import Path

PREFIX = "viscoin:"
ROOT = Path(__file__).resolve().parent
BIRDS_CLASSIFIER = "viscoin:birds/classifier"
BIRDS_GENERATOR = "viscoin:birds/generator"


def available() -> list[str]:
    """Names of the shipped networks (folders holding a config.json)."""
    return sorted(PREFIX + p.parent.relative_to(ROOT).as_posix() for p in ROOT.glob("*/*/config.json"))


def is_pretrained_name(path: str | os.PathLike) -> bool:
    """Whether `path` is a ``viscoin:<name>`` (a string, or a `Path` made of one by the command line)."""
    return isinstance(path, (str, os.PathLike)) and os.fspath(path).startswith(PREFIX)


def resolve(path: str | os.PathLike) -> Path:
    """The folder of a ``viscoin:<name>`` network, or `path` itself (expanded) for anything else;
    FileNotFoundError naming the shipped networks for an unknown name."""
    if not is_pretrained_name(path):
        return Path(path).expanduser()
    name = os.fspath(path)[len(PREFIX):]
    folder = (ROOT / name).resolve()
    if ROOT not in folder.parents or not (folder / "config.json").is_file():
        raise FileNotFoundError(f"{os.fspath(path)}: no such network shipped with viscoin; "
                                f"available: {', '.join(available())}")
    return folder

"""What several commands share: the arguments of every trainer, λ lists, activation maximisation's step
counts, the one-line user errors."""

from __future__ import annotations

import argparse
import math
import pickle
import tempfile
from pathlib import Path
from typing import NoReturn

from viscoin.interpret.visualise import ActivationMaximisationConfig
from viscoin.training.config import shipped_config_names
from viscoin.utils.config import ConfigError
from viscoin.utils.io import CheckpointError

# Errors the user can fix: printed as one line (`viscoin: error: ...`), exit status 2, no traceback.
USER_ERRORS = (ValueError, CheckpointError, ConfigError, FileNotFoundError, pickle.UnpicklingError)


class Parser(argparse.ArgumentParser):
    """argparse with one-line errors (``viscoin COMMAND: error: ...``, exit status 2) instead of the usage block."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def finite_float(text: str) -> float:
    """A finite number (nan and inf are refused)."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"expected a finite number, got {text!r}")
    return value


def _int(text: str, low: int) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
    if value < low:
        raise argparse.ArgumentTypeError(f"expected a whole number >= {low}, got {value}")
    return value


def positive_int(text: str) -> int:
    """A whole number >= 1."""
    return _int(text, 1)


def non_negative_int(text: str) -> int:
    """A whole number >= 0."""
    return _int(text, 0)


def add_run_arguments(parser: argparse.ArgumentParser, family: str, example: str = "optim.lr=1e-3") -> None:
    """The arguments every `... train` command shares: --config, --resume, KEY=VALUE overrides."""
    names = ", ".join(shipped_config_names(family))
    parser.add_argument("--config", required=True, help=f"YAML file, or a shipped config: {names}")
    parser.add_argument("--resume", action="store_true", help="continue from the last checkpoint in run.out_dir")
    parser.add_argument("--overwrite", action="store_true",
                        help="replace the run already in run.out_dir (without it, a folder holding a run or other "
                             "files is refused)")
    parser.add_argument("overrides", nargs="*", metavar="KEY=VALUE",
                        help=f"config overrides (dotted keys), e.g. {example}")


def parse_lambdas(text: str) -> tuple[float, ...]:
    """'0,1,2,4' -> (0.0, 1.0, 2.0, 4.0); ValueError naming the option otherwise."""
    try:
        values = tuple(float(v) for v in text.split(",") if v.strip())
    except ValueError as exc:
        raise ValueError(f"--lambdas: expected comma-separated numbers, e.g. 0,1,2,4; got {text!r}") from exc
    if len(values) < 2:
        raise ValueError(f"--lambdas: expected at least two values, e.g. 0,1,2,4; got {text!r}")
    return values


def add_am_argument(parser: argparse.ArgumentParser, where: str) -> None:
    """``--am-steps ROUNDS STEPS_A STEPS_B``: activation maximisation's length (FLINT's visualisation) in `where`."""
    d = ActivationMaximisationConfig()
    parser.add_argument("--am-steps", type=int, nargs=3, metavar=("ROUNDS", "STEPS_A", "STEPS_B"),
                        default=[d.rounds, d.steps_a, d.steps_b],
                        help=f"activation maximisation ({where}): rounds and steps per round of its two stages "
                             f"(default: {d.rounds} {d.steps_a} {d.steps_b}, the paper's {d.total_steps} steps; "
                             "FLINT's code: 12 200 180)")


def am_config(args: argparse.Namespace) -> ActivationMaximisationConfig:
    """The `ActivationMaximisationConfig` of a parsed ``--am-steps``."""
    rounds, steps_a, steps_b = args.am_steps
    return ActivationMaximisationConfig(rounds=rounds, steps_a=steps_a, steps_b=steps_b)


def check_writable(path: Path, option: str) -> None:
    """ValueError naming `option` and the path unless a file can be written at `path`.

    Creates nothing: it probes the nearest folder that exists on the way to `path` with a temporary file
    (deleted at once), so a command that fails later leaves no empty folder behind; the writer creates
    the missing folders when it writes.
    """
    path = Path(path)
    if path.is_dir():
        raise ValueError(f"{option} {path}: is a folder; give a file name")
    existing = path.parent
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if not existing.is_dir():
        raise ValueError(f"{option} {path}: {existing} is a file, not a folder")
    try:
        with tempfile.NamedTemporaryFile(dir=existing, prefix=f".{path.name}.", suffix=".check"):
            pass
    except OSError as exc:
        raise ValueError(f"{option} {path}: cannot write there ({exc.strerror or exc})") from exc

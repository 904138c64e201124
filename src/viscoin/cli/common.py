"""What several commands share: the arguments of every trainer, λ lists, activation maximisation's step
counts, the one-line user errors."""

from __future__ import annotations

import argparse
import pickle
from typing import Any

from viscoin.interpret.visualise import ActivationMaximisationConfig
from viscoin.training.config import shipped_config_names
from viscoin.utils.config import ConfigError
from viscoin.utils.io import CheckpointError

# Errors the user can fix: printed as one line (`viscoin: error: ...`), exit status 2, no traceback.
USER_ERRORS = (ValueError, CheckpointError, ConfigError, FileNotFoundError, pickle.UnpicklingError)


def add_run_arguments(parser: argparse.ArgumentParser, family: str, example: str = "optim.lr=1e-3") -> None:
    """The arguments every `... train` command shares: --config, --resume, KEY=VALUE overrides."""
    names = ", ".join(shipped_config_names(family))
    parser.add_argument("--config", required=True, help=f"YAML file, or a shipped config: {names}")
    parser.add_argument("--resume", action="store_true", help="continue from the last checkpoint in run.out_dir")
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


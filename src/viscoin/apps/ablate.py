"""`viscoin ablate`: the paper's ablation studies (appendix D, tables 6-10) on one base config.

    viscoin ablate --config demo --out viscoin-ablation        # the six studies on the synthetic birds
    viscoin ablate --studies gamma,orthogonality --out DIR loss.delta=0.5
    viscoin ablate --family flint --config birds --study model.num_concepts=8,16,32 --out DIR

A study is one or more config keys and the rows the paper tried (`Study`): γ (table 6), the support
representation Φ′ (table 7), K (table 8), the orthogonality loss (table 9), α and δ (table 10). K's
rows are relative to the base config (2K, K, K/2, K/4), the weights' absolute as in the paper. Any
``--study KEY=V1,V2,...`` is a study too, for any concept-model family; the VisCoIN-only studies
are refused for the baselines (`plan_ablation`).

The planner expands the base config and the studies into the distinct runs: a row whose values
equal the base config's is the base run (``runs/base``), and identical changes share one run
(``runs/loss.gamma=0.5``, ``runs/model.use_support=false,model.num_concepts=32``). Each run is an
ordinary training run folder (the family's trainer, e.g. `viscoin.model.train.train_viscoin`)
evaluated with only the metrics the tables need (`ablation_evaluation`).

The output folder OUT holds:

- ``.viscoin-ablation.json``: the manifest, the plan (family, base config, studies) and every run
  folder this command created there;
- ``runs/<name>/``: one training run folder per distinct run, with its ``evaluation.json``;
- ``ablation.md`` and ``ablation.json`` (written atomically): one table per study, like the paper's,
  and a line saying what it shows, computed from the numbers.

Running it again reuses every finished run whose config is the planned one and every evaluation made
with the same settings of the same model; a run killed half-way resumes from its last checkpoint. A
non-empty OUT without the manifest is refused, and so is a run folder the manifest does not list; a
different plan in an OUT is refused unless ``overwrite``, which retrains only the runs whose config
changed (in their own run folders, as `--overwrite` of a trainer does) and deletes nothing else.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import re
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import torch
import yaml

from viscoin.apps.demo import BASELINES, changed_settings, demo_evaluation
from viscoin.metrics.evaluate import EvaluateConfig, evaluate_checkpoint, fmt_number, table2_columns
from viscoin.model.train import VisCoINTrainConfig, train_viscoin
from viscoin.model.train_baseline import train_baseline
from viscoin.training.config import load_config
from viscoin.training.runner import RESUME_MAY_CHANGE
from viscoin.training.state import latest_checkpoint
from viscoin.utils.config import ConfigError, config_to_dict
from viscoin.utils.io import atomic_path, folder_is_empty, sha256_file, write_json

WRITER = "viscoin ablate"
MANIFEST = ".viscoin-ablation.json"     # the plan and the run folders this command created in OUT
RUNS = "runs"                           # OUT/runs/<name>/: one training run folder per distinct run
BASE_RUN = "base"
MARKDOWN_FILE = "ablation.md"
JSON_FILE = "ablation.json"
EVALUATION_FILE = "evaluation.json"
DEFAULT_OUT = Path("viscoin-ablation")
TAU = 0.1                               # the faithfulness threshold of the tables (paper table 6)
LAMBDA = 2.0                            # the consistency λ of the tables (main text)
ABLATION_METRICS = ("accuracy", "reconstruction", "faithfulness", "consistency")

# family -> (training config class, trainer(cfg, resume, overwrite), default base config)
FAMILIES: dict[str, tuple[type, Callable[..., Any], str]] = {
    "viscoin": (VisCoINTrainConfig, train_viscoin, "demo"),
    **{family: (cls, train_baseline, "birds") for family, cls in BASELINES.items()},
}


FAMILY_NAMES = {"viscoin": "VisCoIN", "flint": "FLINT", "flaem": "FLAEM"}


def network_folder(family: str) -> str:
    """The folder a family's trainer saves its final model in, inside the run folder."""
    cls = FAMILIES[family][0]
    return cls.model_class.network if hasattr(cls, "model_class") else family


# ==================================================================== studies


@dataclass(frozen=True)
class Times:
    """A value relative to the base config's: base × factor (an integer stays a whole number >= 1)."""

    factor: float

    def resolve(self, base: Any, key: str) -> Any:
        if isinstance(base, bool) or not isinstance(base, (int, float)):
            raise ConfigError(f"{key}: a relative value needs a number in the base config, got {base!r}")
        value = base * self.factor
        return max(1, round(value)) if isinstance(base, int) else value


@dataclass(frozen=True)
class Row:
    """One row of a study: its label and one value per key (absolute, or `Times` the base config's)."""

    label: str
    values: tuple[Any, ...]


Metric = Literal["accuracy", "mse", "lpips", "fid", "faithfulness", "consistency", "reconstruction_agreement"]


@dataclass(frozen=True)
class Claim:
    """One comparison the paper's conclusion makes: `metric` at row `b` is `expect` than at row `a`."""

    metric: Metric
    a: int
    b: int
    expect: Literal["higher", "lower"]


@dataclass(frozen=True)
class Study:
    """An ablation study: config keys and the rows tried, and the paper's table and conclusion."""

    name: str                              # what --studies calls it
    title: str                             # the table's title
    column: str                            # the value column's header
    keys: tuple[str, ...]                  # dotted config keys each row sets
    rows: tuple[Row, ...]                  # in the paper's order
    table: str = ""                        # the paper's table
    viscoin_only: bool = False             # the keys exist in VisCoIN's config only
    paper: str = ""                        # the paper's conclusion, in a sentence
    claims: tuple[Claim, ...] = field(default=())   # that conclusion as comparisons of two rows


def _weights(values: Sequence[float]) -> tuple[Row, ...]:
    return tuple(Row(format(v, "g"), (v,)) for v in values)


STUDIES: dict[str, Study] = {s.name: s for s in (
    Study("gamma", "γ, the weight of the reconstruction-classification loss", "γ", ("loss.gamma",),
          _weights((0.0, 0.1, 0.2, 0.5)), "table 6", True,
          "a higher γ gives more faithful concepts and less perceptually similar reconstructions",
          (Claim("faithfulness", 0, 3, "higher"), Claim("lpips", 0, 3, "higher"), Claim("mse", 0, 3, "higher"))),
    Study("support", "the support representation Φ′", "Φ′, K", ("model.use_support", "model.num_concepts"),
          (Row("with Φ′, K", (True, Times(1))), Row("without Φ′, 2K", (False, Times(2))),
           Row("without Φ′, K", (False, Times(1)))), "table 7", True,
          "Φ′ reconstructs better than no Φ′, even with twice the concepts",
          (Claim("mse", 0, 1, "higher"), Claim("mse", 0, 2, "higher"), Claim("lpips", 0, 1, "higher"),
           Claim("lpips", 0, 2, "higher"))),
    Study("k", "K, the number of concepts", "K", ("model.num_concepts",),
          (Row("2K", (Times(2),)), Row("K", (Times(1),)), Row("K/2", (Times(0.5),)), Row("K/4", (Times(0.25),))),
          "table 8", False, "fewer concepts reconstruct worse and classify slightly worse",
          (Claim("mse", 0, 3, "higher"), Claim("lpips", 0, 3, "higher"), Claim("accuracy", 0, 3, "lower"))),
    Study("orthogonality", "the orthogonality loss", "L_orth", ("loss.orthogonality",),
          (Row("with", (True,)), Row("without", (False,))), "table 9", True,
          "the orthogonality loss slightly improves the reconstruction's perceptual similarity",
          (Claim("mse", 0, 1, "higher"), Claim("lpips", 0, 1, "higher"))),
    Study("alpha", "α, the weight of the output fidelity loss", "α", ("loss.alpha",),
          _weights((0.1, 0.5, 2.0)), "table 10", True,
          "a small α costs accuracy, a large α costs reconstruction",
          (Claim("accuracy", 1, 0, "lower"), Claim("mse", 1, 2, "higher"), Claim("lpips", 1, 2, "higher"))),
    Study("delta", "δ, the weight of the sparsity loss", "δ", ("loss.delta",),
          _weights((0.2, 2.0, 20.0)), "table 10", True,
          "a large δ costs both accuracy and reconstruction",
          (Claim("accuracy", 0, 2, "lower"), Claim("mse", 0, 2, "higher"), Claim("lpips", 0, 2, "higher"))),
)}


def default_studies(family: str) -> list[str]:
    """Every study of appendix D that applies to `family` (the baselines: K only)."""
    return [name for name, s in STUDIES.items() if family == "viscoin" or not s.viscoin_only]


def _split_values(text: str) -> list[str]:
    """'1,[2, 3],x' -> ['1', '[2, 3]', 'x']: commas inside brackets or braces do not split."""
    parts, depth, start = [], 0, 0
    for i, ch in enumerate(text):
        depth += ch in "[{"
        depth -= ch in "]}"
        if ch == "," and depth == 0:
            parts.append(text[start:i])
            start = i + 1
    parts.append(text[start:])
    return [p.strip() for p in parts]


def parse_study(text: str) -> Study:
    """A study from ``KEY=V1,V2,...`` (each value YAML: 0.5, true, [0.5, 1.0]); ConfigError otherwise."""
    key, sep, values = text.partition("=")
    key = key.strip()
    if not sep or not key or any(not part for part in key.split(".")):
        raise ConfigError(f"--study {text!r}: expected KEY=V1,V2,..., e.g. --study model.num_concepts=8,16,32")
    if key == "run.out_dir":
        raise ConfigError("--study run.out_dir: the run folders are the ablation's own (OUT/runs/...)")
    raw = _split_values(values)
    if not values.strip() or any(not v for v in raw):
        raise ConfigError(f"--study {text!r}: expected comma-separated values after '=', e.g. {key}=0.1,0.5")
    rows = []
    for v in raw:
        try:
            rows.append(Row(v, (yaml.safe_load(v),)))
        except yaml.YAMLError as exc:
            raise ConfigError(f"--study {text!r}: value {v!r} is not valid YAML ({str(exc).splitlines()[0]})") from None
    return Study(key, key, key, (key,), tuple(rows))


def select_studies(family: str, names: Sequence[str] | None = None, custom: Sequence[str] = ()) -> list[Study]:
    """The studies named (None: the family's defaults unless `custom` studies are given) and the custom ones."""
    if family not in FAMILIES:
        raise ConfigError(f"--family {family}: expected one of {', '.join(FAMILIES)}")
    if names is None:
        names = [] if custom else default_studies(family)
    studies = []
    for name in names:
        if name not in STUDIES:
            raise ConfigError(f"--studies: unknown study {name!r}; expected some of {', '.join(STUDIES)} "
                              "(or a custom --study KEY=V1,V2,...)")
        study = STUDIES[name]
        if study.viscoin_only and family != "viscoin":
            raise ConfigError(f"study {name} ({study.title}) exists for VisCoIN only, not {family}; for {family} the "
                              f"appendix-D study is k (studies: {', '.join(default_studies(family))}), and any key of "
                              f"its config can be studied with --study KEY=V1,V2,..., e.g. --study "
                              "model.num_concepts=8,16,32")
        studies.append(study)
    studies += [parse_study(text) for text in custom]
    seen: set[str] = set()
    for study in studies:
        if study.name in seen:
            raise ConfigError(f"study {study.name} is given twice")
        seen.add(study.name)
    if not studies:
        raise ConfigError("no study to run: give --studies NAME,... or --study KEY=V1,V2,...")
    return studies


# ==================================================================== the plan


@dataclass(frozen=True)
class PlannedRun:
    """One distinct training run of the ablation."""

    name: str                                  # its folder under OUT/runs/
    changes: tuple[tuple[str, Any], ...]       # (key, value) differing from the base config (none: the base run)
    config: Any                                # the run's whole training config (run.out_dir inside OUT)
    studies: tuple[str, ...]                   # the studies it serves


@dataclass(frozen=True)
class PlannedRow:
    """A row of a study's table: its label, its values and the run that measures it."""

    label: str
    values: dict[str, Any]
    run: str


@dataclass(frozen=True)
class Plan:
    family: str
    config: str                                # the base config: a shipped name or a YAML file
    overrides: tuple[str, ...]                 # KEY=VALUE changes to the base config
    base: Any                                  # the base training config
    studies: tuple[Study, ...]
    runs: tuple[PlannedRun, ...]               # distinct runs, the base run first when planned
    rows: dict[str, tuple[PlannedRow, ...]]    # study name -> its rows

    def run(self, name: str) -> PlannedRun:
        return next(r for r in self.runs if r.name == name)

    def manifest_plan(self) -> dict[str, Any]:
        """What a later run must match to continue in the same OUT: family, base config, studies' rows."""
        return {"family": self.family, "base": comparable(self.base),
                "studies": [{"name": s.name, "keys": list(s.keys),
                             "rows": [[row.values[k] for k in s.keys] for row in self.rows[s.name]]}
                            for s in self.studies]}


def _plain(cfg: Any) -> dict[str, Any]:
    """A config as the YAML of its run folder reads back (tuples as lists)."""
    return yaml.safe_load(yaml.safe_dump(config_to_dict(cfg), sort_keys=False))


def _flat(data: Any, prefix: str = "") -> dict[str, Any]:
    if not isinstance(data, dict):
        return {prefix[:-1]: data}
    return {k: v for key, value in data.items() for k, v in _flat(value, f"{prefix}{key}.").items()}


def may_change(cfg_class: type) -> set[str]:
    """Dotted keys that never change a run's weights (where and how often it writes): ignored when comparing."""
    return {f"run.{k}" for k in RESUME_MAY_CHANGE} | set(getattr(cfg_class, "RESUME_MAY_CHANGE", ()))


def comparable(cfg: Any) -> dict[str, Any]:
    """A config's dotted keys and values, without those that never change a run (`may_change`)."""
    skip = may_change(type(cfg))
    return {k: v for k, v in _flat(_plain(cfg)).items() if k not in skip}


def _value(flat: dict[str, Any], key: str, family: str, study: str) -> Any:
    if key not in flat:
        sections = {k.rsplit(".", 1)[0] for k in flat if "." in k}
        what = f"is a section of the {family} config, not a value" if key in sections else \
            f"is not a key of the {family} config"
        raise ConfigError(f"study {study}: {key} {what}")
    return flat[key]


def _format(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        return str(int(value)) if value.is_integer() and abs(value) < 1e15 else repr(value)
    if isinstance(value, str):
        return value
    return json.dumps(value, separators=(",", ":"))


def run_name(changes: Sequence[tuple[str, Any]]) -> str:
    """``base``, or ``key=value,key=value`` (characters other than letters, digits and ``._,=+-`` replaced,
    with a hash of the changes then appended so that names stay distinct)."""
    if not changes:
        return BASE_RUN
    name = ",".join(f"{k}={_format(v)}" for k, v in changes)
    safe = re.sub(r"[^A-Za-z0-9._,=+-]", "_", name)
    if safe != name or len(safe) > 120:
        digest = hashlib.sha256(json.dumps(list(changes), default=str).encode()).hexdigest()[:8]
        safe = f"{safe[:100]}-{digest}"
    return safe


def plan_ablation(
    out: str | Path,
    studies: Sequence[Study],
    family: str = "viscoin",
    config: str | None = None,               # the base config (None: the family's default, demo / birds)
    overrides: Sequence[str] = (),            # KEY=VALUE changes to the base config
) -> Plan:
    """The distinct runs of `studies` on the base config (no file is read or written but the config's).

    Each row's values (relative ones resolved against the base config) go through the family's config class,
    so a bad key or value is a ConfigError naming the study and row; the keys whose value equals the base
    config's are dropped, and rows with the same remaining changes share one run."""
    cfg_class, _, default_config = FAMILIES[family]
    config = config or default_config
    runs_dir = Path(out) / RUNS

    def build(changes: dict[str, Any], name: str, where: str) -> Any:
        texts = [f"{k}={json.dumps(v)}" for k, v in changes.items()]
        try:
            return load_config(cfg_class, config, [*overrides, *texts, f"run.out_dir={json.dumps(str(runs_dir / name))}"],
                               family=family)
        except ConfigError as exc:
            if not where:
                raise
            raise ConfigError(f"{where}: {exc}") from None

    base = build({}, BASE_RUN, "")
    base_flat = _flat(_plain(base))
    runs: dict[str, dict[str, Any]] = {}         # name -> {"changes", "config", "studies"}
    rows: dict[str, tuple[PlannedRow, ...]] = {}
    for study in studies:
        planned = []
        for row in study.rows:
            if len(row.values) != len(study.keys):
                raise ConfigError(f"study {study.name}, row {row.label}: expected {len(study.keys)} values")
            wanted = {}
            for key, value in zip(study.keys, row.values):
                base_value = _value(base_flat, key, family, study.name)
                wanted[key] = value.resolve(base_value, key) if isinstance(value, Times) else value
            where = f"study {study.name}, row {row.label}"
            flat = _flat(_plain(build(wanted, BASE_RUN, where)))
            values = {k: flat[k] for k in study.keys}
            changes = tuple((k, v) for k, v in values.items() if v != base_flat[k])
            name = run_name(changes)
            if name in runs and runs[name]["changes"] != changes:
                raise ConfigError(f"{where}: run name {name} already names other changes")
            entry = runs.setdefault(name, {"changes": changes, "config": None, "studies": []})
            if entry["config"] is None:
                cfg = build(dict(changes), name, where)
                entry["config"] = cfg
            if study.name not in entry["studies"]:
                entry["studies"].append(study.name)
            resolved = [f"{_format(v)}" for raw, v in zip(row.values, values.values()) if isinstance(raw, Times)]
            label = row.label + "".join(f" = {v}" for v in resolved)
            planned.append(PlannedRow(label, values, name))
        rows[study.name] = tuple(planned)
    order = sorted(runs, key=lambda n: n != BASE_RUN)   # the base run first, then in the studies' order
    planned_runs = tuple(PlannedRun(n, runs[n]["changes"], runs[n]["config"], tuple(runs[n]["studies"])) for n in order)
    return Plan(family, config, tuple(overrides), base, tuple(studies), planned_runs, rows)


# ==================================================================== evaluation


def ablation_evaluation(
    n_faithfulness: int = 300,        # test images for faithfulness
    consistency_samples: int = 50,    # samples per set and concept
    max_concepts: int = 8,            # consistency on the M most relevant concepts
    max_train: int = 2400,            # training images for relevance and consistency (0: all)
    lpips: bool = True,               # LPIPS-VGG (skipped with a note when its weights are missing)
    progress: bool = False,
) -> tuple[EvaluateConfig, str | None]:
    """What the tables need, sized to take seconds per run on the birds (see the README): the demo's settings
    (FID on Inception features when its weights are cached, else on f's) with only accuracy, reconstruction,
    faithfulness at τ = 0.1 and consistency at λ = 2. Also returns why FID runs on f's features, if it does."""
    cfg, why = demo_evaluation(n_faithfulness, consistency_samples, max_train, progress)
    cfg = dataclasses.replace(cfg, metrics=ABLATION_METRICS, thresholds=(TAU,), consistency_lambdas=(LAMBDA,),
                              max_concepts=max_concepts, lpips=lpips)
    return cfg, why


def _settings(cfg: Any) -> Any:
    """Evaluation settings as JSON reads them back, without the progress bars."""
    data = json.loads(json.dumps(cfg if isinstance(cfg, dict) else cfg.to_dict()))
    data.pop("progress", None)
    return data


def reusable_evaluation(file: Path, cfg: EvaluateConfig, model_id: str) -> dict[str, Any] | None:
    """The evaluation in `file` when it was made of this model (`model_id`) with these settings."""
    try:
        result = json.loads(file.read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(result, dict) or result.get("model_config_sha256") != model_id:
        return None
    return result if _settings(result.get("config", {})) == _settings(cfg) else None


# ==================================================================== the tables


BETTER = {"accuracy": "higher", "mse": "lower", "lpips": "lower", "fid": "lower", "faithfulness": "higher",
          "consistency": "higher", "reconstruction_agreement": "higher"}
METRIC_NAMES = {"accuracy": "accuracy of g", "mse": "MSE", "lpips": "LPIPS", "fid": "FID", "faithfulness":
                f"faithfulness (τ={TAU})", "consistency": f"consistency (λ={LAMBDA:g})",
                "reconstruction_agreement": "reconstructions of the input's class"}


def table_metrics(result: dict[str, Any]) -> dict[str, float | None]:
    """The numbers of a row, from an evaluation (None when not measured)."""
    acc = result.get("accuracy") or {}
    rec = result.get("reconstruction") or {}
    ff = ((result.get("faithfulness") or {}).get("thresholds") or {}).get(str(TAU)) or {}
    cons = ((result.get("consistency") or {}).get("lambdas") or {}).get(str(LAMBDA)) or {}
    return {"accuracy": acc.get("g"), "accuracy_f": acc.get("f"), "mse": rec.get("mse"), "lpips": rec.get("lpips"),
            "fid": rec.get("fid"), "reconstruction_agreement": rec.get("reconstruction_agreement"),
            "reconstruction_ce": rec.get("reconstruction_ce"), "faithfulness": ff.get("median"),
            "faithfulness_random": ff.get("random_median"), "consistency": cons.get("mean"),
            "consistency_std": cons.get("std")}


def _show(metric: str, value: float | None) -> str:
    if value is None:
        return "–"
    if metric in ("accuracy", "consistency", "reconstruction_agreement"):
        return f"{100 * value:.1f}%"
    return fmt_number(value, {"mse": ".4f", "fid": ".2f"}.get(metric, ".3f"))


def _not_monotonic(claim: Claim, rows: Sequence[PlannedRow], metrics: dict[str, dict[str, float | None]]) -> str:
    """", not monotonic: ..." when the rows between the claim's two do not move steadily the claimed way (the
    end rows alone would hide a peak, e.g. faithfulness best at a middle γ); "" otherwise."""
    step = 1 if claim.b > claim.a else -1
    path = [rows[i] for i in range(claim.a, claim.b + step, step)]
    values = [metrics[r.run][claim.metric] for r in path]
    if len(path) < 3 or any(v is None for v in values):
        return ""
    rising = claim.expect == "higher"
    if all((v2 >= v1) if rising else (v2 <= v1) for v1, v2 in zip(values, values[1:])):
        return ""
    best = max(range(len(values)), key=lambda i: values[i] if rising else -values[i])
    return (f", not monotonic: {'highest' if rising else 'lowest'} at {path[best].label} "
            f"({_show(claim.metric, values[best])})")


def what_it_says(study: Study, rows: Sequence[PlannedRow], metrics: dict[str, dict[str, float | None]]) -> str:
    """One line: the paper's conclusion and, for each of its comparisons, whether these numbers agree (or, for a
    study without one, how the main numbers move from the first row to the last)."""
    if not study.claims:
        first, last = rows[0], rows[-1]
        moves = [f"{METRIC_NAMES[m]} {_show(m, metrics[first.run][m])} → {_show(m, metrics[last.run][m])}"
                 for m in ("accuracy", "mse", "lpips", "fid", "faithfulness", "consistency", "reconstruction_agreement")
                 if metrics[first.run][m] is not None and metrics[last.run][m] is not None]
        return f"From {first.label} to {last.label}: " + ", ".join(moves) + "."
    parts, held, judged = [], 0, 0
    for claim in study.claims:
        ra, rb = rows[claim.a], rows[claim.b]
        va, vb = metrics[ra.run][claim.metric], metrics[rb.run][claim.metric]
        if va is None or vb is None:
            continue
        judged += 1
        ok = vb > va if claim.expect == "higher" else vb < va
        held += ok
        parts.append(f"{METRIC_NAMES[claim.metric]} {_show(claim.metric, va)} ({ra.label}) → "
                     f"{_show(claim.metric, vb)} ({rb.label}): {'as' if ok else 'not as'} the paper"
                     + _not_monotonic(claim, rows, metrics))
    if not judged:
        return f"The paper: {study.paper}. Not measured here."
    verdict = ("holds here" if held == judged else "does not hold here" if held == 0
               else f"holds in {held} of {judged} comparisons here")
    return f"The paper: {study.paper}. {'; '.join(parts)}. It {verdict}."


def study_table(study: Study, rows: Sequence[PlannedRow], results: dict[str, dict[str, Any]]) -> list[str]:
    """Markdown lines of one study's table: value, K (unless the study sets it), accuracy of g (f), then the paper's
    table-2 columns."""
    header, cells = table2_columns([results[r.run] for r in rows])
    k_column = "model.num_concepts" not in study.keys
    header = [study.column, *(["K"] if k_column else []), "Accuracy g (f) %", *header]
    lines = ["| " + " | ".join(header) + " |", "|---|" + "---:|" * (len(header) - 1)]
    for row, row_cells in zip(rows, cells):
        result = results[row.run]
        acc = result.get("accuracy") or {}
        accuracy = "–" if "g" not in acc else f"{100 * acc['g']:.2f} ({100 * acc['f']:.2f})"
        label = f"**{row.label} (base)**" if row.run == BASE_RUN else row.label
        k = [str(result.get("num_concepts", "–"))] if k_column else []
        lines.append("| " + " | ".join([label, *k, accuracy, *row_cells]) + " |")
    return lines


def ablation_markdown(plan: Plan, results: dict[str, dict[str, Any]], says: dict[str, str]) -> str:
    """Every study's table with its line of conclusions."""
    base = f" with {' '.join(plan.overrides)}" if plan.overrides else ""
    out = ["# Ablations (appendix D)", "", f"{FAMILY_NAMES[plan.family]}, base config `{plan.config}`{base}; each row is "
           f"one training run (`{RUNS}/<name>/`, the base run in bold), evaluated on the test split.", ""]
    for study in plan.studies:
        where = f" (paper {study.table})" if study.table else ""
        out += [f"## {study.title}{where}", ""]
        out += study_table(study, plan.rows[study.name], results)
        out += ["", f"What it says: {says[study.name]}", ""]
    notes = {(r.get("reconstruction") or {}).get("lpips_note") for r in results.values()} - {None}
    out += [f"LPIPS {note}" for note in sorted(notes)]
    out += ["", f"Faithfulness: median FF_x at τ = {TAU} on a seeded test subset (the random baseline in brackets); "
            f"consistency: SVM test accuracy at λ = {LAMBDA:g}, mean ± std over the most relevant concepts; Rec. same "
            "class: the share of test images whose reconstruction f classifies as the input. One run per row, one "
            "seed: a difference smaller than what another seed changes says nothing."]
    return "\n".join(out).rstrip() + "\n"


# ==================================================================== the output folder


def read_manifest(out: Path) -> dict[str, Any] | None:
    """The manifest of an ablation in `out`, or None when there is no valid one."""
    try:
        data = json.loads((out / MANIFEST).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError):
        return None
    if not isinstance(data, dict) or data.get("written_by") != WRITER or not isinstance(data.get("runs"), list):
        return None
    if not all(isinstance(n, str) and n and "/" not in n and "\\" not in n and n not in (".", "..")
               for n in data["runs"]):
        return None
    return data


def _plan_differences(old: dict[str, Any], new: dict[str, Any]) -> str:
    if old.get("family") != new["family"]:
        return f"family {old.get('family')} -> {new['family']}"
    diffs = []
    a, b = old.get("base") or {}, new["base"]
    keys = sorted(k for k in a.keys() | b.keys() if a.get(k) != b.get(k))
    if keys:
        diffs.append("base config: " + ", ".join(keys[:6]) + (" ..." if len(keys) > 6 else ""))
    studies_a = {s["name"]: s for s in old.get("studies") or [] if isinstance(s, dict) and "name" in s}
    studies_b = {s["name"]: s for s in new["studies"]}
    added = [n for n in studies_b if n not in studies_a]
    removed = [n for n in studies_a if n not in studies_b]
    changed = [n for n in studies_b if n in studies_a and studies_a[n] != studies_b[n]]
    for what, names in (("studies added", added), ("studies left out", removed), ("studies changed", changed)):
        if names:
            diffs.append(f"{what}: {', '.join(names)}")
    return "; ".join(diffs) or "the plan's order"


def claim_output(out: Path, plan: Plan, overwrite: bool) -> set[str]:
    """The run folders this command created in `out` before (empty for a new folder); a ValueError for a
    non-empty folder without the manifest, or (unless `overwrite`) one holding another plan."""
    if folder_is_empty(out):
        return set()
    manifest = read_manifest(out)
    if manifest is None:
        raise ValueError(f"{out}: not empty and holds no {MANIFEST} (it was not created by `{WRITER}`); choose a new "
                         "or empty --out")
    if manifest.get("plan") != plan.manifest_plan() and not overwrite:
        raise ValueError(f"{out} holds an ablation of another plan ({_plan_differences(manifest.get('plan') or {}, plan.manifest_plan())}); "
                         "give --overwrite to run this plan there (finished runs with the same config are reused, "
                         "runs of the other plan are kept, nothing is deleted), or choose another --out")
    return set(manifest["runs"])


Action = Literal["train", "reuse", "resume", "restart", "retrain"]


@dataclass(frozen=True)
class RunState:
    action: Action       # train (new), reuse (finished), resume (checkpoint), restart / retrain (replace the run)
    why: str = ""


def run_state(run: PlannedRun, folder: Path, owned: set[str], network: str, overwrite: bool) -> RunState:
    """What to do with a planned run's folder; a ValueError when it is not ours or holds another config."""
    if folder_is_empty(folder):
        return RunState("train")
    if run.name not in owned:
        raise ValueError(f"{folder}: not created by `{WRITER}` (not listed in {folder.parent.parent / MANIFEST}); "
                         "move it away or choose another --out")
    skip = may_change(type(run.config))
    changed = [k for k in changed_settings(folder / "config.yaml", run.config) if k not in skip]
    finished = (folder / network / "config.json").is_file()
    checkpoint = latest_checkpoint(folder / "checkpoints")
    if not finished and checkpoint is None:
        return RunState("restart", "stopped before its first checkpoint")
    if not changed:
        return RunState("reuse") if finished else RunState("resume", f"from {checkpoint.name}")  # type: ignore[union-attr]
    what = ", ".join(changed[:6]) + (" ..." if len(changed) > 6 else "")
    if not overwrite:
        raise ValueError(f"{folder} holds a run with other settings ({what} differ); give --overwrite to train it "
                         "again, or choose another --out")
    return RunState("retrain", f"{what} changed")


def _describe(state: RunState, cfg: Any) -> str:
    length = f"{cfg.iterations} steps" if getattr(cfg, "iterations", 0) else f"{getattr(cfg, 'epochs', '?')} epochs"
    k = cfg.model.num_concepts
    return {"train": f"train ({length}, K={k})", "reuse": "reuse the trained model",
            "resume": f"resume ({state.why})", "restart": f"train again ({state.why}; {length}, K={k})",
            "retrain": f"train again ({state.why}; {length}, K={k})"}[state.action]


def _write_manifest(out: Path, plan: Plan, owned: set[str]) -> None:
    write_json(out / MANIFEST, {"written_by": WRITER, "plan": plan.manifest_plan(), "config": plan.config,
                                "overrides": list(plan.overrides), "runs": sorted(owned)})


# ==================================================================== the driver


def run_ablation(
    out: str | Path,
    studies: Sequence[Study],
    family: str = "viscoin",
    config: str | None = None,                 # the base config (None: the family's default)
    overrides: Sequence[str] = (),              # KEY=VALUE changes to the base config
    evaluation: EvaluateConfig | None = None,   # None: `ablation_evaluation()`
    overwrite: bool = False,                    # run another plan in an OUT that holds one
    device: str | torch.device = "cpu",         # where the evaluations run
    log: Callable[[str], None] = print,
) -> dict[str, Any]:
    """Plan, train (or reuse / resume), evaluate and tabulate; returns what ``OUT/ablation.json`` holds."""
    start = time.perf_counter()
    out = Path(out)
    plan = plan_ablation(out, studies, family, config, overrides)
    if evaluation is None:
        evaluation, why = ablation_evaluation()
        if why:
            log(f"FID on f's features: {why}")
    owned = claim_output(out, plan, overwrite)
    network = network_folder(family)
    states = [run_state(run, out / RUNS / run.name, owned, network, overwrite) for run in plan.runs]

    log(f"{WRITER}: {len(plan.studies)} studies, {len(plan.runs)} runs in {out} ({family}, base config {plan.config}"
        + (f" with {' '.join(plan.overrides)}" if plan.overrides else "") + ")")
    width = max(len(f"{RUNS}/{r.name}") for r in plan.runs)
    for run, state in zip(plan.runs, states):
        log(f"  {f'{RUNS}/{run.name}':<{width}}  {_describe(state, run.config):<40}  {', '.join(run.studies)}")

    _write_manifest(out, plan, owned | {r.name for r in plan.runs})
    _, trainer, _ = FAMILIES[family]
    results: dict[str, dict[str, Any]] = {}
    timings: dict[str, dict[str, Any]] = {}
    for number, (run, state) in enumerate(zip(plan.runs, states), 1):
        folder = out / RUNS / run.name
        prefix = f"[{number}/{len(plan.runs)}] {RUNS}/{run.name}"
        took: dict[str, Any] = {"training": state.action}
        if state.action != "reuse":
            log(f"{prefix}: {_describe(state, run.config)}")
            t0 = time.perf_counter()
            trainer(run.config, resume=state.action == "resume", overwrite=state.action in ("restart", "retrain"))
            took["train_s"] = round(time.perf_counter() - t0, 1)
        model = folder / network
        model_id = sha256_file(model / "config.json")
        result = reusable_evaluation(folder / EVALUATION_FILE, evaluation, model_id)
        took["evaluation"] = "reuse" if result is not None else "evaluated"
        if result is None:
            log(f"{prefix}: evaluating")
            t0 = time.perf_counter()
            result = {**evaluate_checkpoint(model, evaluation, device), "model_config_sha256": model_id}
            took["evaluate_s"] = round(time.perf_counter() - t0, 1)
            write_json(folder / EVALUATION_FILE, result)
        results[run.name] = result
        timings[run.name] = took
        m = table_metrics(result)
        log(f"{prefix}: {'reused; ' if state.action == 'reuse' else ''}accuracy g {_show('accuracy', m['accuracy'])}, "
            f"MSE {_show('mse', m['mse'])}, FID {_show('fid', m['fid'])}, faithfulness {_show('faithfulness', m['faithfulness'])}, "
            f"consistency {_show('consistency', m['consistency'])}")

    metrics = {name: table_metrics(r) for name, r in results.items()}
    says = {s.name: what_it_says(s, plan.rows[s.name], metrics) for s in plan.studies}
    markdown = ablation_markdown(plan, results, says)
    data = {
        "written_by": WRITER, "family": family, "config": plan.config, "overrides": list(plan.overrides),
        "base": _plain(plan.base), "evaluation": evaluation.to_dict(),
        "runs": {run.name: {"folder": f"{RUNS}/{run.name}", "evaluation": f"{RUNS}/{run.name}/{EVALUATION_FILE}",
                            "changes": dict(run.changes), "studies": list(run.studies), "metrics": metrics[run.name],
                            **timings[run.name]} for run in plan.runs},
        "studies": [{"name": s.name, "title": s.title, "paper_table": s.table, "keys": list(s.keys),
                     "paper": s.paper, "says": says[s.name],
                     "rows": [{"label": row.label, "values": row.values, "run": row.run, "base": row.run == BASE_RUN,
                               "metrics": metrics[row.run]} for row in plan.rows[s.name]]} for s in plan.studies],
        "elapsed_s": round(time.perf_counter() - start, 1),
    }
    write_json(out / JSON_FILE, data)
    with atomic_path(out / MARKDOWN_FILE) as tmp:
        tmp.write_text(markdown, encoding="utf-8")
    data["markdown"] = markdown
    return data

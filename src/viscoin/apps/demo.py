"""`viscoin demo`: VisCoIN end to end on the synthetic birds, offline, in minutes on a CPU.

    viscoin demo                      # -> viscoin-demo/report/index.html
    viscoin demo --out DIR --config demo-fast iterations=100

Steps (each prints a line and shows a progress bar):

1. draw (or reuse) the synthetic birds (`viscoin.data.synthetic`, cached in the user cache folder);
2. find the shipped classifier f and generator G (``viscoin:birds/classifier``,
   ``viscoin:birds/generator``, see `viscoin.pretrained`); training loads them;
3. train Ψ, Θ, Ω with the shipped ``demo`` config (`viscoin.model.train`); a killed demo resumes
   from its last checkpoint when run again, a finished one is reused;
4. evaluate with every metric (`viscoin.metrics.evaluate`): accuracy, reconstruction, faithfulness,
   consistency and the ground-truth metrics. FID uses the Inception weights when they are in torch
   hub's cache, else f's features (labelled as such); LPIPS is skipped (with a note) without VGG16
   weights;
5. write the HTML report (`viscoin.report`) and print a summary with its path.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import torch
import yaml

from viscoin.data import build_dataset
from viscoin.interpret.visualise import ActivationMaximisationConfig
from viscoin.metrics.compare import paper_claims, write_comparison
from viscoin.metrics.evaluate import EvaluateConfig, evaluate_checkpoint, markdown_tables
from viscoin.model.loading import load_trained
from viscoin.model.train import VisCoINTrainConfig, train_viscoin
from viscoin.model.train_baseline import FlaemTrainConfig, FlintTrainConfig, train_baseline
from viscoin.pretrained import resolve
from viscoin.report.html import write_report
from viscoin.training.config import load_config
from viscoin.training.state import latest_checkpoint
from viscoin.utils.fid import inception_cache_path
from viscoin.utils.config import ConfigError, config_to_dict
from viscoin.utils.io import read_json, write_json

DEFAULT_OUT = Path("viscoin-demo")


def _fid_features() -> tuple[str, str | None]:
    """'inception' when its weights are available offline, else 'classifier' and why."""

    file = inception_cache_path()
    if not file.is_file():
        return "classifier", f"no Inception weights at {file}"
    return "inception", None


def _step(number: int, text: str, total: int = 5) -> None:
    print(f"[{number}/{total}] {text}", flush=True)


# The visualisation FID on the birds: at most 24 relevant class-concept pairs (the demo's VisCoIN has
# about that many), and FLINT's activation maximisation shortened to 2 rounds x (25 + 25) steps so that it
# takes minutes on a CPU (the paper: 1000 steps, FLINT's code: 4,560).
DEMO_VIS_FID_PAIRS = 24
DEMO_AM = ActivationMaximisationConfig(rounds=2, steps_a=25, steps_b=25)


def demo_evaluation(n_faithfulness: int = 1000, consistency_samples: int = 50, max_train: int = 2400,
                    progress: bool = True) -> tuple[EvaluateConfig, str | None]:
    """The evaluation settings of the demo and of its comparison (the same for every system), and why FID
    runs on f's features when it does."""
    fid, why = _fid_features()
    cfg = EvaluateConfig(fid_features=fid, n_faithfulness=n_faithfulness, consistency_samples=consistency_samples,
                         max_train_samples=max_train, consistency_lambdas=(2.0, 4.0),
                         vis_fid_pairs=DEMO_VIS_FID_PAIRS, am=DEMO_AM, progress=progress)
    return cfg, why


def run_demo(
    out: Path = DEFAULT_OUT,
    config: str = "demo",
    overrides: list[str] | tuple[str, ...] = (),
    fresh: bool = False,
    max_train: int = 2400,
    n_faithfulness: int = 1000,
    consistency_samples: int = 50,
    report: bool = True,                  # also write the HTML report (the comparison writes its own)
) -> dict[str, Any]:
    """Run the demo into `out`; returns the evaluation (also written to ``out/evaluation.json``)."""
    start = time.perf_counter()
    out = Path(out)
    cfg = load_config(VisCoINTrainConfig, config, [*overrides, f"run.out_dir={out.as_posix()}"], family="viscoin")

    _step(1, "the synthetic birds dataset (drawn once, then cached)")
    print(f"      {build_dataset(cfg.data, 'train')}")  # draws both splits on first use

    _step(2, f"the shipped networks: f = {cfg.classifier} ({resolve(cfg.classifier)}), "
             f"G = {cfg.generator} ({resolve(cfg.generator)})")

    model_dir = out / "viscoin"
    done = (model_dir / "config.json").is_file() and not fresh
    if done:
        changed = changed_settings(out / "config.yaml", cfg)
        if changed:
            raise ConfigError(f"{out} holds a model trained with other settings ({', '.join(changed)} differ); "
                              f"give --fresh to train again with these, or another --out")
        _step(3, f"reusing the trained model in {model_dir} (--fresh to train again)")
    else:
        resume = not fresh and latest_checkpoint(out / "checkpoints") is not None
        _step(3, f"training VisCoIN ({cfg.iterations} steps, K={cfg.model.num_concepts})"
              + (" - resuming" if resume else ""))
        train_viscoin(cfg, resume=resume, overwrite=fresh)   # --fresh replaces the earlier run

    eval_cfg, why = demo_evaluation(n_faithfulness, consistency_samples, max_train)
    device = torch.device("cpu")
    result = reusable_evaluation(out / "evaluation.json", model_dir, eval_cfg) if done else None
    if result is not None:
        _step(4, f"reusing the evaluation in {out / 'evaluation.json'} (same model, same settings)")
    else:
        _step(4, "evaluating with every metric" + (f" (FID on f's features: {why})" if why else ""))
        result = evaluate_checkpoint(model_dir, eval_cfg, device)
        result["model_weights_sha256"] = read_json(model_dir / "config.json", "model")["weights_sha256"]
        write_json(out / "evaluation.json", result)
    if not report:
        return result

    _step(5, "writing the HTML report")
    index = write_report(model_dir, out / "report", metrics=result, device=device,
                         metrics_source=str(out / "evaluation.json"), overwrite=fresh)
    elapsed = time.perf_counter() - start
    print()
    print(markdown_tables(result))
    print(summary(result, index, elapsed))
    return result


BASELINES = {"flint": FlintTrainConfig, "flaem": FlaemTrainConfig}   # family -> its training config


def training_length(cfg: Any) -> str:
    """How long a baseline config trains, as its trainer counts it: ``iterations`` steps when it is
    positive, otherwise ``epochs`` passes over the training split (FLAEM's shipped config)."""
    return f"{cfg.iterations} steps" if cfg.iterations > 0 else f"{cfg.epochs} epochs"


def run_comparison(
    out: Path = DEFAULT_OUT,
    fresh: bool = False,
    max_train: int = 2400,
    n_faithfulness: int = 1000,
    consistency_samples: int = 50,
) -> dict[str, Any]:
    """`viscoin demo --compare`: the demo's VisCoIN, then FLINT and FLAEM on the same birds, the same f and
    the same K (their shipped ``birds`` configs), each evaluated with the same settings; the paper's
    tables 1 and 2 side by side (``OUT/comparison/``) and the report's comparison page. Every stage is
    reused when finished and resumed when interrupted."""
    start = time.perf_counter()
    out = Path(out)
    total = 4
    _step(1, "VisCoIN: the demo (trained, evaluated; reused when finished)", total)
    viscoin_result = run_demo(out, "demo", (), fresh, max_train, n_faithfulness, consistency_samples, report=False)
    eval_cfg, _ = demo_evaluation(n_faithfulness, consistency_samples, max_train)
    device = torch.device("cpu")
    files = [out / "evaluation.json"]
    results = [viscoin_result]
    for number, (family, config_class) in enumerate(BASELINES.items(), 2):
        run_dir = out / family
        cfg = load_config(config_class, "birds", [f"run.out_dir={run_dir.as_posix()}"], family=family)
        model_dir = run_dir / family
        if (model_dir / "config.json").is_file() and not fresh:
            changed = changed_settings(run_dir / "config.yaml", cfg)
            if changed:
                raise ConfigError(f"{run_dir} holds a {family} model trained with other settings ({', '.join(changed)} "
                                  "differ); give --fresh to train again, or another --out")
            _step(number, f"{family.upper()}: reusing the trained model in {model_dir}", total)
        else:
            resume = not fresh and latest_checkpoint(run_dir / "checkpoints") is not None
            _step(number, f"{family.upper()}: training ({training_length(cfg)}, K={cfg.model.num_concepts}, the same f)"
                  + (" - resuming" if resume else ""), total)
            train_baseline(cfg, resume=resume, overwrite=fresh)
        print(f"      evaluating {family.upper()} with the same settings", flush=True)
        results.append(evaluate_checkpoint(model_dir, eval_cfg, device))
        files.append(run_dir / "evaluation.json")
        write_json(files[-1], results[-1])

    _step(total, "the comparison: tables (OUT/comparison/) and the report's comparison page", total)
    written = write_comparison(files, out / "comparison", names=["VisCoIN", "FLINT", "FLAEM"])
    systems = [load_trained(path, device=device) for path in (out / "viscoin", out / "flint" / "flint",
                                                               out / "flaem" / "flaem")]
    index = write_report(out / "viscoin", out / "report", metrics=viscoin_result, device=device,
                         metrics_source=str(out / "evaluation.json"), trained=systems[0], comparison=systems[1:],
                         comparison_metrics=results, am=DEMO_AM, overwrite=fresh)
    elapsed = time.perf_counter() - start
    print()
    print(written.markdown)
    print("What the paper claims, on these birds:")
    for line in paper_claims(results, ["VisCoIN", "FLINT", "FLAEM"]):
        print(f"  {line}")
    print(f"  tables: {written.markdown_path.resolve()}; report: {index.resolve()} (comparison.html)  "
          f"({elapsed / 60:.1f} min)")
    return {"systems": results, "comparison": str(written.json_path)}


def reusable_evaluation(path: Path, model_dir: Path, eval_cfg: EvaluateConfig) -> dict[str, Any] | None:
    """The evaluation in `path` when it is of the model now in `model_dir` (the SHA-256 of its weights, recorded
    by the demo) with the settings `eval_cfg`; None otherwise (then the demo evaluates again)."""
    try:
        old = read_json(path, "evaluation")
        sha = read_json(model_dir / "config.json", "model")["weights_sha256"]
    except (OSError, ValueError, KeyError, TypeError):
        return None
    same_settings = isinstance(old, dict) and old.get("config") == json.loads(json.dumps(eval_cfg.to_dict()))
    return old if same_settings and old.get("model_weights_sha256") == sha else None


def changed_settings(saved: Path, cfg: Any) -> list[str]:
    """Dotted keys whose values in `cfg` differ from the config saved at `saved` (all of them if it is missing)."""
    if not saved.is_file():
        return ["config.yaml (missing)"]
    old = yaml.safe_load(saved.read_text()) or {}
    new = yaml.safe_load(yaml.safe_dump(config_to_dict(cfg), sort_keys=False))

    def flat(d: Any, prefix: str = "") -> dict[str, Any]:
        if not isinstance(d, dict):
            return {prefix[:-1]: d}
        return {k: v for key, value in d.items() for k, v in flat(value, f"{prefix}{key}.").items()}

    a, b = flat(old), flat(new)
    return sorted(k for k in a.keys() | b.keys() if a.get(k) != b.get(k))


def summary(result: dict[str, Any], index: Path, elapsed: float) -> str:
    """A few lines: the goals of the benchmark and where the report is."""
    acc = result.get("accuracy", {})
    lines = ["Summary"]
    if acc:
        lines.append(f"  accuracy: g {100 * acc['g']:.1f}% vs f {100 * acc['f']:.1f}% "
                     f"({100 * acc['g'] / max(acc['f'], 1e-9):.1f}% of f)")
    ff = result.get("faithfulness", {}).get("thresholds", {})
    if ff:
        tau = min(ff, key=float)
        lines.append(f"  faithfulness (median, τ={tau}): {ff[tau]['median']:.3f}, random baseline "
                     f"{ff[tau]['random_median']:.3f}")
    cons = result.get("consistency", {}).get("lambdas", {})
    if cons:
        lam = min(cons, key=float)
        if cons[lam]["mean"] is not None:
            lines.append(f"  consistency (λ={lam}): {100 * cons[lam]['mean']:.1f}%")
    gt = result.get("ground_truth", {})
    if "alignment" in gt:
        cd = gt["alignment"]["class_defining"]
        lines.append(f"  class-defining attributes captured (AUC >= 0.9): {cd['captured_count']}/{cd['count']}, "
                     f"mean AUC {cd['mean_auc']:.3f}")
        if gt["visualisation"]["correct"] is not None:
            lines.append(f"  λ sweeps judged correct by the attribute probe: "
                         f"{100 * gt['visualisation']['correct']:.0f}%")
    lines.append(f"  report: {index.resolve()}  ({elapsed / 60:.1f} min)")
    return "\n".join(lines)

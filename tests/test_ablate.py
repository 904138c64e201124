"""`viscoin ablate` (appendix D): the planner's runs and names, and a tiny study end to end: its tables against
each run's evaluation, reuse of finished runs, resume of a killed one, refusals of folders it does not own."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from conftest import make_folder, tiny_f, tiny_G
from viscoin.apps import ablate
from viscoin.apps.ablate import (
    MANIFEST,
    STUDIES,
    plan_ablation,
    select_studies,
    table_metrics,
)
from viscoin.classifier.model import save_classifier
from viscoin.cli import main
from viscoin.metrics.evaluate import EvaluateConfig
from viscoin.stylegan import save_network
from viscoin.training.state import LATEST

pytestmark = pytest.mark.usefixtures("one_thread")

TINY_EVAL = EvaluateConfig(metrics=ablate.ABLATION_METRICS, thresholds=(ablate.TAU,), consistency_lambdas=(ablate.LAMBDA,),
                           n_faithfulness=5, consistency_samples=4, max_concepts=2, cv_folds=2, svm_c_grid=(1.0,),
                           fid_features="classifier", lpips=False, batch_size=8, progress=False)


def snapshot(folder: Path) -> dict[str, int]:
    """Every file under `folder` with its modification time (ns)."""
    return {str(p.relative_to(folder)): p.stat().st_mtime_ns for p in sorted(folder.rglob("*")) if p.is_file()}


# ---------------------------------------------------------------------------------------------- the plan


def test_the_default_plan_shares_the_base_run_and_names_runs_by_their_changes(tmp_path):
    plan = plan_ablation(tmp_path / "out", select_studies("viscoin"))   # the demo config: K = 16, γ = 0.1, ...
    names = [r.name for r in plan.runs]
    assert names == ["base", "loss.gamma=0", "loss.gamma=0.2", "loss.gamma=0.5",
                     "model.use_support=false,model.num_concepts=32", "model.use_support=false",
                     "model.num_concepts=32", "model.num_concepts=8", "model.num_concepts=4",
                     "loss.orthogonality=false", "loss.alpha=0.1", "loss.alpha=2", "loss.delta=2", "loss.delta=20"]
    assert plan.run("base").studies == ("gamma", "support", "k", "orthogonality", "alpha", "delta")
    assert plan.run("base").changes == () and plan.run("base").config.run.out_dir == str(tmp_path / "out" / "runs" / "base")
    assert plan.run("loss.delta=20").config.loss.delta == 20.0
    assert plan.run("model.use_support=false,model.num_concepts=32").config.model.num_concepts == 32
    # rows in the paper's order, relative K resolved against the base, every study's base row the base run
    rows = {s: [(r.label, r.run) for r in plan.rows[s]] for s in plan.rows}
    assert rows["k"] == [("2K = 32", "model.num_concepts=32"), ("K = 16", "base"), ("K/2 = 8", "model.num_concepts=8"),
                         ("K/4 = 4", "model.num_concepts=4")]
    assert rows["support"] == [("with Φ′, K = 16", "base"), ("without Φ′, 2K = 32", "model.use_support=false,model.num_concepts=32"),
                               ("without Φ′, K = 16", "model.use_support=false")]
    assert [r for _, r in rows["gamma"]] == ["loss.gamma=0", "base", "loss.gamma=0.2", "loss.gamma=0.5"]

    # K relative to an overridden base; a custom study's row equal to another study's shares its run
    plan = plan_ablation(tmp_path / "out", select_studies("viscoin", ["k", "gamma"], ["loss.gamma=0.5,0.1"]),
                         overrides=["model.num_concepts=8", "loss.gamma=0.2"])
    assert [r.label for r in plan.rows["k"]] == ["2K = 16", "K = 8", "K/2 = 4", "K/4 = 2"]
    assert [r.run for r in plan.rows["loss.gamma"]] == ["loss.gamma=0.5", "loss.gamma=0.1"]
    assert [r.run for r in plan.rows["gamma"]][1:] == ["loss.gamma=0.1", "base", "loss.gamma=0.5"]
    assert len(plan.runs) == 1 + 3 + 3   # base, three K, three γ (0.5 and 0.1 shared by both γ studies)

    # the baselines: K only by default, on their own key
    plan = plan_ablation(tmp_path / "out", select_studies("flint"), "flint")
    assert [r.name for r in plan.runs] == ["base", "model.num_concepts=32", "model.num_concepts=8", "model.num_concepts=4"]
    assert set(STUDIES) == {"gamma", "support", "k", "orthogonality", "alpha", "delta"}


@pytest.mark.parametrize(("args", "expected"), [
    (["--study", "loss.gama=0,1"], "loss.gama is not a key of the viscoin config"),
    (["--study", "loss.gamma=-1,1"], "loss.gamma: expected >= 0"),
    (["--study", "loss.gamma="], "expected comma-separated values"),
    (["--study", "loss=1,2"], "loss is a section"),
    (["--studies", "gamma,beta"], "unknown study 'beta'"),
    (["--family", "flint", "--config", "birds", "--studies", "gamma"], "exists for VisCoIN only"),
    (["--studies", "k", "model.num_concepts=0"], "model.num_concepts"),
])
def test_bad_studies_are_one_line_errors_and_write_nothing(tmp_path, capsys, args, expected):
    out = tmp_path / "out"
    assert main(["ablate", "--out", str(out), *args]) == 2
    err = capsys.readouterr().err
    assert err.startswith("viscoin: error: ") and expected in err and err.count("\n") == 1, err
    assert not out.exists()


# ---------------------------------------------------------------------------------------------- end to end


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> dict:
    """A tiny image folder, f and G, the base overrides of the `tiny` config for them, and a first ablation of two
    studies (γ = 0.1 (base), 0.5; orthogonality with, without: 3 runs of 3 steps) through the command line."""
    root = tmp_path_factory.mktemp("ablate")
    folder = make_folder(root / "shapes", per_class=6, size=40)
    save_classifier(tiny_f(), root / "f")
    save_network(tiny_G(32), root / "G")
    base = [f"data.root={json.dumps(str(folder))}", "data.test_fraction=0.5", f"classifier={json.dumps(str(root / 'f'))}",
            f"generator={json.dumps(str(root / 'G'))}", "model.num_concepts=4", "model.adapter_channels=8",
            "iterations=3", "batch_real=2", "batch_synthetic=2", "sample_every=0", "eval_every=0",
            "run.progress=false", "run.ckpt_every=1", "run.keep_last=2", "run.precision=32-true"]
    out = root / "out"
    args = ["ablate", "--config", "tiny", "--out", str(out), "--study", "loss.gamma=0.1,0.5",
            "--studies", "orthogonality", *base]
    with pytest.MonkeyPatch.context() as mp:   # the command line's evaluation, shrunk for the tiny data
        mp.setattr("viscoin.cli.ablate.ablation_evaluation", lambda *a, **k: (TINY_EVAL, None))
        assert main(args) == 0
    studies = select_studies("viscoin", ["orthogonality"], ["loss.gamma=0.1,0.5"])
    return {"out": out, "base": base, "studies": studies}


def rerun(tiny: dict, **kwargs) -> list[str]:
    lines: list[str] = []
    ablate.run_ablation(tiny["out"], kwargs.pop("studies", tiny["studies"]), "viscoin", "tiny", tiny["base"],
                        TINY_EVAL, log=lines.append, **kwargs)
    return lines


def test_tables_hold_each_runs_evaluation(tiny):
    out = tiny["out"]
    data = json.loads((out / "ablation.json").read_text())
    assert set(data["runs"]) == {"base", "loss.gamma=0.5", "loss.orthogonality=false"}
    assert [(s["name"], [r["run"] for r in s["rows"]]) for s in data["studies"]] == [
        ("orthogonality", ["base", "loss.orthogonality=false"]), ("loss.gamma", ["base", "loss.gamma=0.5"])]
    markdown = (out / "ablation.md").read_text()
    tables = [block for block in markdown.split("\n## ")[1:]]
    assert len(tables) == 2 and tables[0].startswith("the orthogonality loss (paper table 9)")
    for study, table in zip(data["studies"], tables):
        lines = [line for line in table.splitlines() if line.startswith("| ")]
        header = [c.strip() for c in lines[0].strip("|").split("|")]
        assert header[:4] == [study["keys"][0] if study["name"] == "loss.gamma" else "L_orth", "K", "Accuracy g (f) %", "MSE"]
        assert "LPIPS" in header and "FID (classifier features)" in header and "Rec. same class (%)" in header
        assert "FF τ=0.1" in header and "Consistency λ=2.0" in header
        assert len(lines) == 1 + len(study["rows"])
        for line, row in zip(lines[1:], study["rows"]):
            cells = dict(zip(header, (c.strip() for c in line.strip("|").split("|"))))
            result = json.loads((out / "runs" / row["run"] / "evaluation.json").read_text())
            assert row["metrics"] == table_metrics(result)
            rec, ff = result["reconstruction"], result["faithfulness"]["thresholds"]["0.1"]
            assert cells["K"] == "4" and cells["MSE"] == f"{rec['mse']:.4f}" and cells["LPIPS"] == "–"
            assert cells["FID (classifier features)"] == f"{rec['fid']:.2f}"
            assert cells["Rec. same class (%)"] == f"{100 * rec['reconstruction_agreement']:.1f}"
            assert cells["Accuracy g (f) %"] == f"{100 * result['accuracy']['g']:.2f} ({100 * result['accuracy']['f']:.2f})"
            assert cells["FF τ=0.1"] == f"{ff['median']:.3f} ({ff['random_median']:.3f})"
            assert (row["run"] == "base") == row["base"] == ("(base)**" in line)
    # what each table says is computed from the numbers: the paper's claim for orthogonality, moves for γ
    says = {s["name"]: s["says"] for s in data["studies"]}
    base, without = (data["runs"][n]["metrics"]["mse"] for n in ("base", "loss.orthogonality=false"))
    assert says["orthogonality"].startswith("The paper: the orthogonality loss slightly improves")
    assert f"MSE {base:.4f} (with) → {without:.4f} (without): {'as' if without > base else 'not as'} the paper" \
        in says["orthogonality"]
    assert says["loss.gamma"].startswith("From 0.1 to 0.5: accuracy of g ")
    assert f"What it says: {says['loss.gamma']}" in markdown
    manifest = json.loads((out / MANIFEST).read_text())
    assert manifest["written_by"] == "viscoin ablate" and manifest["runs"] == sorted(data["runs"])


def test_a_second_run_reuses_every_finished_run_and_evaluation(tiny):
    runs = tiny["out"] / "runs"
    before = snapshot(runs)
    lines = rerun(tiny)
    assert snapshot(runs) == before                       # nothing trained or evaluated again
    assert sum("reuse the trained model" in line for line in lines) == 3
    assert not any("evaluating" in line for line in lines)


def test_a_killed_run_resumes_from_its_checkpoint(tiny):
    run = tiny["out"] / "runs" / "loss.gamma=0.5"
    others = {n: snapshot(tiny["out"] / "runs" / n) for n in ("base", "loss.orthogonality=false")}
    # as if killed after step 2: no final model, no metrics, the last checkpoint that of step 2
    shutil.rmtree(run / "viscoin")
    (run / "metrics.json").unlink()
    ckpts = run / "checkpoints"
    shutil.rmtree(ckpts / "step-000000003")
    (ckpts / LATEST).write_text(json.dumps({"checkpoint": "step-000000002", "step": 2}))
    lines = rerun(tiny)
    assert any("loss.gamma=0.5" in line and "resume (from step-000000002)" in line for line in lines), lines
    assert (run / "viscoin" / "config.json").is_file() and json.loads((run / "metrics.json").read_text())["steps"] == 3
    assert {n: snapshot(tiny["out"] / "runs" / n) for n in others} == others


def test_folders_it_did_not_create_and_other_plans_are_refused(tiny, tmp_path):
    # a folder without the manifest
    foreign = tmp_path / "mine"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("mine")
    with pytest.raises(ValueError, match="holds no .viscoin-ablation.json"):
        ablate.run_ablation(foreign, tiny["studies"], "viscoin", "tiny", tiny["base"], TINY_EVAL, log=lambda _: None)
    assert [p.name for p in foreign.iterdir()] == ["notes.txt"]

    out = tmp_path / "copy"                      # a copy (the same files, times and runs) to change
    shutil.copytree(tiny["out"], out)
    before = snapshot(out)
    studies = [*tiny["studies"], ablate.parse_study("loss.delta=0.2,0.7")]

    def again(**kwargs) -> list[str]:
        return rerun({**tiny, "out": out}, studies=studies, **kwargs)

    # another plan in the same OUT: refused without --overwrite
    with pytest.raises(ValueError, match="another plan .*studies added: loss.delta.*--overwrite"):
        again()
    # with it, a run folder the manifest does not list is still refused, before anything is written
    (out / "runs" / "loss.delta=0.7").mkdir()
    (out / "runs" / "loss.delta=0.7" / "notes.txt").write_text("mine")
    with pytest.raises(ValueError, match="not created by `viscoin ablate`"):
        again(overwrite=True)
    shutil.rmtree(out / "runs" / "loss.delta=0.7")
    assert snapshot(out) == before

    # --overwrite runs the new plan: the runs it shares with the old one are reused, only the new one trains
    lines = again(overwrite=True)
    assert [line.split(":")[0] for line in lines if "train (" in line and line.startswith("[")] == \
        ["[4/4] runs/loss.delta=0.7"]
    old_runs = {k: v for k, v in before.items() if k.startswith("runs/")}
    assert {k: v for k, v in snapshot(out).items() if k in old_runs} == old_runs
    manifest = json.loads((out / MANIFEST).read_text())
    assert manifest["runs"] == ["base", "loss.delta=0.7", "loss.gamma=0.5", "loss.orthogonality=false"]
    assert [s["name"] for s in json.loads((out / "ablation.json").read_text())["studies"]][-1] == "loss.delta"


def test_what_it_says_names_a_peak_between_the_compared_rows():
    """A claim compares two rows; when the rows between them do not move steadily the claimed way, the line says
    so (the γ study's faithfulness, best at a middle γ, read "as the paper" from its end rows alone)."""
    study = ablate.Study("gamma", "γ", "γ", ("loss.gamma",), (), claims=(ablate.Claim("faithfulness", 0, 3, "higher"),),
                         paper="a larger γ is more faithful")
    rows = [ablate.PlannedRow(f"γ = {g}", {"loss.gamma": g}, f"r{i}") for i, g in enumerate((0.05, 0.2, 0.5, 1.0))]
    metrics = {f"r{i}": {"faithfulness": v} for i, v in enumerate((0.786, 0.910, 0.813, 0.800))}
    line = ablate.what_it_says(study, rows, metrics)
    assert "faithfulness (τ=0.1) 0.786 (γ = 0.05) → 0.800 (γ = 1.0): as the paper, not monotonic: highest at γ = 0.2 (0.910)" in line
    assert line.endswith("It holds here.")
    metrics = {f"r{i}": {"faithfulness": v} for i, v in enumerate((0.786, 0.80, 0.80, 0.9))}
    assert "monotonic" not in ablate.what_it_says(study, rows, metrics)
    reverse = ablate.Study("gamma", "γ", "γ", ("loss.gamma",), (), claims=(ablate.Claim("faithfulness", 3, 0, "lower"),),
                           paper="a smaller γ is less faithful")
    metrics = {f"r{i}": {"faithfulness": v} for i, v in enumerate((0.786, 0.910, 0.813, 0.800))}
    assert "not monotonic: lowest at γ = 0.2 (0.910)" not in ablate.what_it_says(reverse, rows, metrics)
    assert "not monotonic: lowest at γ = 0.05 (0.786)" in ablate.what_it_says(reverse, rows, metrics)

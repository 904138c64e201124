"""`viscoin fit` on a tiny generated folder with the smoke-test budget (`--budget tiny`): the plan printed before
anything trains, --plan-only writing nothing, a run killed in its VisCoIN stage and run again (finished stages
reused, the killed one resumed, then evaluated and reported), and the refusals (a foreign or changed --out, a
classifier of other classes, an unusable folder)."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import CLASSES, make_folder, tiny_f
from viscoin.apps.fit import MANIFEST, FolderInfo, generator_conditioning, Hardware, working_resolution
from viscoin.classifier.model import save_classifier
from viscoin.cli import main

ENV = dict(os.environ, OMP_NUM_THREADS="1")
# VisCoIN's stage made longer than the tiny budget's 10 steps, so that the kill lands in it; the classifier trained
# by two processes (DDP on the CPU), which fit runs as a `viscoin classifier train` of its own.
LONGER = ["viscoin.iterations=60", "classifier.run.devices=2"]


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    return make_folder(tmp_path_factory.mktemp("fit") / "shapes", per_class=16, size=40)


def fit_args(folder: Path, out: Path, *extra: str) -> list[str]:
    return ["fit", str(folder), "--out", str(out), "--budget", "tiny", *extra]


def listing(path: Path) -> dict[str, int]:
    """Every file below `path` with its modification time."""
    return {str(p.relative_to(path)): p.stat().st_mtime_ns for p in sorted(path.rglob("*")) if p.is_file()}


def test_plan_only_prints_the_plan_and_writes_nothing(folder, tmp_path, capsys, one_thread):
    out = tmp_path / "out"
    assert main(fit_args(folder, out, "--plan-only")) == 0
    printed = capsys.readouterr().out
    assert not out.exists()
    assert "48 (39 train, 9 test: a seeded 20% per class" in printed
    assert f"classes: 3 ({', '.join(CLASSES)})" in printed
    assert "typical size: 40x40" in printed and "resolution: 32x32" in printed
    assert "generator: class-conditional (" in printed
    for stage, recipe in [("classifier", "classifier/tiny"), ("generator", "generator/tiny conditional=true"),
                          ("viscoin", "viscoin/tiny model.num_concepts=4 iterations=10"), ("evaluate", "tiny"),
                          ("report", "defaults pairs=1")]:
        line = next(line for line in printed.splitlines() if line.startswith(f"  {stage} "))
        assert recipe in line and re.search(r"~\d+(\.\d)? (s|min) \(", line), line   # the recipe and its estimate
    assert re.search(r"total: ~\d+(\.\d)? (s|min) on this machine", printed)


def test_killed_in_viscoin_then_run_again_reuses_resumes_and_finishes(folder, tmp_path, capsys, one_thread):
    out = tmp_path / "out"
    log = tmp_path / "first.log"
    with open(log, "w") as fh:
        proc = subprocess.Popen([sys.executable, "-m", "viscoin", *fit_args(folder, out, *LONGER)], env=ENV,
                                stdout=fh, stderr=subprocess.STDOUT)
    latest = out / "viscoin" / "checkpoints" / "latest.json"
    deadline = time.time() + 120
    while time.time() < deadline and proc.poll() is None:
        if latest.is_file() and json.loads(latest.read_text() or "{}").get("step", 0) >= 4:
            break
        time.sleep(0.01)
    assert proc.poll() is None, "the run ended before it could be killed:\n" + log.read_text()[-3000:]
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    first = log.read_text()
    # The plan came before any training, with the folder, the resolution and every stage's recipe and estimate.
    plan_at, training_at = first.index("viscoin fit: the plan for"), first.index("[1/5] classifier")
    assert plan_at < training_at and "total: ~" in first[plan_at:training_at]
    killed_at = json.loads(latest.read_text())["step"]
    assert 0 < killed_at < 60 and not (out / "viscoin" / "viscoin").exists()
    finished = {p: p.stat().st_mtime_ns for p in (out / "classifier" / "classifier" / "weights.safetensors",
                                                  out / "generator" / "G_ema" / "weights.safetensors")}

    assert main(fit_args(folder, out, *LONGER)) == 0
    printed = capsys.readouterr().out
    assert f"(the plan recorded in {out / MANIFEST})" in printed          # no new timing, the same plan
    assert f"reusing the finished run in {out / 'classifier'}" in printed
    assert f"reusing the finished run in {out / 'generator'}" in printed
    assert f"resuming from {out / 'viscoin' / 'checkpoints' / f'step-{killed_at:09d}'}\n" in printed
    assert {p: p.stat().st_mtime_ns for p in finished} == finished        # finished stages untouched
    assert json.loads((out / "viscoin" / "metrics.json").read_text())["steps"] == 60
    result = json.loads((out / "evaluation.json").read_text())
    assert {"accuracy", "faithfulness", "consistency"} <= set(result)
    assert (out / "report" / "index.html").is_file()
    assert "Summary" in printed and "accuracy: g " in printed and "faithfulness (median, τ=0.1)" in printed
    assert f"viscoin explore {out / 'viscoin' / 'viscoin'}" in printed
    manifest = json.loads((out / MANIFEST).read_text())
    assert sorted(manifest["created"]) == ["classifier", "evaluation.json", "generator", "report", "viscoin"]

    # Run again: everything is reused, nothing is written.
    before = listing(out)
    assert main(fit_args(folder, out, *LONGER)) == 0
    printed = capsys.readouterr().out
    assert f"reusing the finished run in {out / 'viscoin'}" in printed and f"reusing {out / 'evaluation.json'}" in printed
    assert listing(out) == before

    # Another plan in the same --out: refused, naming what changed, before anything is computed ...
    changed = ["viscoin.iterations=30", "classifier.run.devices=2"]
    assert main(fit_args(folder, out, *changed)) == 2
    err = capsys.readouterr().err
    assert "holds a `viscoin fit` run of another plan" in err and "viscoin.iterations=30" in err and "--overwrite" in err
    assert listing(out) == before
    # ... and run with --overwrite: the unchanged stages reused, the changed one and those after it redone.
    assert main(fit_args(folder, out, *changed, "--overwrite")) == 0
    printed = capsys.readouterr().out
    assert f"reusing the finished run in {out / 'generator'}" in printed and "resuming" not in printed
    assert {p: p.stat().st_mtime_ns for p in finished} == finished
    assert json.loads((out / "viscoin" / "metrics.json").read_text())["steps"] == 30
    assert listing(out)["evaluation.json"] != before["evaluation.json"]
    before = listing(out)
    # A file the command did not write: refused, named.
    (out / "notes.txt").write_text("mine")
    assert main(fit_args(folder, out, *LONGER)) == 2
    assert "holds notes.txt, which `viscoin fit` did not create there" in capsys.readouterr().err
    assert listing(out) == {**before, "notes.txt": (out / "notes.txt").stat().st_mtime_ns}


def test_a_foreign_out_is_refused_and_nothing_written(folder, tmp_path, capsys):
    out = tmp_path / "mine"
    out.mkdir()
    (out / "thesis.tex").write_text("keep me")
    assert main(fit_args(folder, out)) == 2
    assert f"--out {out}: not empty and holds no {MANIFEST}" in capsys.readouterr().err
    assert [p.name for p in out.iterdir()] == ["thesis.tex"]


def test_a_classifier_of_other_classes_is_refused(folder, tmp_path, capsys):
    wrong = save_classifier(tiny_f(), tmp_path / "f", extra={"classes": ["cat", "dog", "eel"]})
    reordered = save_classifier(tiny_f(), tmp_path / "f2", extra={"classes": [CLASSES[1], CLASSES[0], CLASSES[2]]})
    for path, why in [(wrong, "class 0 is 'cat' for f but 'a_red_square' in the data"),
                      (reordered, "class 0 is 'b_green_disc' for f but 'a_red_square' in the data")]:
        assert main(fit_args(folder, tmp_path / "out", "--classifier", str(path))) == 2
        err = capsys.readouterr().err
        assert f"classifier {path}: was trained on other classes than the data ({why})" in err, err
    assert not (tmp_path / "out").exists()


def test_unusable_folders_and_options_are_refused_naming_them(folder, tmp_path, capsys):
    one = make_folder(tmp_path / "one")
    for extra in CLASSES[1:]:
        for p in (one / extra).iterdir():
            p.unlink()
        (one / extra).rmdir()
    cases = [
        (fit_args(tmp_path / "absent", tmp_path / "o"), f"{tmp_path / 'absent'}: no such folder"),
        (fit_args(one, tmp_path / "o"), f"{one}: 1 class (a_red_square); viscoin fit needs at least 2 classes"),
        (fit_args(folder, tmp_path / "o", "gan.kimg=3"), "override 'gan.kimg=3': expected STAGE.KEY=VALUE"),
        (fit_args(folder, tmp_path / "o", "report.colour=red"), "the report takes pairs"),
        (fit_args(folder, tmp_path / "o", "--finetune-generator"), "--finetune-generator: give the generator"),
        (fit_args(folder, tmp_path / "o", "--resolution", "48"), "--resolution: expected a power of two"),
    ]
    for args, message in cases:
        assert main(args) == 2, args
        assert message in capsys.readouterr().err, (args, message)
    assert not (tmp_path / "o").exists()


def test_the_resolution_and_the_generator_rule():
    info = FolderInfo(root="/data", classes=("a", "b"), train_per_class=(10, 10), test_per_class=(2, 2),
                      median_width=500, median_height=375)
    cpu, gpu = Hardware("cpu", 1, "CPU"), Hardware("cuda", 2, "2 GPUs")
    assert working_resolution(info, "quick", cpu, 0, None, None)[0] == 64              # the budget's cap on a CPU
    assert working_resolution(info, "paper", gpu, 0, None, None)[0] == 256             # <= 375, a power of two
    assert working_resolution(info, "quick", cpu, 0, 128, None) == (128, "the given classifier's")
    with pytest.raises(ValueError, match="at one resolution"):
        working_resolution(info, "quick", cpu, 0, 128, 64)
    assert generator_conditioning("quick", gpu, None)[0] is True
    assert generator_conditioning("paper", cpu, None)[0] is True
    assert generator_conditioning("paper", gpu, None)[0] is False                     # as in the paper
    assert generator_conditioning("quick", cpu, 0)[0] is False                        # a given G keeps its own

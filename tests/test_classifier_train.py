"""`viscoin classifier train` / `test` end to end on a tiny generated image folder, and exact resume after kill -9."""

from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from conftest import make_folder
from viscoin.cli import main


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    return make_folder(tmp_path_factory.mktemp("data") / "shapes")


def train_cmd(folder: Path, out: Path, *extra: str) -> list[str]:
    return [
        sys.executable, "-m", "viscoin", "classifier", "train", "--config", "tiny",
        f"data.root={folder}", f"run.out_dir={out}", "run.progress=false", "run.ckpt_every=2",
        "epochs=8", "batch_size=8", "run.log_every=1", *extra,
    ]


def test_train_writes_outputs_learns_and_test_command_agrees(folder, tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["classifier", "train", "--config", "tiny", f"data.root={folder}", f"run.out_dir={out}",
                 "run.progress=false", "epochs=6", "batch_size=8", "run.log_every=1"]) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["test_accuracy"] >= 0.8, metrics  # 3 easy classes; chance is 1/3
    assert (out / "config.yaml").is_file() and (out / "classifier" / "weights.safetensors").is_file()
    ckpts = sorted(p.name for p in (out / "checkpoints").iterdir())
    assert "latest.json" in ckpts and any(c.startswith("step-") for c in ckpts)
    last = json.loads((out / "checkpoints" / "latest.json").read_text())["checkpoint"]
    assert (out / "checkpoints" / last / "config.yaml").read_text() == (out / "config.yaml").read_text()
    assert list((out / "logs" / "tensorboard").glob("events.out.tfevents.*"))
    rows = list(csv.DictReader(open(out / "logs" / "csv" / "metrics.csv")))
    losses = [float(r["train/loss"]) for r in rows if r.get("train/loss")]
    assert np.mean(losses[-3:]) < np.mean(losses[:3]), losses  # the loss went down
    capsys.readouterr()

    assert main(["classifier", "test", str(out / "classifier"), "--device", "cpu", "--out", str(tmp_path / "t.json")]) == 0
    printed = capsys.readouterr().out
    assert f"{100 * metrics['test_accuracy']:.2f}%" in printed
    result = json.loads((tmp_path / "t.json").read_text())
    assert result["accuracy"] == pytest.approx(metrics["test_accuracy"]) and result["count"] == metrics["test_count"]


def _weights(run: Path) -> dict[str, torch.Tensor]:
    return load_file(str(run / "classifier" / "weights.safetensors"))


def test_kill_9_then_resume_gives_the_same_weights(folder, tmp_path):
    env = dict(os.environ, OMP_NUM_THREADS="1")
    ref = tmp_path / "ref"
    subprocess.run(train_cmd(folder, ref), check=True, env=env, capture_output=True)

    run = tmp_path / "killed"
    proc = subprocess.Popen(train_cmd(folder, run), env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    latest = run / "checkpoints" / "latest.json"
    deadline = time.time() + 120
    while time.time() < deadline and proc.poll() is None:
        if latest.is_file() and json.loads(latest.read_text() or "{}").get("step", 0) >= 4:
            break
        time.sleep(0.005)
    assert proc.poll() is None, "the run ended before it could be killed; make it longer"
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL
    assert not (run / "classifier").exists()
    killed_at = json.loads(latest.read_text())["step"]

    out = subprocess.run(train_cmd(folder, run, "--resume"), env=env, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert "resuming from" in out.stdout + out.stderr
    a, b = _weights(ref), _weights(run)
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), f"{k} differs after resuming from step {killed_at}"
    assert json.loads((run / "metrics.json").read_text())["test_accuracy"] == json.loads((ref / "metrics.json").read_text())["test_accuracy"]


def test_resume_without_checkpoint_is_a_clear_error(folder, tmp_path, capsys):
    rc = main(["classifier", "train", "--config", "tiny", f"data.root={folder}", f"run.out_dir={tmp_path / 'r'}",
               "run.progress=false", "--resume"])
    assert rc == 2
    assert "--resume: no checkpoint in" in capsys.readouterr().err


def test_bad_override_is_a_clear_error(folder, tmp_path, capsys):
    rc = main(["classifier", "train", "--config", "tiny", f"data.root={folder}", "optim.name=rmsprop"])
    assert rc == 2
    assert "optim.name: expected one of ['adam', 'adamw', 'sgd']" in capsys.readouterr().err


def test_two_process_ddp_on_cpu(folder, tmp_path):
    """DDP through Fabric (gloo on the CPU): both ranks train, rank 0 writes, evaluation covers every test image once."""
    out = tmp_path / "ddp"
    res = subprocess.run(train_cmd(folder, out, "run.devices=2", "epochs=2"), capture_output=True, text=True,
                         env=dict(os.environ, OMP_NUM_THREADS="1"), timeout=300)
    assert res.returncode == 0, res.stderr[-2000:]
    assert "Starting with 2 processes" in res.stdout + res.stderr
    metrics = json.loads((out / "metrics.json").read_text())
    n_test = len([p for p in folder.rglob("*.png")]) - 0  # all images
    from viscoin.data import DataConfig, build_dataset

    test_set = build_dataset(DataConfig(kind="folder", root=str(folder), resolution=32), "test")
    assert metrics["test_count"] == len(test_set) < n_test
    # 48 images, 39 train -> per rank ceil(39/2)=20 samples -> 5 steps of 4 per epoch on each rank.
    assert metrics["steps"] == 10
    assert (out / "classifier" / "config.json").is_file()

"""Issue #15, the training run folder: nothing overwritten without being asked, exact logs after
`--resume`, no resume with a config that changes the run, clear errors for impossible settings."""

from __future__ import annotations

import csv
import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from PIL import Image

from viscoin.training.config import RunConfig
from viscoin.training.runner import Runner
from viscoin.utils.config import ConfigError, DictConfig


@dataclass(frozen=True)
class ToyConfig(DictConfig):
    """The config of `toy_train`: a counter that moves by `lr` per step."""

    lr: float = 0.5
    iterations: int = 10
    batch_size: int = 4
    run: RunConfig = field(default_factory=RunConfig)


def toy_config(out: Path, **changes: object) -> ToyConfig:
    run_keys: dict[str, object] = {"accelerator": "cpu", "progress": False, "ckpt_every": 4, "log_every": 1}
    run_keys.update({k: changes.pop(k) for k in list(changes) if k in ("log_every", "ckpt_every", "seed")})
    run = RunConfig(out_dir=str(out), **run_keys)  # type: ignore[arg-type]
    return ToyConfig(run=run, **changes)  # type: ignore[arg-type]


def toy_train(cfg: ToyConfig, resume: bool = False, overwrite: bool = False, stop_at: int | None = None) -> float:
    """A trainer the way the real ones use the Runner; `stop_at` ends it abruptly (as kill -9 would)."""
    runner = Runner(cfg.run, cfg, overwrite=overwrite)
    resumed = runner.resume_state(resume)
    step, w = 0, torch.zeros(2)
    if resumed is not None:
        step, w = resumed[0], resumed[1]["w"]
    while step < cfg.iterations:
        step += 1
        w = w + cfg.lr * step
        if step % cfg.run.log_every == 0:
            runner.log({"w": float(w[0]), "half": float(w[0]) / 2}, step)
        if step % cfg.run.ckpt_every == 0 or step == cfg.iterations:
            runner.save_checkpoint(step, {"w": w})
        if step == stop_at:
            runner.close()      # a killed process's TensorBoard writer thread dies with it; here it must be stopped
            return float(w[0])
    (runner.out_dir / "metrics.json").write_text(json.dumps({"w": float(w[0])}))
    runner.close()
    return float(w[0])


def csv_rows(out: Path) -> list[dict[str, str]]:
    with open(out / "logs" / "csv" / "metrics.csv", newline="") as f:
        return list(csv.DictReader(f))


def snapshot(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


# ----------------------------------------------------------------------------------------------
# 1. A run folder that holds something is never overwritten without being asked


def test_second_fresh_run_in_a_run_folder_is_refused_and_changes_nothing(tmp_path):
    out = tmp_path / "run"
    toy_train(toy_config(out))
    before = snapshot(out)
    with pytest.raises(ConfigError) as info:
        toy_train(toy_config(out, lr=0.25))
    message = str(info.value)
    assert "\n" not in message and str(out) in message
    for advice in ("--resume", "new run.out_dir", "--overwrite"):
        assert advice in message
    assert snapshot(out) == before


def test_a_started_run_without_checkpoint_is_also_protected(tmp_path):
    out = tmp_path / "run"
    toy_train(toy_config(out, ckpt_every=100, iterations=200), stop_at=3)  # killed before its first checkpoint
    assert (out / "config.yaml").is_file() and not (out / "checkpoints").exists()
    with pytest.raises(ConfigError, match="already holds a viscoin run"):
        toy_train(toy_config(out))
    with pytest.raises(FileNotFoundError, match="stopped before its first checkpoint.*--overwrite"):
        toy_train(toy_config(out, ckpt_every=100, iterations=200), resume=True)


def test_a_foreign_folder_is_refused_and_an_empty_out_dir_is_an_error(tmp_path):
    foreign = tmp_path / "mine"
    foreign.mkdir()
    (foreign / "thesis.tex").write_text("precious")
    with pytest.raises(ConfigError, match="is not empty and is not a viscoin run folder"):
        toy_train(toy_config(foreign))
    assert sorted(p.name for p in foreign.iterdir()) == ["thesis.tex"]
    with pytest.raises(ConfigError, match="run.out_dir: empty"):
        Runner(RunConfig(out_dir="", accelerator="cpu"), ToyConfig())
    (tmp_path / "file").write_text("x")
    with pytest.raises(ConfigError, match="exists and is not a folder"):
        Runner(RunConfig(out_dir=str(tmp_path / "file"), accelerator="cpu"), ToyConfig())


def test_overwrite_replaces_the_previous_run_and_keeps_foreign_files(tmp_path):
    out = tmp_path / "run"
    toy_train(toy_config(out, iterations=12))
    (out / "notes.txt").write_text("mine")
    (out / "classifier").mkdir()  # a network folder the old run saved
    (out / "classifier" / "config.json").write_text(json.dumps({"format": "viscoin.classifier"}))
    assert toy_train(toy_config(out, lr=1.0, iterations=5), overwrite=True) == 15.0
    assert sorted(p.name for p in out.iterdir()) == ["checkpoints", "config.yaml", "logs", "metrics.json", "notes.txt"]
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == ["latest.json", "step-000000004",
                                                                      "step-000000005"]
    assert [int(r["step"]) for r in csv_rows(out)] == [1, 2, 3, 4, 5]  # none of the old run's 12 rows
    assert yaml.safe_load((out / "config.yaml").read_text())["lr"] == 1.0
    # A folder of one's own with logs/ and samples/ is not a viscoin run: refused, and overwriting
    # writes beside the files it finds and deletes none of them.
    foreign = tmp_path / "mine"
    (foreign / "logs").mkdir(parents=True)
    (foreign / "logs" / "mine.txt").write_text("mine")
    (foreign / "samples").mkdir()
    with pytest.raises(ConfigError, match="is not empty and is not a viscoin run folder"):
        toy_train(toy_config(foreign))
    toy_train(toy_config(foreign), overwrite=True)
    assert (foreign / "samples").is_dir() and (foreign / "logs" / "mine.txt").read_text() == "mine"
    assert (foreign / "metrics.json").is_file()
    with pytest.raises(ConfigError, match="--resume and --overwrite: choose one"):
        toy_train(toy_config(out, lr=1.0, iterations=5), resume=True, overwrite=True)


def test_a_failed_resume_in_a_new_folder_leaves_nothing_behind(tmp_path):
    out = tmp_path / "new"
    with pytest.raises(FileNotFoundError, match="start the run without --resume"):
        toy_train(toy_config(out), resume=True)
    assert not out.exists()
    toy_train(toy_config(out))  # and the run can then start there


def _folder_of_images(root: Path) -> Path:
    rng = np.random.default_rng(0)
    for cls in ("a", "b"):
        (root / cls).mkdir(parents=True)
        for i in range(5):
            Image.fromarray(rng.integers(0, 255, (16, 16, 3), dtype=np.uint8)).save(root / cls / f"{i}.png")
    return root


def test_classifier_train_twice_into_one_folder_is_refused(tmp_path, capsys):
    from viscoin.cli import main

    data = _folder_of_images(tmp_path / "data")
    out = tmp_path / "f"
    args = ["classifier", "train", "--config", "tiny", f"data.root={data}", f"run.out_dir={out}", "run.progress=false",
            "epochs=1", "batch_size=4", "data.resolution=16", "classifier.width=8"]
    assert main(args) == 0
    before = snapshot(out)
    capsys.readouterr()
    assert main([*args, "optim.lr=0.1"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "already holds a viscoin run" in err and "--resume" in err
    assert snapshot(out) == before


# ----------------------------------------------------------------------------------------------
# 2. The CSV log after --resume: the whole history, each step once, in order


def test_resume_keeps_the_csv_rows_before_the_resume_point_and_drops_those_after(tmp_path):
    ref, out = tmp_path / "ref", tmp_path / "run"
    toy_train(toy_config(ref))
    toy_train(toy_config(out), stop_at=6)          # checkpoint at step 4, rows up to step 6
    assert [int(r["step"]) for r in csv_rows(out)] == [1, 2, 3, 4, 5, 6]
    assert toy_train(toy_config(out), resume=True) == toy_train(toy_config(tmp_path / "again"))
    rows = csv_rows(out)
    assert [int(r["step"]) for r in rows] == list(range(1, 11))
    assert rows == csv_rows(ref)                   # the same values as a run never interrupted
    assert list(rows[0]) == ["half", "step", "w"]  # Lightning's column order: sorted names


def test_resume_twice_and_a_new_metric_keep_the_history(tmp_path):
    out = tmp_path / "run"
    toy_train(toy_config(out, iterations=12), stop_at=5)
    toy_train(toy_config(out, iterations=12), resume=True, stop_at=9)
    toy_train(toy_config(out, iterations=12), resume=True)
    assert [int(r["step"]) for r in csv_rows(out)] == list(range(1, 13))
    assert [float(r["w"]) for r in csv_rows(out)][-1] == 0.5 * sum(range(1, 13))


# ----------------------------------------------------------------------------------------------
# 3. --resume with a changed config


def test_resume_refuses_a_config_that_changes_the_run_and_names_the_keys(tmp_path):
    out = tmp_path / "run"
    toy_train(toy_config(out), stop_at=5)
    config_before = (out / "config.yaml").read_text()
    for changes, keys in [({"lr": 0.25}, ["lr (0.5 -> 0.25)"]),
                          ({"iterations": 20, "batch_size": 8}, ["batch_size (4 -> 8)", "iterations (10 -> 20)"]),
                          ({"seed": 1}, ["run.seed (0 -> 1)"])]:
        with pytest.raises(ConfigError) as info:
            toy_train(toy_config(out, **changes), resume=True)
        message = str(info.value)
        assert "--resume: the config changes the run in" in message and "\n" not in message
        for key in keys:
            assert key in message
        assert "step-000000004/config.yaml" in message
        assert (out / "config.yaml").read_text() == config_before


def test_resume_allows_logging_and_checkpoint_cadence_and_records_them(tmp_path, capsys):
    out = tmp_path / "run"
    toy_train(toy_config(out), stop_at=5)
    capsys.readouterr()
    assert toy_train(toy_config(out, log_every=2, ckpt_every=3), resume=True) == 0.5 * sum(range(1, 11))
    assert "--resume: changed run.ckpt_every, run.log_every (allowed on resume)" in capsys.readouterr().out
    saved = yaml.safe_load((out / "config.yaml").read_text())
    assert (saved["run"]["log_every"], saved["run"]["ckpt_every"], saved["lr"]) == (2, 3, 0.5)
    assert [int(r["step"]) for r in csv_rows(out)] == [1, 2, 3, 4, 6, 8, 10]


def test_a_run_started_before_a_field_existed_resumes_with_its_default(tmp_path):
    """A key the checkpoint's config lacks (a field a later viscoin added) is its default; another value is refused."""
    out = tmp_path / "run"
    toy_train(toy_config(out), stop_at=5)
    for path in [out / "config.yaml", *out.glob("checkpoints/step-*/config.yaml")]:   # as an older viscoin wrote it
        saved = yaml.safe_load(path.read_text())
        del saved["batch_size"]
        path.write_text(yaml.safe_dump(saved))
    with pytest.raises(ConfigError, match=r"batch_size \(4 -> 8\)"):            # the absent key is its default, 4
        toy_train(toy_config(out, batch_size=8), resume=True)
    assert toy_train(toy_config(out), resume=True) == 0.5 * sum(range(1, 11))


def test_a_moved_run_folder_resumes(tmp_path):
    toy_train(toy_config(tmp_path / "a"), stop_at=5)
    (tmp_path / "a").rename(tmp_path / "b")
    assert toy_train(toy_config(tmp_path / "b"), resume=True) == 0.5 * sum(range(1, 11))


# ----------------------------------------------------------------------------------------------
# 8. Impossible numbers


def test_zero_batch_size_is_a_clear_error(tmp_path):
    runner = Runner(RunConfig(out_dir=str(tmp_path / "r"), accelerator="cpu"), ToyConfig(), loggers=False)
    for bad in (0, -3):
        with pytest.raises(ConfigError, match=f"batch size: expected an integer >= 1 images per device, got {bad}"):
            runner.steps_per_epoch(100, bad)
        with pytest.raises(ConfigError, match="batch size"):
            runner.loader(torch.utils.data.TensorDataset(torch.zeros(4)), bad, epoch=0)

"""`viscoin train` end to end on a tiny generated dataset: outputs, g agreeing with f, exact resume after kill -9."""

from __future__ import annotations

import csv
import json
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from conftest import ListDataset, make_folder, save_tiny_setup, tiny_model
from viscoin.cli import main
from viscoin.model import load_viscoin
from viscoin.model.passes import agreement_check
from viscoin.stylegan import Generator, GeneratorConfig, MappingConfig, SynthesisConfig, save_network
from viscoin.utils.iteration import seeded_subset

ENV = dict(os.environ, OMP_NUM_THREADS="1")


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("viscoin")
    folder = make_folder(root / "shapes")
    assert main(["classifier", "train", "--config", "tiny", f"data.root={folder}", f"run.out_dir={root / 'f'}",
                 "run.progress=false", "epochs=6"]) == 0
    torch.manual_seed(0)
    G = Generator(GeneratorConfig(z_dim=32, w_dim=32, img_resolution=32, mapping=MappingConfig(num_layers=2),
                                  synthesis=SynthesisConfig(channel_base=512, channel_max=32)))
    save_network(G, root / "G")
    return folder, root / "f" / "classifier", root / "G"


def cmd(setup, out: Path, *extra: str) -> list[str]:
    folder, f, G = setup
    return [sys.executable, "-m", "viscoin", "train", "--config", "tiny", f"data.root={folder}", f"classifier={f}",
            f"generator={G}", f"run.out_dir={out}", "run.progress=false", *extra]


def test_train_kill_resume_and_g_agrees_with_f(setup, tmp_path):
    ref = tmp_path / "ref"
    res = subprocess.run(cmd(setup, ref), env=ENV, capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stderr[-3000:]
    metrics = json.loads((ref / "metrics.json").read_text())
    # g's test accuracy approaches f's. Measured on these 9 test images after 150 steps: f 100%, g 67-100%
    # depending on the thread count (which changes f's training): without Θ's bias (the paper's g) one of
    # the three toy classes can stay unpredicted here, while chance is 33%.
    assert metrics["test_accuracy_f"] >= 0.8
    assert metrics["test_accuracy_g"] >= metrics["test_accuracy_f"] - 0.34, metrics
    assert metrics["perceptual"].startswith("classifier-features(")
    assert metrics["environment"]["threads"] == 1 and metrics["environment"]["cpu"]   # OMP_NUM_THREADS=1
    assert sorted(p.name for p in (ref / "samples").iterdir())[:1] == ["rec-000000050.png"]
    info = json.loads((ref / "viscoin" / "config.json").read_text())
    assert info["source"]["classifier"]["path"] == str(setup[1].resolve()) and len(info["source"]["generator"]["state_sha256"]) == 64
    model = load_viscoin(ref / "viscoin")  # f and G found from the recorded paths and checked
    assert model.config.num_concepts == 8

    run = tmp_path / "killed"
    proc = subprocess.Popen(cmd(setup, run), env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    latest = run / "checkpoints" / "latest.json"
    deadline = time.time() + 300
    while time.time() < deadline and proc.poll() is None:
        if latest.is_file() and json.loads(latest.read_text() or "{}").get("step", 0) >= 30:
            break
        time.sleep(0.01)
    assert proc.poll() is None, "the run ended before it could be killed"
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    killed_at = json.loads(latest.read_text())["step"]            # the last checkpoint before the kill
    assert 0 < killed_at < 150
    res = subprocess.run(cmd(setup, run, "--resume"), env=ENV, capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stderr[-3000:]
    # A resume, not a restart (which would also end with equal weights): it says it continued from that step.
    assert f"resuming from {run / 'checkpoints' / f'step-{killed_at:09d}'}\n" in res.stdout + res.stderr
    assert json.loads((run / "metrics.json").read_text())["steps"] == 150
    a = load_file(str(ref / "viscoin" / "weights.safetensors"))
    b = load_file(str(run / "viscoin" / "weights.safetensors"))
    for k in a:
        assert torch.equal(a[k], b[k]), k


def test_missing_networks_are_clear_errors(setup, tmp_path, capsys):
    folder = setup[0]
    assert main(["train", "--config", "tiny", f"data.root={folder}", f"run.out_dir={tmp_path}"]) == 2
    assert "classifier: set it to a classifier folder" in capsys.readouterr().err
    assert main(["train", "--config", "tiny", f"data.root={folder}", f"classifier={setup[1]}",
                 f"generator={tmp_path / 'nope'}", f"run.out_dir={tmp_path}"]) == 2
    assert "not a viscoin.stylegan2 checkpoint" in capsys.readouterr().err


# ----------------------------------------------------------------------------------------------
# bf16 and DDP on the CPU, on a saved tiny f and G (no training of f needed)


@pytest.fixture(scope="module")
def tiny_nets(tmp_path_factory) -> tuple[Path, Path, Path]:
    root = tmp_path_factory.mktemp("tiny-nets")
    _, folder = save_tiny_setup(root)
    return folder, root / "f", root / "G"


def test_a_tiny_bf16_mixed_run_on_the_cpu_has_a_finite_loss(tiny_nets, tmp_path):
    out = tmp_path / "bf16"
    res = subprocess.run(cmd(tiny_nets, out, "run.precision=bf16-mixed", "iterations=4", "batch_real=4",
                             "batch_synthetic=4", "eval_every=0", "sample_every=0", "run.ckpt_every=4"),
                         env=ENV, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-3000:]
    assert "precision bf16-mixed" in res.stdout
    with open(out / "logs" / "csv" / "metrics.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert [int(r["step"]) for r in rows] == [1, 2, 3, 4]
    losses = [float(r["loss/total"]) for r in rows]
    assert all(math.isfinite(v) and v > 0 for v in losses), losses
    assert (out / "viscoin" / "weights.safetensors").is_file()


RANK_RECORDER = """
import sys
from viscoin.training import runner
from viscoin.utils.io import save_tensors

setup, close = runner.Runner.setup, runner.Runner.close

def recording_setup(self, module, *optimizers):
    self.trained_module = module
    return setup(self, module, *optimizers)

def saving_close(self):   # every rank: its own copy of the trained weights, after the last step
    save_tensors(self.out_dir.parent / f"rank{self.rank}.safetensors", self.trained_module.state_dict())
    close(self)

runner.Runner.setup, runner.Runner.close = recording_setup, saving_close
from viscoin.cli import main
sys.exit(main(sys.argv[1:]))
"""


@pytest.mark.slow
def test_two_process_ddp_on_cpu_ends_with_identical_weights_on_both_ranks(tiny_nets, tmp_path):
    """DDP through Fabric (gloo on the CPU): 2 processes on different halves of each batch; the initial weights
    are broadcast and the gradients averaged, so both ranks end with the same weights, which rank 0 saved."""
    script = tmp_path / "record_ranks.py"
    script.write_text(RANK_RECORDER)
    out = tmp_path / "ddp" / "run"
    res = subprocess.run([sys.executable, str(script), *cmd(tiny_nets, out, "run.devices=2", "iterations=4",
                                                            "batch_real=8", "batch_synthetic=8", "eval_every=0",
                                                            "sample_every=0", "run.ckpt_every=4")[3:]],
                         env=ENV, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-3000:]
    assert "Starting with 2 processes" in res.stdout + res.stderr
    rank0, rank1 = (load_file(str(tmp_path / "ddp" / f"rank{r}.safetensors")) for r in (0, 1))
    saved = load_file(str(out / "viscoin" / "weights.safetensors"))
    assert rank0.keys() == rank1.keys() == saved.keys() and len(saved) > 10
    for k in saved:
        assert torch.equal(rank0[k], rank1[k]), k
        assert torch.equal(rank1[k], saved[k]), k
    assert json.loads((out / "metrics.json").read_text())["steps"] == 4


def test_periodic_check_uses_a_seeded_random_subset_not_the_first_files():
    """CUB lists its test files grouped by class: the first N would all be one class."""
    model = tiny_model().eval()
    x = torch.rand(30, 3, 32, 32) * 2 - 1
    y = torch.arange(3).repeat_interleave(10)                   # grouped by class, as CUB's test split

    class Spy(ListDataset):
        def __init__(self, *args):
            super().__init__(*args)
            self.seen: list[int] = []

        def __getitem__(self, i):
            self.seen.append(i)
            return super().__getitem__(i)

    data = Spy(x, y)
    result = agreement_check(model, data, batch_size=4, limit=6, seed=3)
    assert result["count"] == 6
    assert data.seen == seeded_subset(30, 6, 3).tolist()
    assert len(set(y[data.seen].tolist())) > 1                  # not all from the first class
    again = Spy(x, y)
    agreement_check(model, again, batch_size=4, limit=6, seed=3)
    assert again.seen == data.seen                              # the same subset at every check
    other = Spy(x, y)
    agreement_check(model, other, batch_size=4, limit=6, seed=4)
    assert other.seen != data.seen
    full = Spy(x, y)
    assert agreement_check(model, full, batch_size=8)["count"] == 30 and full.seen == list(range(30))

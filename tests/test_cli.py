"""The `viscoin` command: the README's main job, and clear one-line errors."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file

from conftest import MOCK_COND16, MOCK_G32
from viscoin.classifier.model import load_classifier, read_classifier_info
from viscoin.cli import main
from viscoin.model.contract import checked_network, record_network, state_fingerprint
from viscoin.pretrained import BIRDS_CLASSIFIER, BIRDS_GENERATOR, resolve
from viscoin.stylegan import load_generator
from viscoin.stylegan.checkpoint import read_checkpoint_info
from viscoin.stylegan.sampling import parse_seeds, sample
from viscoin.stylegan.train import read_init_source
from viscoin.utils.images import to_uint8


def test_import_then_sample_writes_the_expected_grid(tmp_path, capsys):
    assert main(["generator", "import", str(MOCK_G32), str(tmp_path / "g32")]) == 0
    out = tmp_path / "grid.png"
    ws_out = tmp_path / "ws.safetensors"
    rc = main([
        "generator", "sample", "--generator", str(tmp_path / "g32"), "--seeds", "0-5",
        "--truncation", "0.7", "--out", str(out), "--ws-out", str(ws_out), "--cols", "3", "--device", "cpu",
    ])
    assert rc == 0
    grid = np.asarray(Image.open(out))
    assert grid.shape == (64, 96, 3)  # 2 rows x 3 columns of 32x32

    # The grid holds exactly the images of the seeds, as the official export would write them.
    G = load_generator(tmp_path / "g32")
    images, ws = sample(G, [0, 1, 2, 3, 4, 5], truncation_psi=0.7)
    expected = to_uint8(images)
    assert np.array_equal(grid[32:64, 64:96], expected[5])
    saved = load_file(str(ws_out))
    assert torch.equal(saved["ws"], ws) and saved["seeds"].tolist() == [0, 1, 2, 3, 4, 5]
    assert saved["ws"].shape == (6, 8, 64)


def test_sample_directly_from_pkl_and_conditional(tmp_path):
    out = tmp_path / "c.png"
    assert main(["generator", "sample", "--generator", str(MOCK_COND16), "--seeds", "1,2", "--class", "2",
                 "--out", str(out), "--device", "cpu"]) == 0
    assert np.asarray(Image.open(out)).shape == (16, 32, 3)


def test_errors_are_one_line_and_name_the_problem(tmp_path, capsys):
    assert main(["generator", "sample", "--generator", str(tmp_path / "missing"), "--out", str(tmp_path / "x.png")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("viscoin: error: ") and "missing" in err and "Traceback" not in err

    assert main(["generator", "sample", "--generator", str(MOCK_G32), "--seeds", "5-2", "--out", str(tmp_path / "x.png")]) == 2
    assert "--seeds: range '5-2' is empty" in capsys.readouterr().err

    assert main(["generator", "sample", "--generator", str(MOCK_COND16), "--out", str(tmp_path / "x.png")]) == 2
    assert "--class: this generator is conditional" in capsys.readouterr().err

    bad = tmp_path / "bad.pkl"
    bad.write_bytes(b"not a pickle at all")
    assert main(["generator", "import", str(bad), str(tmp_path / "o")]) == 2
    assert "bad.pkl is not a readable StyleGAN2-ADA network pickle" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()
    assert not (tmp_path / "x.png").exists()


def test_info_prints_config(capsys):
    assert main(["generator", "info", str(MOCK_G32)]) == 0
    out = capsys.readouterr().out
    assert '"num_ws": 8' in out and '"channel_base": 256' in out


def test_parse_seeds():
    assert parse_seeds("0-3,7, 10-11") == [0, 1, 2, 3, 7, 10, 11]
    with pytest.raises(ValueError, match="cannot parse 'a'"):
        parse_seeds("1,a")


def test_console_script_is_installed():
    out = subprocess.run([sys.executable, "-m", "viscoin", "--version"], capture_output=True, text=True)
    assert out.returncode == 0 and out.stdout.startswith("viscoin ")


def test_overrides_are_accepted_anywhere_on_the_line(capsys):
    from viscoin.cli import build_parser, parse

    parser = build_parser()
    args = parse(parser, ["evaluate", "ck", "--device", "cpu", "data.root=/x", "--no-progress", "data.resolution=32"])
    assert args.overrides == ["data.root=/x", "data.resolution=32"] and args.device == "cpu" and args.no_progress
    args = parse(parser, ["report", "ck", "data.root=/x", "--pairs", "2", "data.kind=folder"])
    assert args.overrides == ["data.root=/x", "data.kind=folder"] and args.pairs == 2
    args = parse(parser, ["classifier", "test", "ck", "--split", "train", "data.root=/y"])
    assert args.overrides == ["data.root=/y"] and args.split == "train"
    with pytest.raises(SystemExit) as exc:                    # a stray word is still an error
        parse(parser, ["evaluate", "ck", "--device", "cpu", "stray"])
    assert exc.value.code == 2
    assert capsys.readouterr().err.strip().splitlines()[-1].startswith("viscoin: error: unrecognized arguments: stray")
    with pytest.raises(SystemExit):                           # a command without overrides takes none
        parse(parser, ["generator", "info", "x", "a=b"])


def test_training_data_must_match_the_classifier():
    from viscoin.model.contract import check_training_data
    from viscoin.utils.config import ConfigError

    info = {"extra": {"classes": ["a", "b", "c"], "data": {"resolution": 64}}}
    check_training_data(info, "f", ["a", "b", "c"], 64, generator_resolution=64)          # all agree
    with pytest.raises(ConfigError, match="class 1 is 'b' for f but 'c' in the data"):
        check_training_data(info, "f", ["a", "c", "b"], 64)                                # reordered
    with pytest.raises(ConfigError, match="it has 3 classes, the data 2"):
        check_training_data(info, "f", ["a", "b"], 64)
    with pytest.raises(ConfigError, match="trained at 64x64; set data.resolution=64"):
        check_training_data(info, "f", ["a", "b", "c"], 32)
    with pytest.raises(ConfigError, match="the generator draws 32x32"):
        check_training_data(info, "f", ["a", "b", "c"], 64, generator_resolution=32)
    check_training_data({"extra": {}}, "f", ["x"], 16)                                     # nothing recorded


# -- the shipped networks by name (README: "anywhere a classifier or generator folder is expected") ----


def test_shipped_names_work_in_every_command_taking_a_network(tmp_path, capsys):
    out = tmp_path / "birds.png"
    assert main(["generator", "sample", "--generator", BIRDS_GENERATOR, "--seeds", "0-1", "--class", "3",
                 "--out", str(out), "--device", "cpu"]) == 0
    assert np.asarray(Image.open(out)).shape == (64, 128, 3)      # two 64x64 birds
    capsys.readouterr()

    assert main(["generator", "info", BIRDS_GENERATOR]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["network"] == "generator" and info["img_resolution"] == 64 and info["config"]["c_dim"] == 12

    # f on a small draw of the synthetic birds (2 test images per class)
    result = tmp_path / "f.json"
    assert main(["classifier", "test", BIRDS_CLASSIFIER, f"data.root={tmp_path / 'birds'}",
                 "data.synthetic_per_class=[1,2]", "--device", "cpu", "--out", str(result)]) == 0
    assert json.loads(result.read_text())["count"] == 24


def test_loaders_take_shipped_names_and_checkpoints_record_them():
    G = load_generator(BIRDS_GENERATOR)
    assert state_fingerprint(G) == state_fingerprint(load_generator(resolve(BIRDS_GENERATOR)))
    assert read_checkpoint_info(BIRDS_GENERATOR)["network"] == "generator"
    f = load_classifier(Path(BIRDS_CLASSIFIER))                   # as the command line passes it (type=Path)
    assert f.num_classes == 12 and len(read_classifier_info(BIRDS_CLASSIFIER)["extra"]["classes"]) == 12
    source = read_init_source(BIRDS_GENERATOR)                    # generator train: init.source=viscoin:...
    assert state_fingerprint(source.G_ema) == state_fingerprint(G)

    # A checkpoint records the name, not the folder inside this installation, and loads f back by it.
    recorded = record_network(Path(BIRDS_CLASSIFIER), f)
    assert recorded["path"] == BIRDS_CLASSIFIER
    again = checked_network("ck", {"classifier": recorded}, "classifier", None, load_classifier)
    assert state_fingerprint(again) == recorded["state_sha256"]


def test_an_unknown_shipped_name_is_one_line_listing_the_shipped_ones(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)        # evaluate's default --out sits beside the checkpoint: nothing may appear here
    listing = f"available: {BIRDS_CLASSIFIER}, {BIRDS_GENERATOR}"
    for argv in (["generator", "sample", "--generator", "viscoin:birds/nothing", "--out", str(tmp_path / "x.png")],
                 ["generator", "info", "viscoin:birds/nothing"],
                 ["classifier", "test", "viscoin:birds/nothing"],
                 ["evaluate", "viscoin:birds/nothing"]):
        assert main(argv) == 2
        err = capsys.readouterr().err
        assert err == f"viscoin: error: viscoin:birds/nothing: no such network shipped with viscoin; {listing}\n"
    with pytest.raises(FileNotFoundError, match=listing):
        load_generator("viscoin:birds/nothing")
    assert sorted(p.name for p in tmp_path.iterdir()) == []     # no x.png, no "viscoin:birds" folder


def test_sample_every_class_in_rows_and_refuse_to_replace_a_file(tmp_path, capsys):
    """`--class all`: one row of the seeds per class; an existing --out or --ws-out needs --overwrite."""
    out, ws_out = tmp_path / "all.png", tmp_path / "ws.safetensors"
    assert main(["generator", "sample", "--generator", str(MOCK_COND16), "--seeds", "1,2,3", "--class", "all",
                 "--out", str(out), "--ws-out", str(ws_out), "--device", "cpu"]) == 0
    G = load_generator(MOCK_COND16)
    grid = np.asarray(Image.open(out))
    assert grid.shape == (16 * G.c_dim, 16 * 3, 3)
    for c in (0, G.c_dim - 1):                     # row c, column 1 is seed 2 of class c
        images, _ = sample(G, [2], class_idx=c)
        assert np.array_equal(grid[16 * c : 16 * (c + 1), 16:32], to_uint8(images)[0])
    saved = load_file(str(ws_out))
    assert saved["seeds"].tolist() == [1, 2, 3] * G.c_dim
    assert saved["classes"].tolist() == [c for c in range(G.c_dim) for _ in range(3)]
    assert "classes x 3 seeds" in capsys.readouterr().out

    before = out.read_bytes()
    assert main(["generator", "sample", "--generator", str(MOCK_COND16), "--seeds", "4", "--class", "0",
                 "--out", str(out), "--device", "cpu"]) == 2
    assert "all.png: exists; give --overwrite to replace it" in capsys.readouterr().err
    assert out.read_bytes() == before
    assert main(["generator", "sample", "--generator", str(MOCK_COND16), "--seeds", "4", "--class", "0",
                 "--out", str(out), "--device", "cpu", "--overwrite"]) == 0
    assert out.read_bytes() != before
    assert main(["generator", "sample", "--generator", str(MOCK_G32), "--class", "all",
                 "--out", str(tmp_path / "u.png")]) == 2
    assert "--class all: this generator is unconditional" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["generator", "sample", "--generator", str(MOCK_COND16), "--class", "x", "--out", str(tmp_path / "u.png")])
    assert "--class: expected a class index >= 0 or 'all', got 'x'" in capsys.readouterr().err
    assert not (tmp_path / "u.png").exists()


def test_evaluate_replaces_only_its_own_evaluation_files(tmp_path):
    """`viscoin evaluate` re-runs replace an evaluation it wrote; any other existing file needs --overwrite."""
    from viscoin.cli.evaluate import is_evaluation_file

    ours = tmp_path / "evaluation.json"
    ours.write_text(json.dumps({"checkpoint": "runs/x/viscoin", "data": {}, "device": "cpu", "accuracy": 0.5}))
    assert is_evaluation_file(ours)
    for text in ("not json", json.dumps([1, 2]), json.dumps({"checkpoint": "x"})):
        other = tmp_path / "other.json"
        other.write_text(text)
        assert not is_evaluation_file(other)
    other.write_bytes(b"\xff\xfe binary")
    assert not is_evaluation_file(other)
    assert not is_evaluation_file(tmp_path / "missing.json")

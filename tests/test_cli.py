"""The `viscoin` command: the README's main job, and clear one-line errors."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file

from conftest import MOCK_COND16, MOCK_G32
from viscoin.cli import main
from viscoin.stylegan import load_generator
from viscoin.stylegan.sampling import parse_seeds, sample
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

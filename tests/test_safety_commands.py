"""Issue #15, commands: the report folder's manifest (no foreign file replaced or deleted), `generator import`
into a non-empty folder, paper tables that never hide a broken evaluation, and a table of bad inputs through
every command: exit status 2, one line naming the problem, nothing touched."""

from __future__ import annotations

import builtins
import errno
import io
import json
import os
import re
from pathlib import Path

import pytest

from conftest import CLASSES, MOCK_G32, save_tiny_setup
from viscoin.cli import build_parser, main
from viscoin.interpret.visualise import ActivationMaximisationConfig
from viscoin.model.loading import load_trained
from viscoin.report.html import MANIFEST, markdown_to_html, metrics_html, write_comparison_page
from viscoin.utils.io import OutputFolder, write_json

pytestmark = pytest.mark.usefixtures("one_thread")


def run(argv: list[str]) -> int:
    """`viscoin ARGV` in this process; argparse's own errors exit, with status 2."""
    try:
        return main(argv)
    except SystemExit as exc:
        return int(exc.code or 0)


def snapshot(folder: Path) -> dict[str, bytes | None]:
    """Every file (its bytes) and folder (None) under `folder`."""
    return {str(p.relative_to(folder)): (None if p.is_dir() else p.read_bytes()) for p in sorted(folder.rglob("*"))}


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> tuple[Path, Path]:
    """(checkpoint, data folder) of a saved tiny VisCoIN; f and G beside it."""
    return save_tiny_setup(tmp_path_factory.mktemp("tiny"))


# ----------------------------------------------------------------------------------------------
# 1. The report folder: a manifest of what the report wrote; nothing else replaced or deleted


def report(ckpt: Path, out: Path, *extra: str) -> int:
    return run(["report", str(ckpt), "--out", str(out), "--samples", "2", "--device", "cpu", *extra])


def test_report_refuses_a_foreign_folder_and_overwrite_keeps_foreign_files(tiny, tmp_path, capsys):
    ckpt, _ = tiny
    site = tmp_path / "site"
    (site / "figures").mkdir(parents=True)
    (site / "index.html").write_text("<p>my own page</p>")
    (site / "figures" / "pair-09-class0-concept0.png").write_bytes(b"my figure")
    before = snapshot(site)
    assert report(ckpt, site, "--pairs", "1") == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and f"{site}: not empty and holds no {MANIFEST}" in err and "--overwrite" in err
    assert snapshot(site) == before                                       # nothing written, nothing deleted

    assert report(ckpt, site, "--pairs", "3", "--overwrite") == 0
    assert (site / "index.html").read_text() != "<p>my own page</p>"       # replaced, as asked
    assert (site / "figures" / "pair-09-class0-concept0.png").read_bytes() == b"my figure"   # not ours: kept
    listed = json.loads((site / MANIFEST).read_text())
    assert listed["written_by"] == "viscoin report"
    on_disk = {str(p.relative_to(site)) for p in site.rglob("*.png")} | {"index.html"}
    assert set(listed["files"]) == on_disk - {"figures/pair-09-class0-concept0.png"}
    pairs3 = sorted(n for n in listed["files"] if n.startswith("figures/pair-"))
    assert len(pairs3) >= 2

    # A later report (its own folder now: no --overwrite needed) deletes its stale figures, and only those.
    (site / "notes.txt").write_text("mine")
    assert report(ckpt, site, "--pairs", "1") == 0
    listed = json.loads((site / MANIFEST).read_text())
    assert sorted(n for n in listed["files"] if n.startswith("figures/pair-")) == pairs3[:1]
    for stale in pairs3[1:]:
        assert not (site / stale).exists()
    assert (site / "figures" / "pair-09-class0-concept0.png").read_bytes() == b"my figure"
    assert (site / "notes.txt").read_text() == "mine"


def test_report_refuses_files_changed_since_it_wrote_them(tiny, tmp_path, capsys):
    ckpt, _ = tiny
    site = tmp_path / "site"
    assert report(ckpt, site, "--pairs", "3") == 0
    pairs = sorted((site / "figures").glob("pair-*.png"))
    assert len(pairs) >= 2
    (site / "index.html").write_text("<p>edited by hand</p>")
    before = snapshot(site)
    assert report(ckpt, site, "--pairs", "1") == 2
    assert f"{site / 'index.html'}: changed since `viscoin report` wrote it" in capsys.readouterr().err
    assert snapshot(site) == before
    # With --overwrite the changed index is replaced (asked for), but a changed figure that the new report does
    # not write again is kept: only files unchanged since the report wrote them are ever deleted.
    pairs[-1].write_bytes(b"edited figure")
    assert report(ckpt, site, "--pairs", "1", "--overwrite") == 0
    assert pairs[-1].read_bytes() == b"edited figure"
    assert [p for p in pairs[1:-1] if p.exists()] == []                    # unchanged stale figures: deleted
    assert (site / "index.html").read_text() != "<p>edited by hand</p>"


def test_a_manifest_cannot_make_the_report_delete_files_outside_its_folder(tmp_path, capsys):
    site, outside = tmp_path / "site", tmp_path / "precious.txt"
    site.mkdir()
    outside.write_text("keep me")
    (site / "a.png").write_bytes(b"x")
    for name in ("../precious.txt", str(outside), "figures/../../precious.txt"):
        write_json(site / MANIFEST, {"written_by": "viscoin report", "files": {name: None, "a.png": None}})
        with pytest.raises(ValueError, match=f"holds no {re.escape(MANIFEST)}"):
            OutputFolder(site, "viscoin report", MANIFEST)
        folder = OutputFolder(site, "viscoin report", MANIFEST, overwrite=True)   # the bad manifest is ignored
        folder.file("index.html").write_text("ok")
        assert folder.finish() == [] and outside.read_text() == "keep me" and (site / "a.png").exists()
        (site / MANIFEST).unlink()
        (site / "index.html").unlink()
    # another writer's manifest is not ours either
    write_json(site / MANIFEST, {"written_by": "someone else", "files": {"a.png": None}})
    with pytest.raises(ValueError, match="not written by `viscoin report`"):
        OutputFolder(site, "viscoin report", MANIFEST)


def test_a_report_killed_half_way_is_resumed_and_cleans_up(tmp_path):
    """The manifest lists a file before it is written: a run stopped in between is still recognised."""
    site = tmp_path / "site"
    folder = OutputFolder(site, "viscoin report", MANIFEST)
    folder.file("figures/a.png").write_bytes(b"a")
    folder.file("figures/b.png")                                          # killed while writing b
    assert json.loads((site / MANIFEST).read_text())["files"] == {"figures/a.png": None, "figures/b.png": None}
    again = OutputFolder(site, "viscoin report", MANIFEST)                # no --overwrite needed
    again.file("index.html").write_text("x")
    assert again.finish() == ["figures/a.png"] and sorted(os.listdir(site)) == [MANIFEST, "figures", "index.html"]


def test_a_standalone_comparison_page_keeps_the_report_beside_it(tiny, tmp_path):
    ckpt, _ = tiny
    site = tmp_path / "site"
    assert report(ckpt, site, "--pairs", "1") == 0
    index = (site / "index.html").read_bytes()
    one = load_trained(ckpt, (), "cpu")
    assert one.classes == CLASSES
    write_comparison_page(site, [one, one], pairs=1, samples=1,
                          am=ActivationMaximisationConfig(rounds=1, steps_a=1, steps_b=1))
    assert (site / "index.html").read_bytes() == index                   # outside the page's part: untouched
    files = json.loads((site / MANIFEST).read_text())["files"]
    assert "index.html" in files and "comparison.html" in files


# ----------------------------------------------------------------------------------------------
# 2. `viscoin generator import` never writes into a non-empty folder unless told to


def test_generator_import_refuses_a_non_empty_folder(tmp_path, capsys):
    out = tmp_path / "G"
    assert run(["generator", "import", str(MOCK_G32), str(out)]) == 0
    first = snapshot(out)
    # a second import (here: D into G's folder) would replace G
    assert run(["generator", "import", str(MOCK_G32), str(out), "--which", "D"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and f"{out}: not empty" in err and "--overwrite" in err
    assert snapshot(out) == first
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("mine")
    assert run(["generator", "import", str(MOCK_G32), str(tmp_path / "mine")]) == 2
    assert run(["generator", "import", str(MOCK_G32), str(tmp_path / "mine"), "--overwrite"]) == 0
    assert (tmp_path / "mine" / "notes.txt").read_text() == "mine"
    assert json.loads((tmp_path / "mine" / "config.json").read_text())["network"] == "generator"
    assert run(["generator", "import", str(MOCK_G32), str(out), "--which", "D", "--overwrite"]) == 0
    assert json.loads((out / "config.json").read_text())["network"] == "discriminator"


# ----------------------------------------------------------------------------------------------
# 3. The report's paper tables: exact rows, and a broken evaluation is never swallowed


EVALUATION = {
    "dataset": "CUB", "model": "VisCoIN", "num_concepts": 8,
    "accuracy": {"f": 0.8056, "g": 0.7944, "agreement": 0.9, "count": 100},
    "reconstruction": {"mse": 0.161, "lpips": 0.644, "fid": 16.1, "fid_features": "inception"},
    "faithfulness": {"count": 50, "thresholds": {"0.1": {"median": 0.322, "random_median": 0.03}}},
    "consistency": {"lambdas": {"2.0": {"mean": 0.844, "std": 0.1}}},
}


def html_tables(html: str) -> list[list[list[str]]]:
    """The cells of every table of an HTML fragment (header row included), text only."""
    tables = re.findall(r"<table>(.*?)</table>", html, flags=re.S)
    return [[re.findall(r"<t[hd][^>]*>(.*?)</t[hd]>", row) for row in re.findall(r"<tr>(.*?)</tr>", t)]
            for t in tables]


def test_the_reports_paper_tables_have_exactly_the_expected_rows():
    html = metrics_html(EVALUATION)
    paper = html.split("<details>")[0]
    table1, table2 = html_tables(paper)
    assert table1 == [["Model", "CUB"], ["f (classifier)", "80.56"], ["g (VisCoIN)", "79.44"],
                      ["agreement of g with f", "90.00"]]
    assert table2 == [["Dataset", "MSE", "LPIPS", "FID (inception)", "FF τ=0.1", "Consistency λ=2.0"],
                      ["CUB", "0.1610", "0.644", "16.10", "0.322 (0.030)", "84.4 ± 10.0"]]
    assert "All values of the evaluation" in html


@pytest.mark.parametrize("broken", [
    {**EVALUATION, "accuracy": {"f": "high", "g": 0.79, "agreement": 0.9}},        # a string where a number goes
    {**EVALUATION, "accuracy": [0.8, 0.79]},                                        # a list where a mapping goes
    {**EVALUATION, "consistency": {"lambdas": {"2.0": {"mean": 0.8, "std": None}}}},
])
def test_a_broken_evaluation_raises_instead_of_being_swallowed(broken):
    with pytest.raises((TypeError, ValueError)):
        metrics_html(broken)


def test_a_result_that_is_not_an_evaluation_gets_generic_tables_and_a_note():
    html = metrics_html({"accuracy": {"top1": 0.5}})                     # another tool's result: no f, g
    assert "Not the layout of <code>viscoin evaluate</code> (no key &#x27;f&#x27;)" in html
    assert html_tables(html) and "Table 1" not in html
    plain = metrics_html({"loss": 0.25})                                  # nothing the paper tables read
    assert "Table" not in plain and html_tables(plain) == [[["name", "value"], ["loss", "0.25"]]]
    assert markdown_to_html("") == ""


# ----------------------------------------------------------------------------------------------
# 5. Bad inputs through every command: exit status 2, one line naming the problem, nothing touched


@pytest.fixture(scope="module")
def world(tiny, tmp_path_factory) -> dict[str, Path]:
    """Every path the table's command lines use; existing outputs hold bytes that must survive."""
    ckpt, folder = tiny
    root = tmp_path_factory.mktemp("world")
    paths = {"ckpt": ckpt, "folder": folder, "f": ckpt.parent.parent / "f", "G": ckpt.parent.parent / "G",
             "pkl": MOCK_G32, "image": folder / "a_red_square" / "000.png", "root": root,
             "missing": root / "missing", "text": root / "notes.txt", "foreign": root / "foreign",
             "site": root / "site", "existing": root / "existing.png", "cmp": root / "cmp",
             "notjson": root / "list.json", "eval": root / "eval.json", "ro": root / "read-only", "cwd": root / "cwd"}
    paths["text"].write_text("not an image, not a network")
    paths["foreign"].mkdir()
    (paths["foreign"] / "mine.txt").write_text("mine")
    paths["site"].mkdir()
    (paths["site"] / "index.html").write_text("<p>my page</p>")
    paths["existing"].write_bytes(b"an existing output that must survive")
    paths["cmp"].mkdir()
    (paths["cmp"] / "comparison.md").write_text("my notes")
    paths["notjson"].write_text("[1]")
    paths["eval"].write_text(json.dumps({"model": "VisCoIN", "dataset": "shapes",
                                         "accuracy": {"f": 1.0, "g": 1.0, "agreement": 1.0}}))
    paths["ro"].mkdir()
    (paths["ro"] / "keep.json").write_text("{}")
    paths["cwd"].mkdir()
    paths["ro"].chmod(0o555)
    yield paths
    paths["ro"].chmod(0o755)


def deny_writes(monkeypatch: pytest.MonkeyPatch, folder: Path) -> None:
    """What a read-only folder does to a process that is not root (root ignores the mode bits): every way
    viscoin creates, replaces or opens a file for writing below `folder` fails with EACCES."""
    top = os.path.abspath(folder)

    def inside(path: object) -> bool:
        try:
            p = os.path.abspath(os.fspath(path))                      # type: ignore[arg-type]
        except TypeError:                                             # a file descriptor
            return False
        return p == top or p.startswith(top + os.sep)

    def refuse(path: object) -> None:
        raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), os.fspath(path))   # type: ignore[arg-type]

    real_os_open, real_mkdir, real_open = os.open, os.mkdir, builtins.open
    real_replace, real_rename = os.replace, os.rename

    def os_open(path, flags, *args, **kwargs):
        if flags & (os.O_WRONLY | os.O_RDWR | os.O_CREAT) and inside(path):
            refuse(path)
        return real_os_open(path, flags, *args, **kwargs)

    def mkdir(path, *args, **kwargs):
        if inside(path) and os.path.abspath(path) != top:
            refuse(path)
        return real_mkdir(path, *args, **kwargs)

    def open_(file, mode="r", *args, **kwargs):
        if any(c in mode for c in "wax+") and inside(file):
            refuse(file)
        return real_open(file, mode, *args, **kwargs)

    def replace(src, dst, *args, **kwargs):
        if inside(dst):
            refuse(dst)
        return real_replace(src, dst, *args, **kwargs)

    def rename(src, dst, *args, **kwargs):
        if inside(dst):
            refuse(dst)
        return real_rename(src, dst, *args, **kwargs)

    monkeypatch.setattr(os, "open", os_open)
    monkeypatch.setattr(os, "mkdir", mkdir)
    monkeypatch.setattr(builtins, "open", open_)
    monkeypatch.setattr(io, "open", open_)
    monkeypatch.setattr(os, "replace", replace)
    monkeypatch.setattr(os, "rename", rename)


def not_writable(folder: Path) -> bool:
    try:
        (folder / ".probe").write_text("")
    except OSError:
        return True
    (folder / ".probe").unlink()
    return False


T = "--config tiny"   # every trainer's tiny config
BAD_INPUTS = [
    # generator import
    ("generator import {missing}.pkl {root}/g", "missing.pkl: no such StyleGAN2-ADA network pickle"),
    ("generator import {text} {root}/g", "notes.txt is not a readable StyleGAN2-ADA network pickle"),
    ("generator import {pkl} {foreign}", "foreign: not empty; choose a new or empty folder, or give --overwrite"),
    ("generator export {missing} --out {root}/g", "missing: no training checkpoint"),
    ("generator export {foreign} --out {root}/g", "foreign: no training checkpoint"),
    ("generator evaluate --generator {G} --classifier {f}", "G: unconditional (c_dim=0); evaluate needs a class-conditional"),
    ("generator evaluate --generator {G} --classifier {f} --out {root}/new/g.json", "G: unconditional"),  # no new/
    ("generator evaluate --generator {missing} --classifier {f}", "--generator: {missing}: not a viscoin.stylegan2 checkpoint"),
    ("generator evaluate --generator {G} --classifier {text}", "--classifier: {text}: not valid JSON"),
    ("generator evaluate --generator {G} --classifier {f} --per-class 0", "--per-class: expected a whole number >= 1"),
    ("generator import {pkl} {existing}", "existing.png: exists and is not a folder"),
    ("generator import {pkl} {existing}/sub", "existing.png/sub: Not a directory"),
    ("generator import {pkl} {ro}/g", "read-only/g: Permission denied"),
    ("generator import {pkl} {root}/g --which H", "argument --which: invalid choice: 'H'"),
    # generator sample
    ("generator sample --generator {pkl} --truncation nan --out {existing}", "--truncation: expected a finite number"),
    ("generator sample --generator {pkl} --pad -1 --out {existing}", "--pad: expected a whole number >= 0, got -1"),
    ("generator sample --generator {pkl} --truncation-cutoff -2 --out {existing}", "--truncation-cutoff: expected"),
    ("generator sample --generator {pkl} --batch-size 0 --out {existing}", "--batch-size: expected a whole number >= 1"),
    ("generator sample --generator {missing} --out {existing}", "missing: not a viscoin.stylegan2 checkpoint"),
    ("generator sample --generator {text} --out {existing}", "notes.txt: not valid JSON"),
    ("generator sample --generator {pkl} --seeds 5-2 --out {existing}", "--seeds: range '5-2' is empty"),
    ("generator sample --generator {pkl} --seeds 0-1 --out {foreign}", "foreign: unknown image file extension"),
    ("generator sample --generator {pkl} --seeds 0-1 --out {existing}", "existing.png: exists; give --overwrite"),
    ("generator sample --generator {pkl} --seeds 0-1 --class all --out {site}/g.png", "--class all: this generator is unconditional"),
    ("generator sample --generator {pkl} --seeds 0-1 --out {ro}/grid.png", "read-only/grid.png: Permission denied"),
    # generator info / train
    ("generator info {missing}", "missing: not a viscoin.stylegan2 checkpoint"),
    ("generator info {folder}", "shapes: not a viscoin.stylegan2 checkpoint (no config.json)"),
    ("generator train --config {missing}.yaml --data {folder}", "missing.yaml: no such file, and not a shipped config"),
    (f"generator train {T} --data {{folder}} batch_size=0 run.out_dir={{root}}/run", "batch_size: expected >= 1"),
    (f"generator train {T} --data {{folder}} nosuchkey=1 run.out_dir={{root}}/run", "unknown key(s) ['nosuchkey']"),
    (f"generator train {T} --data {{folder}} run.out_dir={{foreign}}", "foreign is not empty and is not a viscoin run"),
    (f"generator train {T} --data {{folder}} run.out_dir={{cwd}} --resume --overwrite", "--resume and --overwrite"),
    (f"generator train {T} --bogus", "unrecognized arguments: --bogus"),
    # classifier train / test
    (f"classifier train {T} data.root={{folder}} optim.name=rmsprop run.out_dir={{root}}/run", "optim.name: expected one"),
    (f"classifier train {T} data.root={{folder}} optim.lr=nan run.out_dir={{root}}/run", "optim.lr: expected a finite"),
    (f"classifier train {T} data.root={{folder}} run.out_dir={{foreign}}", "foreign is not empty and is not a viscoin run"),
    (f"classifier train {T} data.root={{folder}} run.out_dir=", "run.out_dir: empty"),
    (f"classifier train {T} data.root={{missing}} run.out_dir={{root}}/run", "data.root: folder"),
    (f"classifier train {T} data.root={{text}} run.out_dir={{root}}/run", "notes.txt"),
    (f"classifier train {T} data.root={{folder}} run.out_dir={{existing}}", "existing.png exists and is not a folder"),
    (f"classifier train {T} data.root={{folder}} run.out_dir={{ro}}/run", "read-only/run: Permission denied"),
    ("classifier test {missing} --out {existing}", "missing: not a viscoin.classifier checkpoint"),
    ("classifier test {ckpt} --out {existing}", "expected \"format\": \"viscoin.classifier\", got 'viscoin.model'"),
    ("classifier test {f} --batch-size 0 --out {existing}", "--batch-size: expected a whole number >= 1, got 0"),
    ("classifier test {f} --num-workers -1 --out {existing}", "--num-workers: expected a whole number >= 0"),
    ("classifier test {f} --split valid --out {existing}", "argument --split: invalid choice: 'valid'"),
    # train (VisCoIN)
    (f"train {T} data.root={{folder}} classifier={{missing}} generator={{G}} run.out_dir={{root}}/run",
     "missing: not a viscoin.classifier checkpoint"),
    (f"train {T} data.root={{folder}} classifier={{G}} generator={{f}} run.out_dir={{root}}/run",
     "expected \"format\": \"viscoin.classifier\", got 'viscoin.stylegan2'"),
    (f"train {T} data.root={{folder}} classifier={{f}} generator={{pkl}}x run.out_dir={{root}}/run",
     "not a viscoin.stylegan2 checkpoint"),
    (f"train {T} data.root={{folder}} classifier={{f}} generator={{G}} run.out_dir={{foreign}}",
     "foreign is not empty and is not a viscoin run"),
    (f"train {T} data.root={{folder}} classifier={{f}} generator={{G}} iterations=-1 run.out_dir={{root}}/run",
     "iterations: expected >= 1, got -1"),
    (f"train {T} data.root={{folder}} classifier={{f}} generator={{G}} lr=inf run.out_dir={{root}}/run",
     "lr: expected a finite number"),
    (f"train {T} data.root={{folder}} classifier={{f}} generator={{G}} run.out_dir={{root}}/run --resume",
     "--resume: no checkpoint"),
    # evaluate
    ("evaluate {ckpt} --thresholds nan --out {existing}", "--thresholds: expected a finite number, got 'nan'"),
    ("evaluate {ckpt} --n-faithfulness -3 --out {existing}", "--n-faithfulness: expected a whole number >= 1"),
    ("evaluate {ckpt} --metrics speed --out {existing}", "argument --metrics: invalid choice: 'speed'"),
    ("evaluate {ckpt} --out {foreign}", "--out {foreign}: is a folder; give a file name"),
    ("evaluate {ckpt} --out {ro}/evaluation.json", "read-only/evaluation.json: cannot write there"),
    ("evaluate {ckpt} --out {existing}/x.json", "existing.png/x.json: {existing} is a file, not a folder"),
    ("evaluate {text} --out {existing}", "notes.txt: no config.json"),
    ("evaluate {f} --out {existing}", "format 'viscoin.classifier' is not a concept model"),
    ("evaluate {ckpt} data.root={missing} --out {root}/fresh/sub/e.json", "data.root"),   # and no folder fresh/
    ("evaluate {ckpt} --out {existing}", "existing.png: exists and is not an evaluation written by viscoin evaluate"),
    ("explain {ckpt} {image} --out {existing}", "existing.png: exists; give --overwrite to replace it"),
    ("classifier test {f} --out {existing}", "existing.png: exists; give --overwrite to replace it"),
    ("evaluate {ckpt} --bogus --out {existing}", "unrecognized arguments: --bogus"),
    # explain
    ("explain {ckpt} {missing}.png --out {existing}", "image not found"),
    ("explain {ckpt} {text} --out {existing}", "cannot read image"),
    ("explain {ckpt} {folder} --out {existing}", "shapes: not a file; give an image"),
    ("explain {ckpt} {image} --lambdas x --out {existing}", "--lambdas: expected comma-separated numbers"),
    ("explain {ckpt} {image} --threshold nan --out {existing}", "--threshold: expected a finite number"),
    ("explain {ckpt} {image} --top-k 0 --out {existing}", "--top-k: expected a whole number >= 1, got 0"),
    ("explain {ckpt} {image} --out {foreign}", "foreign: unknown image file extension"),
    ("explain {ckpt} {image} --out {ro}/x.png", "read-only/x.png: Permission denied"),
    ("explain {text} {image} --out {existing}", "notes.txt: no config.json"),
    # report
    ("report {ckpt} --out {site}", "site: not empty and holds no .viscoin-report.json"),
    ("report {ckpt} --out {existing}", "existing.png: exists and is not a folder"),
    ("report {ckpt} --out {root}/r --metrics {notjson}", "list.json: expected a JSON object of metrics"),
    ("report {ckpt} --out {root}/r --metrics {missing}.json", "metrics file not found"),
    ("report {ckpt} --out {root}/r --pairs 0", "--pairs: expected a whole number >= 1, got 0"),
    ("report {ckpt} --out {root}/r --lambdas 1", "--lambdas: expected at least two values"),
    ("report {ckpt} --out {root}/r --metrics {eval} --evaluate", "give either --metrics FILE or --evaluate"),
    ("report {missing} --out {root}/r", "missing: no config.json"),
    ("report {ckpt} --out {ro}/r --pairs 1 --samples 1", "read-only/r: Permission denied"),
    # explore (never serving: every refusal comes before the server starts)
    ("explore {missing}", "missing: no config.json"),
    ("explore {f}", "format 'viscoin.classifier' is not a concept model"),
    ("explore {ckpt} --port 70000", "--port: expected 1..65535, got 70000"),
    ("explore {ckpt} --max-upload-mb nan", "--max-upload-mb: expected a finite number"),
    ("explore {ckpt} --max-upload-mb -1", "--max-upload-mb: expected > 0, got -1.0"),
    ("explore {ckpt} --slots 0", "--slots: expected a whole number >= 1, got 0"),
    ("explore {ckpt} data.root={missing}", "data.root"),
    # demo (refusals only: each before any data is drawn or anything trained)
    ("demo --max-train -1 --out {root}/demo", "--max-train: expected a whole number >= 0, got -1"),
    ("demo --n-faithfulness 0 --out {root}/demo", "--n-faithfulness: expected a whole number >= 1, got 0"),
    ("demo nosuchkey=1 --out {root}/demo", "unknown key(s) ['nosuchkey']"),
    ("demo model.num_concepts=0 --out {root}/demo", "model.num_concepts: expected an integer in [1, 4096], got 0"),
    ("demo --config {missing}.yaml --out {root}/demo", "missing.yaml: no such file, and not a shipped config"),
    ("demo --bogus", "unrecognized arguments: --bogus"),
    # compare
    ("compare {eval} --out {root}/c", "expected at least 2 evaluation files, got 1"),
    ("compare {eval} {missing}.json --out {root}/c", "evaluation file not found"),
    ("compare {eval} {notjson} --out {root}/c", "list.json: not an evaluation written by `viscoin evaluate`"),
    ("compare {eval} {text} --out {root}/c", "notes.txt: not valid JSON"),
    ("compare {eval} {eval} --out {cmp}", "comparison.md: exists and was not written by `viscoin compare`"),
    ("compare {eval} {eval} --out {existing}", "existing.png"),
    ("compare {eval} {eval} --out {ro}", "read-only/comparison.md: Permission denied"),
    ("compare {eval} {eval} --names a --out {root}/c", "names: expected 2 names"),
    # ablate (refusals only: each before anything is trained)
    ("ablate --study loss.gama=0,1 --out {root}/abl", "study loss.gama: loss.gama is not a key of the viscoin config"),
    ("ablate --studies gamma,beta --out {root}/abl", "unknown study 'beta'"),
    ("ablate --family flint --studies gamma --out {root}/abl", "study gamma (γ, the weight of the"),
    ("ablate --studies k model.num_concepts=0 --out {root}/abl", "model.num_concepts: expected an integer in"),
    ("ablate --n-faithfulness 0 --out {root}/abl", "--n-faithfulness: expected a whole number >= 1, got 0"),
    ("ablate --out {foreign}", "foreign: not empty and holds no .viscoin-ablation.json"),
    ("ablate --out {existing}", "existing.png: exists and is not a folder"),
    ("ablate --studies k --out {ro}/abl", "read-only/abl"),
    # fit (refusals only: each before anything is timed or trained)
    ("fit {folder} --out {foreign}", "foreign: not empty and holds no .viscoin-fit.json"),
    ("fit {folder} --out {existing}", "existing.png: exists and is not a folder"),
    ("fit {missing} --out {root}/fit", "missing: no such folder"),
    ("fit {folder} --out {root}/fit gan.kimg=1", "override 'gan.kimg=1': expected STAGE.KEY=VALUE"),
    ("fit {folder} --out {root}/fit --classifier {missing}", "missing: not a viscoin.classifier checkpoint"),
    ("fit {folder} --out {root}/fit --minutes 0", "--minutes: expected > 0"),
    ("fit {folder} --out {root}/fit --budget huge", "argument --budget: invalid choice: 'huge'"),
    ("fit {folder} --out {ro}/fit", "read-only/fit"),
]
for family in ("flint", "flaem"):
    BAD_INPUTS += [
        (f"{family} train {T} data.root={{folder}} classifier={{f}} nosuchkey=1 run.out_dir={{root}}/run",
         "unknown key(s) ['nosuchkey']"),
        (f"{family} train {T} data.root={{folder}} classifier={{f}} run.out_dir={{foreign}}",
         "foreign is not empty and is not a viscoin run"),
        (f"{family} train {T} data.root={{folder}} classifier={{missing}} run.out_dir={{root}}/run",
         "missing: not a viscoin.classifier checkpoint"),
        (f"{family} train {T} data.root={{folder}} classifier={{f}} run.out_dir={{ro}}/run",
         "read-only/run: Permission denied"),
    ]


@pytest.mark.parametrize("line, problem", BAD_INPUTS, ids=[line.split(" {")[0] + f" #{i}"
                                                           for i, (line, _) in enumerate(BAD_INPUTS)])
def test_a_bad_input_is_one_line_exit_2_and_changes_nothing(world, line, problem, monkeypatch, capsys):
    from viscoin.apps.gradio_app import ExploreApp

    def no_server(*args, **kwargs):
        raise AssertionError("the explorer started a server on a bad input")

    monkeypatch.setattr(ExploreApp, "launch", no_server)
    monkeypatch.chdir(world["cwd"])                        # an output that defaults to the working directory
    if "{ro}" in line and not not_writable(world["ro"]):   # root ignores the mode bits: deny as the kernel would
        deny_writes(monkeypatch, world["ro"])
    argv = [a.format(**world) for a in line.split()]
    before = snapshot(world["root"]), snapshot(world["ckpt"].parent.parent)
    rc = run(argv)
    out, err = capsys.readouterr()
    assert rc == 2, (out, err)
    lines = err.splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("viscoin") and "error: " in lines[0], lines[0]
    assert problem.format(**world) in lines[0], lines[0]
    assert "Traceback" not in out and "Traceback" not in err
    monkeypatch.undo()
    assert (snapshot(world["root"]), snapshot(world["ckpt"].parent.parent)) == before


def test_the_table_covers_every_command():
    parser = build_parser()
    top = next(a for a in parser._actions if a.dest == "command")
    commands = set()
    for name, sub in top.choices.items():
        nested = [a for a in sub._actions if getattr(a, "choices", None) and a.dest.endswith("_command")]
        commands |= {f"{name} {s}" for s in nested[0].choices} if nested else {name}
    covered = {" ".join(line.split()[:2]) if line.split()[0] in ("generator", "classifier", "flint", "flaem")
               else line.split()[0] for line, _ in BAD_INPUTS}
    assert commands <= covered, commands - covered

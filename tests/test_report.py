"""`viscoin report`: a static HTML report whose links all resolve and which opens in a real headless
browser (Debian's Chromium driven by Playwright) without errors."""

from __future__ import annotations

import argparse
import json
import shutil
from html.parser import HTMLParser
from pathlib import Path
from urllib.parse import unquote, urlparse

import pytest
import torch

from conftest import CHROMIUM, CHROMIUM_ARGS, CLASSES, browser_unavailable, save_tiny_setup
from viscoin.cli.report import add_report_arguments, run_report_command
from viscoin.report.html import MANIFEST
from viscoin.utils.io import sha256_file, write_json

@pytest.fixture(scope="module")
def report(tmp_path_factory):
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        root = tmp_path_factory.mktemp("report")
        ckpt, _ = save_tiny_setup(root)
        metrics = root / "evaluation-copy.json"
        metrics.write_text(json.dumps({"dataset": "shapes", "accuracy": {"f": 1.0, "g": 0.9, "agreement": 0.9}}))
        stale = ckpt.parent / "report" / "figures" / "pair-09-class0-concept0.png"   # an earlier report's figure
        stale.parent.mkdir(parents=True)
        stale.write_bytes(b"old")
        write_json(stale.parent.parent / MANIFEST, {"written_by": "viscoin report", "files": {
            "figures/pair-09-class0-concept0.png": sha256_file(stale)}})
        assert run_report([str(ckpt), "--metrics", str(metrics), "--pairs", "3", "--samples", "3",
                           "--device", "cpu"]) == 0
        return ckpt.parent / "report" / "index.html"
    finally:
        torch.set_num_threads(threads)


def run_report(argv: list[str]) -> int:
    parser = argparse.ArgumentParser()
    add_report_arguments(parser)
    return run_report_command(parser.parse_args(argv))


class Links(HTMLParser):
    """Every src and href of a page."""

    def __init__(self) -> None:
        super().__init__()
        self.links: list[tuple[str, str]] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.links += [(tag, v) for k, v in attrs if k in ("src", "href") and v is not None]


def test_report_exists_and_links_only_existing_files(report):
    doc = report.read_text(encoding="utf-8")
    parser = Links()
    parser.feed(doc)
    images = [v for tag, v in parser.links if tag == "img"]
    assert len(images) >= 3                                             # relevance map + pair figures
    for tag, link in parser.links:
        url = urlparse(link)
        if link.startswith("#") or url.scheme == "data":
            continue
        assert not url.scheme and not url.netloc, f"not self-contained: {tag} -> {link}"
        assert (report.parent / unquote(url.path)).is_file(), f"{tag} -> {link} does not exist"
    figures = sorted(p.name for p in (report.parent / "figures").iterdir())
    assert "pair-09-class0-concept0.png" not in figures                 # a stale figure was removed
    assert set(figures) == {Path(unquote(v)).name for v in images}
    assert "global-relevance.png" in figures and any(f.startswith("pair-01-") for f in figures)
    # metrics tables from the JSON, the training summary, the class names
    assert "90.00" in doc or "0.9" in doc
    assert "Test summary saved at the end of training" in doc
    assert any(name in doc for name in CLASSES)
    assert "<script" not in doc and "http://" not in doc and "https://" not in doc


def test_report_without_metrics_says_how_to_add_them(report, tmp_path):
    ckpt = report.parent.parent / "viscoin"
    out = tmp_path / "r"
    assert run_report([str(ckpt), "--out", str(out), "--pairs", "1", "--samples", "2", "--device", "cpu"]) == 0
    doc = (out / "index.html").read_text(encoding="utf-8")
    assert "viscoin evaluate" in doc and "--metrics" in doc and "Table 1" not in doc
    # `viscoin evaluate` writes evaluation.json beside the checkpoint: the report picks it up
    (ckpt.parent / "evaluation.json").write_text(json.dumps({"checkpoint": str(ckpt), "dataset": "shapes",
                                                             "accuracy": {"f": 1.0, "g": 0.75, "agreement": 0.75}}))
    try:
        assert run_report([str(ckpt), "--out", str(out), "--pairs", "1", "--samples", "2", "--device", "cpu"]) == 0
    finally:
        (ckpt.parent / "evaluation.json").unlink()
    doc = (out / "index.html").read_text(encoding="utf-8")
    assert "evaluation.json" in doc and ("75.00" in doc or "0.75" in doc)
    with pytest.raises(ValueError, match="data.root"):
        run_report([str(ckpt), "data.root=" + str(tmp_path / "nowhere"), "--out", str(out), "--device", "cpu"])
    with pytest.raises(ValueError, match="either --metrics"):
        run_report([str(ckpt), "--metrics", "m.json", "--evaluate"])


@pytest.mark.skipif(browser_unavailable() is not None, reason=str(browser_unavailable()))
def test_report_opens_in_headless_chromium_without_errors(report, tmp_path):
    from playwright.sync_api import sync_playwright

    problems: list[str] = []
    executable = CHROMIUM if Path(CHROMIUM).exists() else shutil.which("chromium")
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=executable, args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": 1200, "height": 900})
            page.on("console", lambda m: problems.append(f"console {m.type}: {m.text}") if m.type == "error" else None)
            page.on("pageerror", lambda e: problems.append(f"page error: {e}"))
            page.on("requestfailed", lambda r: problems.append(f"failed request: {r.url} ({r.failure})"))
            page.on("response", lambda r: problems.append(f"HTTP {r.status}: {r.url}") if r.status >= 400 else None)
            page.goto(report.resolve().as_uri(), wait_until="load")
            images = page.evaluate(
                "Array.from(document.images).map(i => [i.getAttribute('src'), i.complete, i.naturalWidth])")
            title = page.title()
            shot = tmp_path / "report-screenshot.png"
            page.screenshot(path=str(shot), full_page=True)
        finally:
            browser.close()
    assert problems == []
    assert title.startswith("VisCoIN report")
    assert images and all(done and width > 0 for _, done, width in images), images
    assert shot.stat().st_size > 10_000


# ---------------------------------------------------------------------------------------------
# The class-concept pairs by the paper's rule (r(j, c) > 0.5), capped per class


class Tables(HTMLParser):
    """The cells of every table of a page, row by row."""

    def __init__(self) -> None:
        super().__init__()
        self.tables: list[list[list[str]]] = []
        self.cell: list[str] | None = None

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag == "table":
            self.tables.append([])
        elif tag == "tr":
            self.tables[-1].append([])
        elif tag in ("td", "th"):
            self.cell = []

    def handle_endtag(self, tag: str) -> None:
        if tag in ("td", "th") and self.cell is not None:
            self.tables[-1][-1].append("".join(self.cell).strip())
            self.cell = None

    def handle_data(self, data: str) -> None:
        if self.cell is not None:
            self.cell.append(data)


# class 0: three concepts over 0.5; class 1: one (0.5 itself is not over); class 2: none
RELEVANCE = torch.tensor([[0.9, 0.7, 0.6, 0.2],
                          [0.1, 0.55, 0.5, -0.3],
                          [0.3, 0.2, 0.4, 0.45]])


def pairs_rows(doc: str) -> dict[str, list[str]]:
    parser = Tables()
    parser.feed(doc)
    found = [t for t in parser.tables if t and t[0] and t[0][0] == "class c"]
    assert len(found) == 1
    return {row[0]: row[1:] for row in found[0][1:]}


def test_class_concept_pairs_follow_the_threshold_and_the_cap():
    from viscoin.interpret.explainer import ConceptExplainer

    sel = ConceptExplainer.class_concept_pairs(RELEVANCE, per_class=2)
    assert [s["concepts"].tolist() for s in sel] == [[0, 1], [1], []]
    assert [s["passing"] for s in sel] == [3, 1, 0]
    assert sel[2]["best"] == (3, pytest.approx(0.45)) and sel[0]["relevance"].tolist() == pytest.approx([0.9, 0.7])
    assert [s["concepts"].tolist() for s in ConceptExplainer.class_concept_pairs(RELEVANCE, 0.65)] == [[0, 1], [], []]
    with pytest.raises(ValueError, match="per_class"):
        ConceptExplainer.class_concept_pairs(RELEVANCE, per_class=0)


def test_report_shows_the_pairs_over_the_threshold_capped_per_class(report, tmp_path, monkeypatch):
    from viscoin.interpret.explainer import ConceptExplainer

    monkeypatch.setattr(ConceptExplainer, "global_relevance", lambda self, data: RELEVANCE.clone())
    ckpt = report.parent.parent / "viscoin"
    out = tmp_path / "r"
    metrics = tmp_path / "evaluation.json"      # with the reconstructions' class agreement: said up front
    metrics.write_text(json.dumps({"dataset": "shapes", "accuracy": {"f": 1.0, "g": 0.9, "agreement": 0.9},
                                   "reconstruction": {"mse": 0.1, "reconstruction_agreement": 0.625,
                                                      "reconstruction_ce": 0.8}}))
    assert run_report([str(ckpt), "--out", str(out), "--pairs", "10", "--concepts-per-class", "2",
                       "--samples", "1", "--device", "cpu", "--metrics", str(metrics)]) == 0
    doc = (out / "index.html").read_text(encoding="utf-8")
    assert "f classifies 62.5% of the test reconstructions" in doc and "Rec. same class (%)" in doc
    rows = pairs_rows(doc)
    assert rows == {CLASSES[0]: ["0 (+0.900), 1 (+0.700)", "3 (2 shown)"],
                    CLASSES[1]: ["1 (+0.550)", "1"],
                    CLASSES[2]: ["none above 0.5 (highest: concept 3, r = +0.450)", "0"]}
    assert "4 pairs in 2 of 3 classes" in doc
    # figures: the pairs listed, most relevant first, and no other
    pair_figures = sorted(p.name for p in (out / "figures").glob("pair-*.png"))
    assert pair_figures == ["pair-01-class0-concept0.png", "pair-02-class0-concept1.png", "pair-03-class1-concept1.png"]

    assert run_report([str(ckpt), "--out", str(out), "--relevance-threshold", "0.65", "--pairs", "1",
                       "--samples", "1", "--device", "cpu"]) == 0
    doc = (out / "index.html").read_text(encoding="utf-8")
    rows = pairs_rows(doc)
    assert rows[CLASSES[0]] == ["0 (+0.900), 1 (+0.700)", "2"]
    assert rows[CLASSES[1]] == ["none above 0.65 (highest: concept 1, r = +0.550)", "0"]
    assert sorted(p.name for p in (out / "figures").glob("pair-*.png")) == ["pair-01-class0-concept0.png"]

    assert run_report([str(ckpt), "--out", str(out), "--relevance-threshold", "0.95", "--samples", "1",
                       "--device", "cpu"]) == 0
    doc = (out / "index.html").read_text(encoding="utf-8")
    assert "No class–concept pair has r(j, c) &gt; 0.95" in doc and not list((out / "figures").glob("pair-*.png"))
    with pytest.raises(ValueError, match="--relevance-threshold"):
        run_report([str(ckpt), "--out", str(out), "--relevance-threshold", "1.5"])
    with pytest.raises(SystemExit):
        run_report([str(ckpt), "--out", str(out), "--concepts-per-class", "0"])

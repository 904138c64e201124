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

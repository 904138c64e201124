"""`viscoin explore`: the concept explorer's functions (no browser), its Gradio handlers, the command's
errors, and an end-to-end run in a real headless browser (Debian's Chromium driven by Playwright):
open the app, select an image, move a concept's slider, see the image change; an invalid upload
shows an error and the app keeps serving; no request leaves 127.0.0.1.

Set VISCOIN_SCREENSHOT_DIR=docs to save the browser test's screenshot as docs/explore-screenshot.png,
and VISCOIN_EXPLORE_CHECKPOINT=viscoin-demo/viscoin to run the browser test on a real checkpoint
instead of the tiny random one.
"""

from __future__ import annotations

import importlib.util
import ipaddress
import os
import re
import socket
import struct
import sys
import time
import urllib.request
import zlib
from pathlib import Path
from urllib.parse import urlparse

import numpy as np
import pytest
import torch
from PIL import Image

from conftest import CHROMIUM, CHROMIUM_ARGS, browser_unavailable, save_tiny_setup
from viscoin.apps.explorer import (
    ConceptExplorer,
    UploadError,
    check_upload,
    concept_factors,
    load_explorer,
    spread_indices,
)
from viscoin.interpret import ConceptExplainer

MAX_UPLOAD_MB = 0.05          # small, so that an oversized upload is a small file

# Gradio's queue statistics use pandas options that pandas 3 deprecates (not ours, harmless).
pytestmark = [pytest.mark.usefixtures("one_thread"), pytest.mark.filterwarnings("ignore:.*no_silent_downcasting"),
              pytest.mark.filterwarnings("ignore:The copy keyword is deprecated")]


@pytest.fixture(scope="module")
def setup(tmp_path_factory) -> tuple[Path, Path]:
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        torch.manual_seed(0)
        return save_tiny_setup(tmp_path_factory.mktemp("explore"), per_class=10)
    finally:
        torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def explorer(setup) -> ConceptExplorer:
    ckpt, _ = setup
    return load_explorer(ckpt, gallery_size=4, max_upload_mb=MAX_UPLOAD_MB)


def write_png(path: Path, size: int, seed: int = 0) -> Path:
    rng = np.random.default_rng(seed)
    Image.fromarray(rng.integers(0, 256, (size, size, 3), dtype=np.uint8)).save(path)
    return path


# ---------------------------------------------------------------------------------------------
# The explorer, without a browser


def test_concept_factors_and_spread_indices():
    f = concept_factors([(1, 2.0), (3, 0.0), (1, 0.5)], 4)
    assert f.tolist() == [1.0, 1.0, 1.0, 0.0]                   # concept 1 named twice: 2 x 0.5
    assert concept_factors([], 3).tolist() == [1.0, 1.0, 1.0]
    with pytest.raises(ValueError, match=r"concept: expected in \[0, 4\)"):
        concept_factors([(4, 1.0)], 4)
    with pytest.raises(ValueError, match="finite number >= 0"):
        concept_factors([(0, -1.0)], 4)
    with pytest.raises(ValueError, match="finite number >= 0"):
        concept_factors([(0, float("nan"))], 4)
    assert spread_indices(10, 4) == [0, 3, 6, 9]
    assert spread_indices(3, 8) == [0, 1, 2]
    assert spread_indices(5, 1) == [0] and spread_indices(0, 4) == [] and spread_indices(4, 0) == []


def test_selection_matches_the_model_and_the_explainer(explorer):
    assert explorer.gallery_indices and len(explorer.gallery()) == len(explorer.gallery_indices)
    index = explorer.gallery_indices[-1]
    sel = explorer.select_test(index)
    x = explorer.test_set[index]["image"]
    model, explainer = explorer.model, ConceptExplainer(explorer.model)
    assert sel.source == f"test image {index}" and sel.label == explorer.test_set[index]["label"]
    with torch.no_grad():
        assert torch.allclose(sel.g_probabilities, model.predict(x[None])[0], atol=1e-6)
        f_probs = model.f.features(x[None])["logits"].softmax(dim=1)[0]
    assert torch.allclose(sel.f_probabilities, f_probs, atol=1e-6)
    assert torch.allclose(sel.reconstruction, explainer.reconstruct(x), atol=1e-6)
    r = explainer.local_relevance(x)[0]
    assert sel.concepts.tolist() == torch.argsort(r, descending=True, stable=True).tolist()
    assert torch.allclose(sel.relevance, r[sel.concepts]) and sel.relevance_of(int(sel.concepts[0])) == float(r.max())
    with pytest.raises(ValueError, match="test image: expected an index"):
        explorer.select_test(len(explorer.test_set))
    with pytest.raises(ValueError, match=r"image: expected \[3, 32, 32\]"):
        explorer.select(torch.zeros(3, 16, 16), "small")


def test_edit_moves_concepts_as_the_lambda_sweep_does(explorer):
    sel = explorer.select_test(explorer.gallery_indices[0])
    same = explorer.edit(sel, {0: 1.0})
    assert same.factors == {} and torch.equal(same.image, sel.reconstruction)
    assert float(same.difference.abs().max()) == 0.0
    # one concept: the same image as ConceptExplainer's λ sweep (Φ' and noise fixed)
    j = int(sel.concepts[0])
    one = explorer.edit(sel, {j: 3.0})
    sweep = ConceptExplainer(explorer.model).lambda_sweep(sel.image, j, [3.0])[0]
    assert one.factors == {j: 3.0}
    assert torch.allclose(one.image, sweep, atol=1e-5)
    assert torch.allclose(one.difference, one.image - sel.reconstruction)
    assert float(one.difference.abs().max()) > 1e-3                 # the concept does something
    # several concepts at once: φ scaled per concept, then Ω and G
    both = explorer.edit(sel, [(j, 3.0), (int(sel.concepts[1]), 0.0)])
    with torch.no_grad():
        phi = sel.phi.clone()
        phi[:, j] *= 3.0
        phi[:, int(sel.concepts[1])] = 0.0
        expected = explorer.model.generate(phi, sel.support)[0]
    assert torch.allclose(both.image, expected, atol=1e-5) and not torch.allclose(both.image, one.image)


def test_uploads_are_checked_before_decoding(explorer, tmp_path):
    ok = write_png(tmp_path / "bird.png", 40)
    sel = explorer.select_upload(ok)
    assert sel.source == "bird.png" and sel.label is None and sel.image.shape == (3, 32, 32)
    text = tmp_path / "notes.txt"
    text.write_text("not an image")
    with pytest.raises(UploadError, match="notes.txt is not an image"):
        explorer.select_upload(text)
    big = write_png(tmp_path / "big.png", 200)                         # ~120 kB of noise
    assert big.stat().st_size > MAX_UPLOAD_MB * 2**20
    with pytest.raises(UploadError, match=r"big.png is too large: 0.1 MB, over the limit of 0.05 MB \(--max-upload-mb\)"):
        explorer.select_upload(big)
    empty = tmp_path / "empty.png"
    empty.write_bytes(b"")
    with pytest.raises(UploadError, match="empty"):
        explorer.select_upload(empty)
    truncated = tmp_path / "cut.png"
    truncated.write_bytes(ok.read_bytes()[:200])
    with pytest.raises(UploadError, match="cut.png could not be decoded"):
        explorer.select_upload(truncated, "cut.png")
    with pytest.raises(UploadError, match="not a file"):
        check_upload(tmp_path, 10**6)


def header_only_png(path: Path, width: int, height: int) -> Path:
    """A PNG that declares width x height pixels in a few dozen bytes (its pixel data is never read)."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 16))
                     + chunk(b"IEND", b""))
    return path


@pytest.mark.parametrize("width, height", [(7000, 7000),      # over our 40 megapixels (PIL would only warn)
                                           (20000, 20000),    # over PIL's own decompression-bomb limit too
                                           (2**31 - 1, 1)])   # absurd
def test_an_upload_with_too_many_pixels_is_called_too_large(explorer, tmp_path, width, height):
    png = header_only_png(tmp_path / "huge.png", width, height)
    assert png.stat().st_size < 200
    for call in (lambda: explorer.select_upload(png), lambda: check_upload(png, 10**6)):
        with pytest.raises(UploadError) as info:
            call()
        assert re.fullmatch(r"upload rejected: huge.png is too large: .*more than 40 megapixels", str(info.value))
        assert "not an image" not in str(info.value)


def test_an_upload_with_too_many_bytes_is_called_too_large(explorer, tmp_path):
    big = write_png(tmp_path / "big.png", 200)                         # a valid image, over the byte limit
    with pytest.raises(UploadError, match=r"^upload rejected: big.png is too large: 0.1 MB, over the limit"):
        explorer.select_upload(big)
    with pytest.raises(UploadError, match=r"^upload rejected: small.png is too large: .* over the limit"):
        check_upload(write_png(tmp_path / "small.png", 8), 100)


def test_concept_page(explorer):
    sel = explorer.select_test(explorer.gallery_indices[0])
    page = explorer.concept_page(2, samples=3, sweeps=2, lambdas=(0.0, 1.0, 2.0), selection=sel, classes=2)
    g = explorer.global_relevance()
    assert g.shape == (explorer.model.num_classes, explorer.num_concepts)
    assert [c for c, _ in page.classes] == torch.argsort(g[:, 2], descending=True, stable=True)[:2].tolist()
    acts = [a for _, _, a in page.samples]
    assert len(acts) == 3 and acts == sorted(acts, reverse=True)
    assert acts[0] == pytest.approx(float(explorer.model.pool(explorer.activations().phi)[:, 2].max()))
    for fig in (page.samples_figure, page.sweep_figure):
        assert fig.dtype == np.uint8 and fig.ndim == 3 and fig.shape[2] == 3
    without = explorer.concept_page(2, samples=3, sweeps=2, lambdas=(0.0, 1.0, 2.0))
    assert page.sweep_figure.shape[0] > without.sweep_figure.shape[0]  # one more row: the selected image
    with pytest.raises(ValueError, match=r"concept: expected in \[0, 4\)"):
        explorer.concept_page(4)
    bare = ConceptExplorer(explorer.model, explorer.class_names)
    assert bare.gallery() == []
    with pytest.raises(ValueError, match="no training split"):
        bare.concept_page(0)


# ---------------------------------------------------------------------------------------------
# The command


def run_explore(argv: list[str]) -> int:
    from viscoin.cli import main

    try:
        return main(["explore", *argv])
    except SystemExit as exc:       # argparse's own one-line errors (e.g. --slots 0) exit with status 2
        return int(exc.code or 0)


def test_explore_command_errors(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    assert run_explore([]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and err.startswith("viscoin: error:")
    assert "viscoin-demo/viscoin" in err and "run `viscoin demo` first" in err and "RUN/viscoin" in err
    assert run_explore(["data.root=/elsewhere"]) == 2                  # an override alone: still the default
    assert "run `viscoin demo` first" in capsys.readouterr().err
    assert run_explore([str(tmp_path / "nowhere")]) == 2
    assert "nowhere: no config.json" in capsys.readouterr().err
    assert run_explore(["--max-upload-mb", "0"]) == 2
    assert "--max-upload-mb: expected > 0" in capsys.readouterr().err
    assert run_explore(["--slots", "0"]) == 2
    assert "--slots: expected a whole number >= 1, got 0" in capsys.readouterr().err


def test_explore_without_gradio_says_how_to_install_it(setup, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "gradio", None)                   # `import gradio` fails
    ckpt, _ = setup
    assert run_explore([str(ckpt)]) == 2
    assert "pip install 'viscoin[app]'" in capsys.readouterr().err


# ---------------------------------------------------------------------------------------------
# The app's handlers (Gradio, no browser)

gradio_missing = pytest.mark.skipif(importlib.util.find_spec("gradio") is None,
                                    reason="gradio is not installed (pip install 'viscoin[app]')")


@pytest.fixture(scope="module")
def app(explorer):
    from viscoin.apps.gradio_app import ExploreApp

    app = ExploreApp(explorer, slots=3, samples=3, sweeps=2, title="tiny random model")
    app.build()
    return app


@gradio_missing
def test_handlers_select_edit_reset(app, explorer):
    shown = app.on_gallery(1)
    sel = shown[app.state]
    assert sel.source == f"test image {explorer.gallery_indices[1]}"
    assert shown[app.edited].shape == (256, 256, 3) and shown[app.edited].dtype == np.uint8
    assert np.array_equal(shown[app.edited], shown[app.reconstruction])   # every λ = 1
    assert "g predicts" in shown[app.status] and "f predicts" in shown[app.status]
    assert [shown[dd]["value"] for dd in app.slot_concepts] == sel.concepts[:3].tolist()
    assert all(shown[sl] == 1.0 for sl in app.slot_lambdas)
    assert set(shown[app.g_label]) == set(explorer.class_names)
    concepts = [shown[dd]["value"] for dd in app.slot_concepts]
    moved = app.on_edit(sel, *concepts, 3.0, 1.0, 0.0)
    assert not np.array_equal(moved[app.edited], shown[app.edited])
    assert f"concept {concepts[0]} × 3" in moved[app.status] and f"concept {concepts[2]} × 0" in moved[app.status]
    assert moved[app.added].any() or moved[app.removed].any()
    reset = app.on_reset(sel)
    assert all(reset[sl] == 1.0 for sl in app.slot_lambdas)
    assert np.array_equal(reset[app.edited], shown[app.reconstruction]) and not reset[app.added].any()
    assert "Select an image first" in app.on_edit(None, *concepts, 2.0, 1.0, 1.0)[app.status]


@gradio_missing
def test_handlers_report_errors_in_the_page(app, explorer, tmp_path, monkeypatch, capsys):
    text = tmp_path / "notes.txt"
    text.write_text("hello")
    out = app._guarded(app.on_upload, clear=[app.upload])(str(text))
    assert out[app.status].startswith("⚠ **Error:** upload rejected: notes.txt is not an image")
    assert out[app.upload] is None and app.state not in out
    good = app.on_upload(str(write_png(tmp_path / "ok.png", 48)))
    assert good[app.state].source == "ok.png"

    def broken(*args, **kwargs):
        raise RuntimeError("out of memory")

    monkeypatch.setattr(explorer, "edit", broken)
    out = app._guarded(app.on_edit)(good[app.state], 0, 1, 2, 2.0, 1.0, 1.0)
    assert "internal error (RuntimeError: out of memory)" in out[app.status] and app.edited not in out
    assert "RuntimeError" in capsys.readouterr().err                   # the traceback goes to the terminal
    monkeypatch.undo()
    page = app.on_open_page(good[app.state], 1)
    assert page[app.page_concept] == 1 and "Concept 1" in page[app.page_classes]
    assert page[app.page_samples].dtype == np.uint8 and page[app.page_sweeps].ndim == 3
    with socket.socket() as taken:                                       # a port in use: a user error
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        with pytest.raises(ValueError, match="--port .*choose another --port"):
            app.launch("127.0.0.1", taken.getsockname()[1], block=False)


@gradio_missing
def test_the_server_contacts_no_other_machine(explorer, monkeypatch):
    """Building the app, serving it and answering requests opens connections to this machine only: no analytics,
    no version check, no font or CDN fetch from the server side (every other address is refused and recorded)."""
    from viscoin.apps.gradio_app import ExploreApp

    contacted: list[object] = []
    resolved: list[object] = []

    def local(host: object) -> bool:
        if isinstance(host, bytes):
            host = host.decode()
        if not isinstance(host, str) or host == "" or host.startswith("/"):     # a Unix socket is local too
            return True
        try:
            return host == "localhost" or ipaddress.ip_address(host.split("%")[0]).is_loopback
        except ValueError:
            return False

    real_connect, real_connect_ex, real_getaddrinfo = socket.socket.connect, socket.socket.connect_ex, socket.getaddrinfo

    def connect(self, address):
        contacted.append(address)
        if not local(address[0] if isinstance(address, tuple) else address):
            raise OSError(f"test: outgoing connection to {address} refused")
        return real_connect(self, address)

    def connect_ex(self, address):
        contacted.append(address)
        if not local(address[0] if isinstance(address, tuple) else address):
            return 111
        return real_connect_ex(self, address)

    def getaddrinfo(host, *args, **kwargs):
        resolved.append(host)
        if not local(host):
            raise socket.gaierror(f"test: name lookup of {host} refused")
        return real_getaddrinfo(host, *args, **kwargs)

    monkeypatch.setattr(socket.socket, "connect", connect)
    monkeypatch.setattr(socket.socket, "connect_ex", connect_ex)
    monkeypatch.setattr(socket, "getaddrinfo", getaddrinfo)
    app = ExploreApp(explorer, slots=2, samples=2, sweeps=1, title="no outgoing connection")
    url = app.launch("127.0.0.1", free_port(), block=False)
    try:
        for path in ("", "config", "gradio_api/info"):
            with urllib.request.urlopen(url.rstrip("/") + "/" + path, timeout=30) as response:
                assert response.status == 200 and response.read()
        time.sleep(2)                                  # room for a background thread (analytics, update check)
    finally:
        app.blocks.close()
    remote = [a for a in contacted if not local(a[0] if isinstance(a, tuple) else a)]
    lookups = [h for h in resolved if not local(h)]
    assert remote == [] and lookups == [], f"the server reached out: {remote} {lookups}"
    assert any(isinstance(a, tuple) and a[0] == "127.0.0.1" for a in contacted)    # the requests did go through


# ---------------------------------------------------------------------------------------------
# In a real browser


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.skipif(browser_unavailable() is not None, reason=str(browser_unavailable()))
@gradio_missing
def test_explore_in_headless_chromium(setup, tmp_path):
    from playwright.sync_api import expect, sync_playwright

    from viscoin.apps.gradio_app import ExploreApp

    real = os.environ.get("VISCOIN_EXPLORE_CHECKPOINT")
    explorer = load_explorer(real or setup[0], gallery_size=8 if real else 4, max_upload_mb=MAX_UPLOAD_MB)
    app = ExploreApp(explorer, slots=3, samples=4, sweeps=2, title=f"Model: {real or 'tiny random model (test)'}")
    url = app.launch("127.0.0.1", free_port(), block=False)
    bad = tmp_path / "notes.txt"
    bad.write_text("this is not an image")
    big = write_png(tmp_path / "big.png", 200)
    changed = ("src => { const img = document.querySelector('#explore-edited img'); "
               "return img && img.src && img.getAttribute('src') !== src; }")
    requests: list[str] = []
    problems: list[str] = []
    try:
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
            try:
                page = browser.new_page(viewport={"width": 1400, "height": 1000})
                page.on("request", lambda r: requests.append(r.url))
                page.on("pageerror", lambda e: problems.append(f"page error: {e}"))
                page.goto(url, wait_until="load")
                status = page.locator("#explore-status")
                first = explorer.gallery_indices[0]                             # selected on load
                expect(status).to_contain_text(f"test image {first}: g predicts", timeout=20_000)
                # select another image in the gallery
                index = explorer.gallery_indices[1]
                page.locator("#explore-gallery button.thumbnail-item").nth(1).click()
                expect(status).to_contain_text(f"test image {index}:", timeout=15_000)
                edited = page.locator("#explore-edited img")
                expect(edited).to_be_visible(timeout=10_000)
                before = edited.get_attribute("src")
                # move the first concept's slider: the edited image changes
                slider = page.locator("#explore-slot-0-lambda input[type=range]")
                slider.fill("3")
                expect(status).to_contain_text("× 3", timeout=10_000)
                page.wait_for_function(changed, arg=before, timeout=10_000)
                after = edited.get_attribute("src")
                assert after and after != before
                if os.environ.get("VISCOIN_SCREENSHOT_DIR"):
                    out = Path(os.environ["VISCOIN_SCREENSHOT_DIR"])
                    out.mkdir(parents=True, exist_ok=True)
                    page.screenshot(path=str(out / "explore-screenshot.png"), full_page=True)
                # an invalid upload: an error in the page, and the app keeps serving
                page.locator("#explore-upload input[type=file]").set_input_files(str(bad))
                expect(status).to_contain_text("notes.txt is not an image", timeout=10_000)
                # an upload over the limit is refused before it reaches the server (Gradio's message)
                page.locator("#explore-upload input[type=file]").set_input_files(str(big))
                expect(page.get_by_text("exceed the maximum allowed size")).to_be_visible(timeout=10_000)
                slider.fill("0")
                expect(status).to_contain_text("× 0", timeout=10_000)
                page.wait_for_function(changed, arg=after, timeout=10_000)
            finally:
                browser.close()
    finally:
        app.blocks.close()
    hosts = {urlparse(u).hostname for u in requests if urlparse(u).scheme in ("http", "https", "ws", "wss")}
    assert hosts == {"127.0.0.1"}, f"requests left the machine: {sorted(hosts)}"
    assert problems == []

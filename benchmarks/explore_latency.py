"""Slider latency of `viscoin explore`: from a λ change to the new image, printed as a table.

The target (issue #8): at the demo's resolution (64x64 images, a small StyleGAN2) on a 2-core CPU,
a slider move shows the new image in under 1 second. Rows:

- select an image:      f, Ψ, Θ, Ω and G once; the explorer caches the result (`ConceptExplorer.select`);
- slider move, model:   Ω and G's synthesis for one image (`ConceptExplorer.edit`);
- slider move, handler: the same plus the difference images and the arrays the page shows
                        (`ExploreApp.on_edit`);
- slider move, browser: headless Chromium (Playwright) sets the slider; from then until the page
                        shows the new, loaded image: event, queue, model, PNG encoding, HTTP, decoding.

Default model: the demo's architecture with random weights (speed does not depend on them): a
ResNet18 of width 16 with 12 classes (full width where this viscoin has no `width`), a StyleGAN2
at 64x64 with z = w = 128, channel_base 2048, channel_max 128 (the shipped birds generator's) and 2 mapping
layers, K = 64 concepts;
or a trained checkpoint with its data (`--checkpoint viscoin-demo/viscoin`).

    python benchmarks/explore_latency.py                     # 1 torch thread (the browser gets the other core)
    python benchmarks/explore_latency.py --threads 2 --moves 50
    python benchmarks/explore_latency.py --checkpoint viscoin-demo/viscoin
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import shutil
import socket
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from metrics_time import ToyDataset  # noqa: E402
from timing import time_steps  # noqa: E402

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--no-first-run"]


def demo_like_model(k: int, classes: int, adapter: int):
    """A random VisCoIN with the demo's architecture (see the module docstring)."""
    from viscoin.classifier.model import Classifier, ClassifierConfig
    from viscoin.model import VisCoIN, VisCoINConfig
    from viscoin.stylegan import Generator, GeneratorConfig, MappingConfig, SynthesisConfig

    torch.manual_seed(0)
    narrow = {"width": 16} if "width" in {f.name for f in dataclasses.fields(ClassifierConfig)} else {}
    f = Classifier(ClassifierConfig(arch="resnet18", num_classes=classes, pretrained="none", **narrow),
                   load_pretrained=False)
    G = Generator(GeneratorConfig(z_dim=128, w_dim=128, img_resolution=64, mapping=MappingConfig(num_layers=2),
                                  synthesis=SynthesisConfig(channel_base=2048, channel_max=128, num_fp16_res=0,
                                                            conv_clamp=None)))
    model = VisCoIN(VisCoINConfig(num_concepts=k, adapter_channels=adapter), f, G, resolution=64).eval()
    desc = (f"random demo-like VisCoIN: ResNet18 width {narrow.get('width', 64)}, {classes} classes; "
            f"G 64x64 ({sum(p.numel() for p in G.parameters()) / 1e6:.2f} M parameters); K = {k}")
    return model, desc


def samples_ms(step: Callable[[], None], device: torch.device, n: int) -> list[float]:
    """Milliseconds of each of `n` calls of `step`, after one warm-up call."""
    step()
    return [1000 * time_steps(step, device, warmup=0, iters=1)["seconds"] for _ in range(n)]


def browser_ms(app, moves: int) -> list[float]:
    """Milliseconds from setting slot 1's slider to the new edited image being loaded, in Chromium."""
    from playwright.sync_api import expect, sync_playwright

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    url = app.launch("127.0.0.1", port, block=False)
    wait_js = """src => { const img = document.querySelector('#explore-edited img');
                          return img && img.getAttribute('src') !== src && img.complete && img.naturalWidth > 0; }"""
    out = []
    try:
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
            try:
                page = browser.new_page(viewport={"width": 1400, "height": 1000})
                page.goto(url, wait_until="load")
                expect(page.locator("#explore-status")).to_contain_text("g predicts", timeout=60_000)
                slider = page.locator("#explore-slot-0-lambda input[type=range]")
                edited = page.locator("#explore-edited img")
                for i in range(moves + 1):                     # the first move warms up
                    before = edited.get_attribute("src")
                    t0 = time.perf_counter()
                    slider.fill(f"{0.1 + 0.05 * (i % 78):.2f}")  # a new λ every time (same λ: same image)
                    page.wait_for_function(wait_js, arg=before, timeout=30_000, polling=5)
                    if i:
                        out.append(1000 * (time.perf_counter() - t0))
            finally:
                browser.close()
    finally:
        app.blocks.close()
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoint", type=Path, default=None,
                        help="a VisCoIN folder (default: random demo-like model)")
    parser.add_argument("--concepts", type=int, default=64, help="K of the random model")
    parser.add_argument("--adapter-channels", type=int, default=128, help="Ψ's adapter channels of the random model")
    parser.add_argument("--moves", type=int, default=30, help="timed slider moves per row")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (0: torch's default)")
    parser.add_argument("--no-browser", action="store_true", help="skip the browser row")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    from viscoin.apps.explorer import ConceptExplorer, load_explorer

    device = torch.device("cpu")
    if args.checkpoint is not None:
        explorer = load_explorer(args.checkpoint, gallery_size=8)
        desc = f"checkpoint {args.checkpoint}"
    else:
        model, desc = demo_like_model(args.concepts, 12, args.adapter_channels)
        names = [f"class {c}" for c in range(12)]
        explorer = ConceptExplorer(model, names, test_set=ToyDataset(8, 12, 64, seed=1), gallery_size=8)
    x = explorer.test_set[explorer.gallery_indices[0]]["image"]
    sel = explorer.select(x, "benchmark")
    concepts = [int(j) for j in sel.concepts[:3]]
    lam = iter(range(10**9))

    rows = [("select an image (f, Ψ, Θ, Ω, G; cached)", samples_ms(lambda: explorer.select(x, "b"), device, 10))]
    rows.append(("slider move, model (Ω + G, one image)",
                 samples_ms(lambda: explorer.edit(sel, {concepts[0]: 0.5 + 0.01 * (next(lam) % 300)}), device,
                            args.moves)))
    browser_skip = None
    try:
        from viscoin.apps.gradio_app import ExploreApp

        app = ExploreApp(explorer, slots=3)
        app.build()
        rows.append(("slider move, handler (+ difference images, page arrays)",
                     samples_ms(lambda: app.on_edit(sel, *concepts, 0.5 + 0.01 * (next(lam) % 300), 1.0, 1.0),
                                device, args.moves)))
        if args.no_browser:
            browser_skip = "--no-browser"
        elif not (Path(CHROMIUM).exists() or shutil.which("chromium")):
            browser_skip = f"no Chromium at {CHROMIUM}"
        else:
            rows.append(("slider move, browser (Chromium: set λ → new image loaded)", browser_ms(app, args.moves)))
    except ImportError as exc:       # gradio or playwright missing
        browser_skip = str(exc)

    print(f"\n{desc}; torch {torch.__version__}, {torch.get_num_threads()} thread(s), CPU\n")
    print("| step | median ms | p90 ms | max ms | runs |")
    print("|---|---:|---:|---:|---:|")
    for name, ms in rows:
        p90 = statistics.quantiles(ms, n=10)[-1] if len(ms) >= 2 else ms[0]
        print(f"| {name} | {statistics.median(ms):.1f} | {p90:.1f} | {max(ms):.1f} | {len(ms)} |")
    if browser_skip:
        print(f"\n(browser row skipped: {browser_skip})")


if __name__ == "__main__":
    main()

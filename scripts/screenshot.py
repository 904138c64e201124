"""Screenshot of an HTML page in headless Chromium (Debian's chromium, driven by Playwright).

    python scripts/screenshot.py viscoin-demo/report/index.html docs/demo-report.png [--selector '#pair-1' --height 1400]

Used for the README's pictures of `viscoin demo`'s report; the page is opened from disk (file://),
with no network.
"""

from __future__ import annotations

import argparse
from pathlib import Path

CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--no-first-run"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("page", type=Path, help="HTML file")
    parser.add_argument("out", type=Path, help="PNG to write")
    parser.add_argument("--width", type=int, default=1200)
    parser.add_argument("--height", type=int, default=0, help="clip to this height (0: the full page)")
    parser.add_argument("--selector", default="", help="start the clip at this element (CSS selector), e.g. '#pair-1'")
    parser.add_argument("--chromium", default="/usr/bin/chromium")
    args = parser.parse_args()
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=args.chromium, args=CHROMIUM_ARGS)
        page = browser.new_page(viewport={"width": args.width, "height": args.height or 900})
        page.goto(args.page.resolve().as_uri())
        page.wait_for_load_state("networkidle")
        top = 0.0
        if args.selector:
            box = page.locator(args.selector).first.bounding_box()
            if box is None:
                raise SystemExit(f"--selector {args.selector!r}: no visible element on {args.page}")
            top = max(0.0, box["y"] - 10)
        clip = {"x": 0, "y": top, "width": args.width, "height": args.height} if args.height else None
        page.screenshot(path=str(args.out), full_page=True, clip=clip)
        browser.close()
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()

"""Screenshots of a report for the docs, taken in Debian's Chromium (playwright, no downloaded browser).

    .venv/bin/python scripts/screenshot.py runs/demo/report.html docs/
writes docs/report.png (verdict and loss over training) and docs/report-attention.png
(Model Analysis Table and attention viewer, with a destination token hovered)."""

import sys
from pathlib import Path

from playwright.sync_api import sync_playwright

FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-background-networking",
         "--disable-component-update", "--disable-sync"]


def main(report: Path, out: Path) -> None:
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path="/usr/bin/chromium", args=FLAGS)
        page = browser.new_page(viewport={"width": 1280, "height": 900}, device_scale_factor=1)
        page.goto(report.resolve().as_uri())
        page.wait_for_selector("#attn-heatmap .main-svg")
        top = page.locator("#loss").bounding_box()
        page.screenshot(path=out / "report.png", clip={"x": 0, "y": 0, "width": 1280, "height": top["y"] + top["height"] + 8})
        # a viewport as tall as the page: the screenshot then needs no scrolling, which would move the hover
        page.set_viewport_size({"width": 1280, "height": page.evaluate("document.body.scrollHeight")})
        page.hover("#attn-tokens span:nth-child(50)")
        page.locator("#attention").screenshot(path=out / "report-attention.png")
        browser.close()


if __name__ == "__main__":
    main(Path(sys.argv[1]), Path(sys.argv[2]))

"""A screenshot of the ``headstart serve`` page after it has predicted a few images (for the README).

Starts ``python -m headstart serve RUN --port 0``, opens the page in headless Chromium (Debian's ``chromium``,
driven by Playwright), picks the images through the page's file input, waits for every prediction and saves the
page as a PNG:

    python scripts/serve_screenshot.py runs/fashion IMAGE... --out docs/serve_page.png
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("run", help="run directory (or .onnx model) to serve")
    p.add_argument("images", nargs="+", help="image files to predict on the page")
    p.add_argument("--out", default="docs/serve_page.png", help="PNG to write (default docs/serve_page.png)")
    p.add_argument("--width", type=int, default=1280, help="viewport width in pixels (default 1280)")
    p.add_argument("--height", type=int, default=820, help="viewport height in pixels (default 820)")
    p.add_argument("--chromium", default=os.environ.get("HEADSTART_CHROMIUM") or shutil.which("chromium")
                   or "/usr/bin/chromium", help="the Chromium executable (default: chromium on PATH)")
    args = p.parse_args()

    from playwright.sync_api import expect, sync_playwright

    with tempfile.TemporaryDirectory() as tmp:
        log = Path(tmp) / "serve.log"
        with open(log, "w") as out:
            server = subprocess.Popen([sys.executable, "-m", "headstart", "serve", args.run, "--port", "0"],
                                      cwd=REPO, stdout=out, stderr=out)
        try:
            deadline = time.time() + 180
            while not ((m := re.search(r"on (http://\S+/)", text := log.read_text())) and "startup complete" in text):
                if server.poll() is not None or time.time() > deadline:
                    sys.exit(f"the server did not start:\n{log.read_text()}")
                time.sleep(0.2)
            with sync_playwright() as pw:
                browser = pw.chromium.launch(executable_path=args.chromium, headless=True, args=["--no-sandbox"])
                page = browser.new_page(viewport={"width": args.width, "height": args.height}, device_scale_factor=1)
                page.goto(m.group(1))
                expect(page.locator("#status")).to_contain_text("ready", timeout=30_000)
                page.locator("#file-input").set_input_files(args.images)
                expect(page.locator(".card.pending")).to_have_count(0, timeout=120_000)
                page.wait_for_timeout(600)  # the bars' transition
                page.screenshot(path=args.out, full_page=True)
                browser.close()
        finally:
            server.terminate()
            server.wait(30)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()

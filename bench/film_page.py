"""The cloud-film page on a phone, in Debian's headless Chromium (targets: first image painted
<= 1 s after opening the link; scrolling a preloaded 300-slice CT >= 30 slices/s).

    .venv/bin/python bench/film_page.py [--slices 300] [--opens 5] [--network none|4g|3g]

Synthesises a CT study (a localizer and an axial series of --slices slices), ingests it into a
fresh embedded data directory, starts `cloudfilm serve` on 127.0.0.1, creates a share link and
opens it --opens times, each in a new browser context (empty cache) on a phone viewport
(390x844 CSS px at 3x). For each open, from the Chromium performance timeline:

- first image painted: the Element Timing ``renderTime`` of the first slice (an <img> in the
  page, painted before any script runs), in ms since the navigation started;
- first canvas draw: the viewer's own mark once its script drew that slice on the canvas;
- bytes for the first image: the page, its script and style, and the first slice (resource
  timing ``transferSize``).

Then, in the last context, it opens the axial series from the strip, waits until every slice is
preloaded, and reports the bytes of the whole series and the scroll rate: one slice per
animation frame, each drawn before the next frame (the display's frame rate, 60 Hz in headless
Chromium, caps it).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.embedded import load_study, serve
from bench.embedded import token as bench_token
from tests.browser import PHONE, launch

INIT = """
performance.setResourceTimingBufferSize(5000);
window.__firstImage = new Promise((resolve) => {
  new PerformanceObserver((list, obs) => {
    for (const e of list.getEntries()) {
      if (e.identifier === "first-image") { obs.disconnect(); resolve(e.renderTime || e.loadTime); }
    }
  }).observe({ type: "element", buffered: true });
});
"""

FIRST_OPEN = """async () => {
  const late = new Promise((r) => setTimeout(() => r(-1), 10000));
  const paint = await Promise.race([window.__firstImage, late]);
  await Promise.race([late, new Promise((r) => {
    const t = setInterval(() => {
      if (performance.getEntriesByName("cloudfilm:first-draw").length) { clearInterval(t); r(); }
    }, 10);
  })]);
  const mark = performance.getEntriesByName("cloudfilm:first-draw")[0];
  const draw = mark ? mark.startTime : -1;
  const nav = performance.getEntriesByType("navigation")[0];
  const first = document.querySelector("#first").src;
  let bytes = nav.transferSize;
  for (const e of performance.getEntriesByType("resource")) {
    if (e.name === first || e.name.includes("/static/")) bytes += e.transferSize;
  }
  return { paint, draw, bytes, html: nav.transferSize };
}"""

SERIES_BYTES = """(series) => {
  let bytes = 0, n = 0;
  for (const e of performance.getEntriesByType("resource")) {
    if (e.name.includes(`/series/${series}/instances/`) && e.name.includes("/rendered")) {
      bytes += e.transferSize; n += 1;
    }
  }
  return { bytes, n };
}"""

SCROLL_RAF = """async () => {
  const cf = window.cloudfilm, n = cf.state().count;
  cf.go(0);
  await new Promise((r) => requestAnimationFrame(r));
  const d0 = cf.state().drawn, t0 = performance.now();
  for (let i = 1; i < n; i += 1) {
    cf.go(i);
    await new Promise((r) => requestAnimationFrame(r));
  }
  return { slices: cf.state().drawn - d0, ms: performance.now() - t0 };
}"""


def _share(base: str, data: Path) -> str:
    headers = {"Authorization": f"Bearer {bench_token(data, 'clinician')}"}
    req = urllib.request.Request(f"{base}/dicom-web/studies", headers=headers)
    with urllib.request.urlopen(req) as r:
        study = json.loads(r.read())[0]["0020000D"]["Value"][0]
    req = urllib.request.Request(
        f"{base}/api/shares",
        data=json.dumps({"study_uid": study}).encode(),
        headers={**headers, "Content-Type": "application/json"},
        method="POST",
    )
    with urllib.request.urlopen(req) as r:
        url: str = json.loads(r.read())["url"]
    return url


NETWORKS = {
    # download/upload in bytes/s, latency in ms (Chrome DevTools' presets)
    "4g": {"downloadThroughput": 9_000_000 / 8, "uploadThroughput": 1_500_000 / 8, "latency": 85},
    "3g": {"downloadThroughput": 1_600_000 / 8, "uploadThroughput": 750_000 / 8, "latency": 150},
}


def _measure(url: str, opens: int, slices: int, network: str) -> None:
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = launch(p)
        runs: list[dict[str, Any]] = []
        page = None
        for _ in range(opens):
            if page is not None:
                page.context.close()
            context = browser.new_context(**PHONE)
            context.add_init_script(INIT)
            page = context.new_page()
            if network in NETWORKS:
                cdp = context.new_cdp_session(page)
                cdp.send("Network.enable")
                cdp.send(
                    "Network.emulateNetworkConditions", {"offline": False, **NETWORKS[network]}
                )
            page.goto(url)
            runs.append(page.evaluate(FIRST_OPEN))
        print(f"{'open':>4} {'first image ms':>15} {'canvas draw ms':>15} {'bytes':>8}")
        for i, r in enumerate(runs, 1):
            print(f"{i:4} {r['paint']:15.0f} {r['draw']:15.0f} {r['bytes']:8}")
        paints = [r["paint"] for r in runs[1:]] or [runs[0]["paint"]]
        print(
            f"first image painted: median {statistics.median(paints):.0f} ms, "
            f"max {max(paints):.0f} ms (opens 2..{opens}; open 1 is the first after start)"
        )
        print(f"bytes to the first image: {runs[-1]['bytes']} (page {runs[-1]['html']})")

        assert page is not None
        page.locator("#strip button").nth(1).click()
        page.wait_for_function(f"() => window.cloudfilm.state().count === {slices}")
        t0 = time.perf_counter()
        page.wait_for_function(
            f"() => window.cloudfilm.state().loaded === {slices}", timeout=300_000
        )
        preload_s = time.perf_counter() - t0
        series = page.evaluate("() => window.cloudfilm.state().series")
        sb = page.evaluate(SERIES_BYTES, series)
        print(
            f"series of {slices} slices preloaded in {preload_s:.1f} s: {sb['n']} images, "
            f"{sb['bytes'] / 1e6:.1f} MB ({sb['bytes'] / max(sb['n'], 1) / 1e3:.0f} kB/slice)"
        )
        raf = page.evaluate(SCROLL_RAF)
        print(
            f"scroll, one slice per animation frame: {raf['slices'] / raf['ms'] * 1000:.1f} "
            f"slices/s ({raf['slices']} slices)"
        )
        browser.close()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--slices", type=int, default=300)
    ap.add_argument("--opens", type=int, default=5)
    ap.add_argument(
        "--network", choices=["none", *NETWORKS], default="none", help="emulated phone network"
    )
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as d:
        data, _ = load_study(Path(d), modality="CT", images=args.slices, seed=5)
        with serve(data) as (base, _ready_ms):
            _measure(_share(base, data), args.opens, args.slices, args.network)
    return 0


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    sys.exit(main())

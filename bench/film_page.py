"""The cloud-film page on a phone, in Debian's headless Chromium (targets: first image painted
<= 1 s after opening the link; window/level drag repaint <= 16 ms a frame once the values are
in; a 300-slice CT's values <= 40 % of raw; scrolling a loaded 300-slice CT >= 30 slices/s).

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

Then, in the last context, it waits until every slice's stored values have arrived and reports:
the bytes of the whole series on the wire (gzip content coding) against the raw 16-bit values
and, from the same files, a 16-bit greyscale PNG of each slice; the time its worker takes to
decode a slice (inflate and unpack); the window/level drag repaint (one window change per
animation frame, each repainted from the values in the page: the synchronous time of a change);
the scroll rate: one slice
per animation frame, each drawn before the next frame (the display's frame rate, 60 Hz in
headless Chromium, caps it); and the memory the page holds for the series' values (its typed
arrays: the slices kept decoded around the current one, the rest as the gzip bytes received)
once they have all arrived, and again after that scroll through the whole series.
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
    if (e.name.includes(`/series/${series}/instances/`) && e.name.includes("/values")) {
      bytes += e.transferSize; n += 1;
    }
  }
  return { bytes, n };
}"""

WL_DRAG = """async () => {
  const cf = window.cloudfilm, times = [];
  for (let i = 0; i < 120; i += 1) {
    const t0 = performance.now();
    cf.setWindow([40 + (i % 40) * 5, 400 + (i % 30) * 20]);
    times.push(performance.now() - t0);
    await new Promise((r) => requestAnimationFrame(r));
  }
  times.sort((a, b) => a - b);
  return { median: times[60], p95: times[113], max: times[119] };
}"""

SCROLL_RAF = """async () => {
  // from the first slice, once the slices near it are decoded (as they are after a pause)
  const cf = window.cloudfilm, n = cf.state().count;
  cf.go(0);
  while (!cf.state().values || cf.state().held.decoded < Math.min(n, 33)) {
    await new Promise((r) => setTimeout(r, 20));
  }
  await new Promise((r) => requestAnimationFrame(r));
  const d0 = cf.state().drawn, t0 = performance.now();
  for (let i = 1; i < n; i += 1) {
    cf.go(i);
    await new Promise((r) => requestAnimationFrame(r));
  }
  return { slices: cf.state().drawn - d0, ms: performance.now() - t0, frames: n - 1 };
}"""


HELD = """() => {
  const h = window.cloudfilm.state().held;
  return { ...h, heap: performance.memory ? performance.memory.usedJSHeapSize : -1 };
}"""


def _held(label: str, page: Any, raw: int) -> None:
    """What the page holds for the series' values, after a full garbage collection."""
    page.context.new_cdp_session(page).send("HeapProfiler.collectGarbage")
    h = page.evaluate(HELD)
    print(
        f"values held {label}: {h['bytes'] / 1e6:.1f} MB = {100 * h['bytes'] / raw:.1f} % of "
        f"the series decoded ({h['decoded']} slices decoded {h['decodedBytes'] / 1e6:.1f} MB, "
        f"{h['packed']} gzip {h['packedBytes'] / 1e6:.1f} MB; JS heap {h['heap'] / 1e6:.1f} MB)"
    )


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


def png16_bytes(folder: Path) -> int:
    """Bytes of the axial slices as 16-bit greyscale PNGs (Pillow, the best compression)."""
    import io

    import numpy as np
    import pydicom
    from PIL import Image

    total = 0
    for path in sorted(folder.glob("*.dcm"))[1:]:  # the first file is the scout
        arr = pydicom.dcmread(path).pixel_array.astype(np.uint16)
        out = io.BytesIO()
        Image.fromarray(arr).save(out, format="PNG", compress_level=9)
        total += out.tell()
    return total


def _measure(url: str, opens: int, slices: int, network: str, png_bytes: int) -> None:
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
        page.wait_for_function(f"() => window.cloudfilm.state().count === {slices}")
        t0 = time.perf_counter()
        page.wait_for_function(
            f"() => window.cloudfilm.state().loaded === {slices}", timeout=300_000
        )
        preload_s = time.perf_counter() - t0
        st = page.evaluate("() => window.cloudfilm.state()")
        sb = page.evaluate(SERIES_BYTES, st["series"])
        raw = slices * 512 * 512 * 2
        print(
            f"series of {slices} slices' values in {preload_s:.1f} s: {sb['n']} slices, "
            f"{sb['bytes'] / 1e6:.1f} MB on the wire = {100 * sb['bytes'] / raw:.1f} % of raw "
            f"{raw / 1e6:.1f} MB; 16-bit PNG {100 * png_bytes / raw:.1f} % of raw"
        )
        _held("after loading", page, raw)
        dec = st["decoded"]
        print(
            f"decoding in the page's worker (inflate + unpack): "
            f"{dec['ms'] / max(dec['n'], 1):.1f} ms/slice ({dec['n']})"
        )
        wl = page.evaluate(WL_DRAG)
        print(
            f"window/level drag repaint: median {wl['median']:.1f} ms, p95 {wl['p95']:.1f} ms, "
            f"max {wl['max']:.1f} ms per frame"
        )
        raf = page.evaluate(SCROLL_RAF)
        print(
            f"scroll, one slice per animation frame: {raf['slices'] / raf['ms'] * 1000:.1f} "
            f"slices/s ({raf['slices']} of {raf['frames']} slices drawn, each from its values)"
        )
        _held("after scrolling through", page, raw)
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
        data, paths = load_study(Path(d), modality="CT", images=args.slices, seed=5)
        png = png16_bytes(paths[0].parent)
        with serve(data) as (base, _ready_ms):
            _measure(_share(base, data), args.opens, args.slices, args.network, png)
    return 0


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    sys.exit(main())

"""The first requests after a service start: is the JIT warm? (issue target: <= 300 ms)

    .venv/bin/python bench/first_request.py [--slices 50]

Synthesises a CT study, ingests it into a fresh embedded data directory, starts `cloudfilm
serve` on it (a new process: the Numba kernels come from the on-disk JIT cache, loaded before
the HTTP port opens), then times, in order, the first and the second request of: a rendered CT
slice (the fused render kernel), a series thumbnail and an RLE-transcoded instance (the Numba
RLE encoder). Prints milliseconds, and the time from process start to ready.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import pydicom

from bench.embedded import load_study, serve
from bench.embedded import token as bench_token


def _get(url: str, token: str, accept: str = "") -> float:
    headers = {"Authorization": f"Bearer {token}"}
    if accept:
        headers["Accept"] = accept
    t0 = time.perf_counter()
    with urllib.request.urlopen(urllib.request.Request(url, headers=headers)) as r:
        r.read()
    return (time.perf_counter() - t0) * 1000


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--slices", type=int, default=50)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as d:
        data, paths = load_study(Path(d), modality="CT", images=args.slices, seed=4)
        token = bench_token(data, "admin")
        with serve(data) as (base, ready_ms):
            ds = pydicom.dcmread(paths[len(paths) // 2], stop_before_pixels=True)
            series = f"{base}/dicom-web/studies/{ds.StudyInstanceUID}/series/{ds.SeriesInstanceUID}"
            inst = f"{series}/instances/{ds.SOPInstanceUID}"
            other = pydicom.dcmread(paths[len(paths) // 2 + 1], stop_before_pixels=True)
            inst2 = f"{series}/instances/{other.SOPInstanceUID}"
            rle = 'multipart/related; type="application/dicom"; transfer-syntax=1.2.840.10008.1.2.5'
            print(f"process start to ready: {ready_ms:.0f} ms (JIT cache load included)")
            print(f"{'request':34} {'first ms':>9} {'second ms':>10}")
            for name, first, second, accept in (
                ("rendered CT slice (512 px JPEG)", f"{inst}/rendered", f"{inst2}/rendered", ""),
                ("series thumbnail", f"{series}/thumbnail", f"{series}/thumbnail", ""),
                ("instance transcoded to RLE", inst, inst2, rle),
            ):
                a, b = _get(first, token, accept), _get(second, token, accept)
                print(f"{name:34} {a:9.1f} {b:10.1f}")
    return 0


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    sys.exit(main())

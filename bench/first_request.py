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
import re
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import pydicom

from cloudfilm.config import load_settings
from cloudfilm.stores import open_index, open_object_store
from cloudfilm.synth import synthesize_study
from image_store.ingest import LocalIngest

CLI = (sys.executable, "-m", "cloudfilm.cli")
LOOPBACK = ("--http", "127.0.0.1:0", "--dicom", "127.0.0.1:0")
READY = re.compile(r"ready: http (\S+) ")


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
        data = Path(d) / "data"
        paths = synthesize_study(Path(d) / "ct", modality="CT", images=args.slices, seed=4)
        settings = load_settings({"data_dir": str(data), "hospital": "HOSP1"})
        data.mkdir()
        store, index = open_object_store(settings), open_index(settings)
        outcomes = LocalIngest(store, index).ingest("HOSP1", [p.read_bytes() for p in paths])
        assert all(o.ok for o in outcomes)
        index.close()
        token = subprocess.run(
            [*CLI, "token", "--data", str(data), "--hospital", "HOSP1", "--role", "admin"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
        t0 = time.perf_counter()
        proc = subprocess.Popen(
            [*CLI, "serve", "--data", str(data), "--hospital", "HOSP1", *LOOPBACK],
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            text=True,
        )
        try:
            assert proc.stdout is not None
            base = ""
            for line in proc.stdout:
                if m := READY.match(line):
                    base = m[1]
                    break
            ready_ms = (time.perf_counter() - t0) * 1000
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
        finally:
            proc.send_signal(signal.SIGTERM)
            proc.wait(30)
    return 0


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    sys.exit(main())

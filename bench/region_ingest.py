"""The region's wire, side by side in one run: a modality → `cloudfilm gateway run` → HTTP →
`cloudfilm cloud`, against Orthanc A forwarding to Orthanc B (/work/shared/lab/orthanc_forward.sh
or scripts' copy: OnStoredInstance → SendToModality).

    .venv/bin/python bench/region_ingest.py [--slices 300] [--orthanc-script PATH]

DCMTK storescu (TCP_NODELAY=1) sends the synthetic CT over one association. Reported: inst/s at
the modality (the gateway's Success is durable: journal + fdatasync), the bytes that crossed the
wire (the parts the cloud received, after the gateway's lossless edge compression) against the
raw files, and the seconds from the last Success until the whole study is queryable at the
cloud (QIDO-RS lists every instance) and the first slice's rendered frame is served. Loopback
only, in a private network namespace when run as root (as bench/ingest_compare.py does).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.ingest_compare import ROOT, WORK, ensure_netns, prepare_study, send, stop

CLI = (sys.executable, "-m", "cloudfilm.cli")
ORTHANC_SCRIPT = Path("/work/shared/lab/orthanc_forward.sh")


def _get(url: str, token: str) -> tuple[int, bytes]:
    req = urllib.request.Request(url, headers={"Authorization": f"Bearer {token}"})
    try:
        with urllib.request.urlopen(req, timeout=30) as r:
            return r.status, r.read()
    except urllib.error.HTTPError as e:
        return e.code, e.read()


def _ready(proc: subprocess.Popen[str], pattern: str) -> re.Match[str]:
    assert proc.stdout is not None
    for line in proc.stdout:
        if m := re.match(pattern, line):
            return m
    raise RuntimeError(f"{proc.args!r} exited before it was ready")


def _cli(*args: str) -> str:
    done = subprocess.run([*CLI, *args], capture_output=True, text=True, check=True, cwd=ROOT)
    return done.stdout.strip()


def cloudfilm_region(files: list[Path], work: Path) -> dict[str, float]:
    import pydicom

    cloud_dir, gw_dir = work / "cloud", work / "gateway"
    gw_dir.mkdir(parents=True, mode=0o700)
    cloud = subprocess.Popen(
        [*CLI, "cloud", "--data", str(cloud_dir), "--http", "127.0.0.1:0"],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
        cwd=ROOT,
    )
    gateway = None
    try:
        url = _ready(cloud, r"ready: cloud http (\S+)")[1]
        _cli("hospitals", "add", "H1", "--name", "H1", "--data", str(cloud_dir))
        _cli("users", "add", "bench.clin", "--hospital", "H1", "--role", "clinician",
             "--data", str(cloud_dir))  # fmt: skip
        token = _cli("token", "--data", str(cloud_dir), "--hospital", "H1",
                     "--role", "clinician", "--subject", "bench.clin")  # fmt: skip
        cred = work / "cred.json"
        _cli("gateway", "credential", "--data", str(cloud_dir), "--hospital", "H1",
             "--out", str(cred), "--cloud-url", url)  # fmt: skip
        gateway = subprocess.Popen(
            [*CLI, "gateway", "run", "--data", str(gw_dir), "--dicom", "127.0.0.1:0",
             "--ae", "GATEWAY", "--cloud", url, "--credential", str(cred)],
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            text=True,
            cwd=ROOT,
        )  # fmt: skip
        port = int(_ready(gateway, r"ready: gateway \S+ dicom \S+@[\d.]+:(\d+)")[1])
        first = pydicom.dcmread(files[0], stop_before_pixels=True)
        study = f"{url}/dicom-web/studies/{first.StudyInstanceUID}"
        frame = f"{study}/series/{first.SeriesInstanceUID}/instances/{first.SOPInstanceUID}"
        send_s = send("GATEWAY", port, [files])
        t_success = time.perf_counter()
        queryable = rendered = 0.0
        deadline = t_success + 300
        while time.perf_counter() < deadline:
            status, body = _get(f"{study}/instances", token)
            if status == 200 and len(json.loads(body)) >= len(files):
                queryable = time.perf_counter() - t_success
                break
            time.sleep(0.02)
        while time.perf_counter() < deadline:
            status, _ = _get(f"{frame}/frames/1/rendered", token)
            if status == 200:
                rendered = time.perf_counter() - t_success
                break
            time.sleep(0.02)
        with urllib.request.urlopen(f"{url}/metrics") as r:
            metrics = r.read().decode()
        m = re.search(r'cloudfilm_ingest_received_bytes_total\{hospital="H1"\} (\d+)', metrics)
        wire = int(m[1]) if m else 0
        raw = sum(p.stat().st_size for p in files)
        return {
            "inst_s": len(files) / send_s,
            "wire_pct": 100 * wire / raw,
            "queryable_s": queryable,
            "rendered_s": rendered,
        }
    finally:
        for proc in (gateway, cloud):
            if proc is not None:
                stop(proc)  # type: ignore[arg-type]


def orthanc_forward(study: Path, script: Path) -> str:
    if not script.is_file() or shutil.which("Orthanc") is None:
        return "Orthanc A → B: not measured (no Orthanc or no script)"
    done = subprocess.run(
        ["bash", str(script), str(study)],
        capture_output=True,
        text=True,
        env={**os.environ, "CF_NETNS": os.environ.get("CLOUDFILM_BENCH_NETNS", "")},
        timeout=900,
    )
    return (done.stdout.strip().splitlines() or [done.stderr[-300:]])[-1]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--slices", type=int, default=300)
    ap.add_argument("--orthanc-script", type=Path, default=ORTHANC_SCRIPT)
    args = ap.parse_args()
    ensure_netns()
    files = prepare_study(args.slices)
    work = WORK / "region"
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    try:
        r = cloudfilm_region(files, work)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    raw_mb = sum(p.stat().st_size for p in files) / 1e6
    print(f"study: {len(files)} CT slices, {raw_mb:.0f} MB raw, storescu TCP_NODELAY=1, loopback")
    print(
        f"CloudFilm gateway → HTTP → cloud: {r['inst_s']:.0f} inst/s at the modality; wire "
        f"{r['wire_pct']:.0f} % of raw; queryable {r['queryable_s']:.2f} s and first rendered "
        f"frame {r['rendered_s']:.2f} s after the last Success"
    )
    print(orthanc_forward(files[0].parent, args.orthanc_script))
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""DICOMweb reads side by side in one run: CloudFilm vs Orthanc (Debian, DICOMweb plugin), and
CloudFilm on SeaweedFS S3 against raw S3 GETs of the same objects; plus the one-click call.

    .venv/bin/python bench/dicomweb_compare.py [--slices 300] [--repeat 7] [--no-s3]

The same synthetic CT series goes to both servers with storescu (CloudFilm with
upload_compression=none, so both serve the same bytes). Timed (median of --repeat, client on the
same machine, urllib, whole bodies read): QIDO-RS instances of the series, WADO-RS series
metadata, WADO-RS of one instance, WADO-RS of the whole series (MB/s). Then GET /patients/{id}/
studies for a patient with 50 studies. With S3: CloudFilm's WADO-RS of the series from
SeaweedFS against boto3 GETs of the series' objects (8 threads), as a share of raw bandwidth.

Orthanc needs the Debian packages orthanc and orthanc-dicomweb; as in ingest_compare.py the
bench re-runs itself in a private network namespace with only loopback (root).
"""

from __future__ import annotations

import argparse
import io
import json
import os
import shutil
import sqlite3
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from ingest_compare import (
    ROOT,
    WORK,
    ensure_netns,
    orthanc_config,
    prepare_study,
    send,
    stop,
    wait_echo,
)
from timing import median_s

CLI = (sys.executable, "-m", "cloudfilm.cli")
LOOPBACK = ("--http", "127.0.0.1:0", "--dicom", "127.0.0.1:0")
ORTHANC_PLUGIN = Path("/usr/share/orthanc/plugins/libOrthancDicomWeb.so")


def median_ms(fn: Callable[[], object], repeat: int) -> float:
    return median_s(fn, repeat) * 1000


def fetch(url: str, headers: dict[str, str] | None = None) -> bytes:
    with urllib.request.urlopen(urllib.request.Request(url, headers=headers or {})) as r:
        data: bytes = r.read()
        return data


@contextmanager
def cloudfilm(data: Path, env: dict[str, str]) -> Iterator[tuple[str, int, str]]:
    """(base URL, DICOM port, admin token) of a running `cloudfilm serve`."""
    from embedded import token as registered_token

    token = registered_token(data, "admin", "HOSP1", cwd=ROOT)
    proc = subprocess.Popen(
        [*CLI, "serve", "--data", str(data), "--ae", "CLOUDFILM", *LOOPBACK],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        cwd=ROOT,
        env={**os.environ, **env},
    )
    assert proc.stdout is not None
    line = proc.stdout.readline().decode()
    if not line.startswith("ready:"):
        stop(proc)
        raise RuntimeError("cloudfilm serve did not start")
    base = line.split()[2]
    try:
        yield base, int(line.rsplit(":", 1)[1]), token
    finally:
        stop(proc)


@contextmanager
def orthanc(tmp: Path) -> Iterator[str]:
    cfg = orthanc_config(tmp)
    cfg["Plugins"] = [str(ORTHANC_PLUGIN)]
    cfg["DicomWeb"] = {"Enable": True, "Root": "/dicom-web/", "EnableWado": True}
    (tmp / "orthanc.json").write_text(json.dumps(cfg))
    proc = subprocess.Popen(
        ["Orthanc", str(tmp / "orthanc.json")],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        wait_echo("ORTHANC", 4243, proc)
        yield "http://127.0.0.1:8043"
    finally:
        stop(proc)


def wait_count(count: Callable[[], int], n: int) -> None:
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        if count() >= n:
            return
        time.sleep(0.05)
    raise RuntimeError("the study was not indexed in 300 s")


def read_timings(
    base: str, headers: dict[str, str], study: str, series: str, sop: str, repeat: int
) -> dict[str, float]:
    s = f"{base}/dicom-web/studies/{study}/series/{series}"
    stored = {**headers, "Accept": 'multipart/related; type="application/dicom"; transfer-syntax=*'}
    body = fetch(s, stored)
    return {
        "QIDO instances of the series (ms)": median_ms(
            lambda: fetch(f"{s}/instances?limit=1000", headers), repeat
        ),
        "WADO-RS series metadata (ms)": median_ms(lambda: fetch(f"{s}/metadata", headers), repeat),
        "WADO-RS one instance (ms)": median_ms(
            lambda: fetch(f"{s}/instances/{sop}", stored), repeat
        ),
        "WADO-RS whole series (ms)": median_ms(lambda: fetch(s, stored), max(3, repeat // 2)),
        "series bytes (MB)": len(body) / 1e6,
    }


def one_click_ms(data: Path, repeat: int) -> float:
    """50 single-image studies of one patient ingested before the start, then the call."""
    import pydicom

    from cloudfilm.config import load_settings
    from cloudfilm.stores import open_index, open_object_store
    from cloudfilm.synth import synthesize_study
    from image_store.ingest import LocalIngest

    settings = load_settings({"data_dir": str(data), "hospital": "HOSP1"})
    data.mkdir(parents=True, exist_ok=True)
    store, index = open_object_store(settings), open_index(settings)
    items = []
    with tempfile.TemporaryDirectory(dir=WORK) as d:
        for n in range(50):
            (path,) = synthesize_study(Path(d) / str(n), modality="MR", images=1, seed=100 + n)
            ds = pydicom.dcmread(path)
            ds.PatientID, ds.IssuerOfPatientID = "ONECLICK1", "CLOUDFILM-SYNTH"
            out = io.BytesIO()
            ds.save_as(out)
            items.append(out.getvalue())
    assert all(o.ok for o in LocalIngest(store, index).ingest("HOSP1", items))
    index.close()
    with cloudfilm(data, {}) as (base, _, token):
        url = f"{base}/patients/ONECLICK1/studies"
        headers = {"Authorization": f"Bearer {token}"}
        assert len(json.loads(fetch(url, headers))["studies"]) == 50
        return median_ms(lambda: fetch(url, headers), repeat)


def s3_share(files: list[Path], repeat: int) -> tuple[float, float, float] | None:
    """(CloudFilm WADO-RS series MB/s from SeaweedFS, raw boto3 GET MB/s of the same objects,
    raw GET MB/s through CloudFilm's S3 reader)."""
    from tests.servers import seaweedfs, weed_binary

    if weed_binary() is None:
        return None
    with tempfile.TemporaryDirectory(dir=WORK) as d, seaweedfs(Path(d) / "weed") as weed:
        client = weed.client()
        client.create_bucket(Bucket="bench")
        env = {
            "CLOUDFILM_OBJECT_STORE": "s3",
            "CLOUDFILM_S3_BUCKET": "bench",
            "CLOUDFILM_S3_ENDPOINT_URL": weed.endpoint,
            "CLOUDFILM_UPLOAD_COMPRESSION": "none",
            "AWS_ACCESS_KEY_ID": weed.access_key,
            "AWS_SECRET_ACCESS_KEY": weed.secret_key,
            "AWS_DEFAULT_REGION": "us-east-1",
        }
        data = Path(d) / "cf"
        with cloudfilm(data, env) as (base, port, token):
            send("CLOUDFILM", port, [files])
            wait_count(lambda: _count(data), len(files))
            study, series = _ids(files)
            url = f"{base}/dicom-web/studies/{study}/series/{series}"
            accept = 'multipart/related; type="application/dicom"; transfer-syntax=*'
            headers = {"Authorization": f"Bearer {token}", "Accept": accept}
            size = len(fetch(url, headers)) / 1e6
            wado = size / (median_ms(lambda: fetch(url, headers), repeat) / 1000)
        keys = [o["Key"] for o in client.list_objects_v2(Bucket="bench")["Contents"]]
        keys = [k for k in keys if ".thumb." not in k]

        def get_all() -> int:
            with ThreadPoolExecutor(8) as pool:
                sizes = pool.map(
                    lambda k: len(client.get_object(Bucket="bench", Key=k)["Body"].read()), keys
                )
                return sum(sizes)

        total = get_all() / 1e6
        raw = total / (median_ms(get_all, repeat) / 1000)
        # the same GETs through CloudFilm's own S3 reader (presigned URL + urllib3), so the
        # ratio is also stated against the fastest client this machine has
        from image_store.objects.s3 import S3ObjectStore, S3Settings

        own = S3ObjectStore(client, S3Settings(bucket="bench", endpoint_url=weed.endpoint))

        def get_all_own() -> int:
            with ThreadPoolExecutor(8) as pool:
                return sum(pool.map(lambda k: len(own.get(k)), keys))

        get_all_own()
        raw_own = total / (median_ms(get_all_own, repeat) / 1000)
        return wado, raw, raw_own


def _count(data: Path) -> int:
    try:
        with sqlite3.connect(data / "index.sqlite") as db:
            (n,) = db.execute("SELECT count(*) FROM instances").fetchone()
            return int(n)
    except sqlite3.Error:
        return 0


def _ids(files: list[Path]) -> tuple[str, str]:
    import pydicom

    ds = pydicom.dcmread(files[len(files) // 2], stop_before_pixels=True)
    return str(ds.StudyInstanceUID), str(ds.SeriesInstanceUID)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--slices", type=int, default=300)
    ap.add_argument("--repeat", type=int, default=7)
    ap.add_argument("--no-s3", action="store_true")
    ap.add_argument("--only-s3", action="store_true", help="skip the filesystem comparison")
    args = ap.parse_args()
    ensure_netns()
    files = prepare_study(args.slices)
    axial = [f for f in files if _ids([f])[1] == _ids(files)[1]]
    study, series = _ids(files)
    import pydicom

    sop = str(pydicom.dcmread(axial[len(axial) // 2], stop_before_pixels=True).SOPInstanceUID)
    print(f"series: {len(axial)} instances; repeat {args.repeat}; client urllib on 127.0.0.1")

    if args.only_s3:
        return _print_s3(s3_share(axial, args.repeat))
    results: dict[str, dict[str, float]] = {}
    with tempfile.TemporaryDirectory(dir=WORK) as d:
        data = Path(d) / "cf"
        with cloudfilm(data, {"CLOUDFILM_UPLOAD_COMPRESSION": "none"}) as (base, port, token):
            send("CLOUDFILM", port, [files])
            wait_count(lambda: _count(data), len(files))
            auth = {"Authorization": f"Bearer {token}"}
            results["cloudfilm (filesystem)"] = read_timings(
                base, auth, study, series, sop, args.repeat
            )
    if shutil.which("Orthanc") and ORTHANC_PLUGIN.exists():
        with tempfile.TemporaryDirectory(dir=WORK) as d, orthanc(Path(d)) as base:
            send("ORTHANC", 4243, [files])

            def stored() -> int:
                return int(json.loads(fetch(f"{base}/statistics"))["CountInstances"])

            wait_count(stored, len(files))
            results["orthanc 1.10 + dicomweb"] = read_timings(
                base, {}, study, series, sop, args.repeat
            )
    else:
        print("Orthanc or its DICOMweb plugin is not installed: CloudFilm only")

    names = list(results)
    print(f"\n{'measure':36}" + "".join(f"{n:>26}" for n in names) + "   ratio")
    for key in next(iter(results.values())):
        values = [results[n][key] for n in names]
        ratio = values[1] / values[0] if len(values) > 1 and values[0] else float("nan")
        print(f"{key:36}" + "".join(f"{v:26.1f}" for v in values) + f"   {ratio:5.1f}x")
    for n in names:
        r = results[n]
        mbs = r["series bytes (MB)"] / (r["WADO-RS whole series (ms)"] / 1000)
        print(f"{n}: WADO-RS series {mbs:.0f} MB/s")

    with tempfile.TemporaryDirectory(dir=WORK) as d:
        ms = one_click_ms(Path(d) / "oc", args.repeat)
        print(f"\none click, a patient with 50 studies: {ms:.1f} ms")
    if not args.no_s3:
        _print_s3(s3_share(axial, args.repeat))
    return 0


def _print_s3(got: tuple[float, float, float] | None) -> int:
    if got is None:
        print("SeaweedFS (weed) not installed: no S3 figures")
        return 0
    wado, raw, raw_own = got
    print(
        f"S3 (SeaweedFS): WADO-RS series {wado:.0f} MB/s, raw boto3 GET (8 threads) "
        f"{raw:.0f} MB/s: {100 * wado / raw:.0f} % of raw; raw GETs through CloudFilm's "
        f"presigned reader {raw_own:.0f} MB/s: {100 * wado / raw_own:.0f} %"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())

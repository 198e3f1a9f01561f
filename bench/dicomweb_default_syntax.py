"""WADO-RS of a JPEG-LS-stored series retrieved with the default media type (PS3.18: Explicit
VR Little Endian, so the server decodes), CloudFilm against Orthanc in one run.

    .venv/bin/python bench/dicomweb_default_syntax.py [--slices 300] [--repeat 5]

The synthetic CT's axial series goes to `cloudfilm serve` by storescu (upload_compression
jpeg-ls: the gateway stores it JPEG-LS) and, compressed the same way, to Orthanc
(Debian, DICOMweb plugin; it decodes JPEG-LS with its built-in DCMTK codecs) through its REST
API. Timed, median of --repeat after a warm-up, client on the same machine (urllib, whole
bodies read): the series with Accept `multipart/related; type="application/dicom"` (the
default: decoded) and with `transfer-syntax=*` (as stored). The transfer syntax of the first
part received is checked. Re-runs itself in a loopback-only network namespace (root).
"""

from __future__ import annotations

import argparse
import functools
import io
import json
import sys
import tempfile
import urllib.request
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from dicomweb_compare import _count, _ids, cloudfilm, fetch, orthanc, wait_count
from ingest_compare import WORK, ensure_netns, prepare_study, send
from timing import median_s

DEFAULT = 'multipart/related; type="application/dicom"'
AS_STORED = DEFAULT + "; transfer-syntax=*"


def jpeg_ls_copies(files: list[Path]) -> list[Path]:
    """The files re-encoded JPEG-LS as the gateway does (written once, next to the study)."""
    from dicom_codecs.edge import UploadCompression, compress_for_upload

    out = files[0].parent.with_name(files[0].parent.name + "-jls")
    out.mkdir(exist_ok=True)
    paths = []
    for f in files:
        p = out / f.name
        if not p.exists():
            result = compress_for_upload(f.read_bytes(), UploadCompression.JPEG_LS)
            assert result.compressed, result.reason
            p.write_bytes(result.data)
        paths.append(p)
    return paths


def first_syntax(body: bytes) -> str:
    import pydicom

    start = body.index(b"\r\n\r\n") + 4
    ds = pydicom.dcmread(io.BytesIO(body[start:]), stop_before_pixels=True)
    return str(ds.file_meta.TransferSyntaxUID)


def timings(url: str, headers: dict[str, str], repeat: int) -> dict[str, tuple[float, float, str]]:
    """Accept name -> (seconds, MB, first part's syntax)."""
    out = {}
    for name, accept in (("default", DEFAULT), ("as stored (*)", AS_STORED)):
        h = {**headers, "Accept": accept}
        body = fetch(url, h)
        out[name] = (
            median_s(functools.partial(fetch, url, h), repeat),
            len(body) / 1e6,
            first_syntax(body),
        )
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--slices", type=int, default=300)
    ap.add_argument("--repeat", type=int, default=5)
    args = ap.parse_args()
    ensure_netns()
    files = prepare_study(args.slices)
    study, series = _ids(files)
    axial = [f for f in files if _ids([f])[1] == series]
    jls = jpeg_ls_copies(axial)
    results: dict[str, dict[str, tuple[float, float, str]]] = {}
    with tempfile.TemporaryDirectory(dir=WORK) as d:
        data = Path(d) / "cf"
        with cloudfilm(data, {"CLOUDFILM_UPLOAD_COMPRESSION": "jpeg-ls"}) as (base, port, token):
            send("CLOUDFILM", port, [axial])
            wait_count(lambda: _count(data), len(axial))
            url = f"{base}/dicom-web/studies/{study}/series/{series}"
            results["CloudFilm"] = timings(url, {"Authorization": f"Bearer {token}"}, args.repeat)
    with tempfile.TemporaryDirectory(dir=WORK) as d, orthanc(Path(d)) as base:
        for p in jls:
            req = urllib.request.Request(f"{base}/instances", data=p.read_bytes(), method="POST")
            urllib.request.urlopen(req).read()
        stats = json.loads(fetch(f"{base}/statistics"))
        assert int(stats["CountInstances"]) == len(jls), stats
        url = f"{base}/dicom-web/studies/{study}/series/{series}"
        results["Orthanc"] = timings(url, {}, args.repeat)
    print(f"{len(axial)} slices, JPEG-LS stored; median of {args.repeat}")
    print("| server | Accept | first part's syntax | MB | s | MB/s | x Orthanc |")
    print("| --- | --- | --- | --- | --- | --- | --- |")
    for server, rows in results.items():
        for name, (secs, mb, syntax) in rows.items():
            ratio = results["Orthanc"][name][0] / secs
            print(
                f"| {server} | {name} | {syntax} | {mb:.0f} | {secs:.2f} | {mb / secs:.0f} "
                f"| {ratio:.2f} |"
            )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

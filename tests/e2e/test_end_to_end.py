"""The whole path: DCMTK storescu → gateway spool → store + index → DICOMweb and cloud film."""

from __future__ import annotations

import io
import json
import os
import re
import subprocess
import time
from pathlib import Path

import pydicom
import pytest
from PIL import Image
from pydicom.uid import ExplicitVRLittleEndian, HTJ2KLossless

from cloudfilm.synth import synthesize_study
from tests.e2e.conftest import Reply, Server, http
from tests.e2e.fault_harness import dataset_bytes

ARRIVAL_SYNTAX = (
    f'multipart/related; type="application/dicom"; transfer-syntax={ExplicitVRLittleEndian}'
)

pytestmark = pytest.mark.e2e
CT_IMAGES = 50


def parse_multipart(reply: Reply) -> list[tuple[dict[str, str], bytes]]:
    ctype = reply.headers["content-type"]
    assert ctype.startswith("multipart/related")
    assert 'type="application/dicom"' in ctype or "type=application/dicom" in ctype
    m = re.search(r'boundary="?([^";]+)"?', ctype)
    assert m, ctype
    delim = b"--" + m[1].encode()
    body = reply.body
    assert body.rstrip(b"\r\n").endswith(delim + b"--")
    parts = []
    for chunk in body.split(delim)[1:-1]:
        assert chunk.startswith(b"\r\n") and chunk.endswith(b"\r\n")
        head, _, payload = chunk[2:-2].partition(b"\r\n\r\n")
        headers = {}
        for line in head.decode().split("\r\n"):
            k, _, v = line.partition(":")
            headers[k.strip().lower()] = v.strip()
        parts.append((headers, payload))
    return parts


def storescu(server: Server, folder: Path) -> None:
    env = {**os.environ, "TCP_NODELAY": "1"}
    subprocess.run(
        [
            "storescu",
            "-aet",
            "MODALITY",
            "-aec",
            server.ae,
            "+sd",
            "+r",
            server.dicom_host,
            str(server.dicom_port),
            str(folder),
        ],
        check=True,
        env=env,
        timeout=300,
        capture_output=True,
    )


def wait_indexed(server: Server, token: str, study_uid: str, count: int) -> dict[str, object]:
    deadline = time.monotonic() + 120
    last: object = None
    while time.monotonic() < deadline:
        r = http(f"{server.base}/dicom-web/studies?StudyInstanceUID={study_uid}", token=token)
        if r.status == 200 and r.json():
            last = r.json()[0]  # type: ignore[index]
            if last["00201208"]["Value"][0] >= count:  # type: ignore[index]
                return last  # type: ignore[return-value]
        time.sleep(0.25)
    raise AssertionError(f"study not indexed with {count} instances: {last}")


@pytest.fixture(scope="module")
def ct_study(server: Server, tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    out = tmp_path_factory.mktemp("ct")
    server.cli("synth", str(out), "--modality", "CT", "--images", str(CT_IMAGES), "--seed", "7")
    paths = sorted(out.glob("*.dcm"))
    storescu(server, out)
    first = pydicom.dcmread(paths[0], stop_before_pixels=True)
    wait_indexed(server, server.token(), first.StudyInstanceUID, len(paths))
    return paths


@pytest.fixture(scope="module")
def us_cine(server: Server, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("us")
    (path,) = synthesize_study(out, modality="US", images=1, frames=8, seed=11)
    storescu(server, out)
    ds = pydicom.dcmread(path, stop_before_pixels=True)
    wait_indexed(server, server.token(), ds.StudyInstanceUID, 1)
    return path


def test_storescu_study_is_found_by_qido(server: Server, ct_study: list[Path]) -> None:
    ds = pydicom.dcmread(ct_study[0], stop_before_pixels=True)
    tok = server.token()
    base = f"{server.base}/dicom-web/studies"
    queries = {
        f"PatientID={ds.PatientID}": True,
        f"PatientName={str(ds.PatientName)[:3]}*": True,
        f"StudyDate={ds.StudyDate}-{ds.StudyDate}": True,
        "StudyDate=19000101-19000102": False,
        "ModalitiesInStudy=CT": True,
        "ModalitiesInStudy=MG": False,
        f"AccessionNumber={ds.AccessionNumber}": True,
        f"StudyInstanceUID={ds.StudyInstanceUID}": True,
    }
    for q, expected in queries.items():
        r = http(f"{base}?{q}", token=tok)
        assert r.status == 200, (q, r.body)
        assert r.headers["content-type"].startswith("application/dicom+json")
        found = {s["0020000D"]["Value"][0] for s in r.json()}  # type: ignore[attr-defined]
        assert (ds.StudyInstanceUID in found) is expected, q
    series = http(f"{base}/{ds.StudyInstanceUID}/series", token=tok).json()
    assert len(series) == 2  # type: ignore[arg-type]
    axial = pydicom.dcmread(ct_study[1], stop_before_pixels=True).SeriesInstanceUID
    insts = http(
        f"{base}/{ds.StudyInstanceUID}/series/{axial}/instances?limit=10&offset=5",
        token=tok,
    ).json()
    assert len(insts) == 10  # type: ignore[arg-type]


def test_wado_rs_in_the_arrival_syntax_returns_byte_identical_datasets(
    server: Server, ct_study: list[Path]
) -> None:
    """The gateway uploads JPEG-LS (lossless, checked); asked for the syntax the modality sent,
    the cloud gives back exactly the dataset the modality sent."""
    originals = {}
    for p in ct_study:
        ds = pydicom.dcmread(p)
        originals[ds.SOPInstanceUID] = (p.read_bytes(), ds)
    study_uid = next(iter(originals.values()))[1].StudyInstanceUID
    accept = (
        f'multipart/related; type="application/dicom"; transfer-syntax={ExplicitVRLittleEndian}'
    )
    r = http(f"{server.base}/dicom-web/studies/{study_uid}", token=server.token(), accept=accept)
    assert r.status == 200
    parts = parse_multipart(r)
    assert len(parts) == len(ct_study)
    for headers, payload in parts:
        assert headers["content-type"].startswith("application/dicom")
        got = pydicom.dcmread(io.BytesIO(payload))
        raw, want = originals[got.SOPInstanceUID]
        assert dataset_bytes(payload) == dataset_bytes(raw)
        assert got == want  # every element, pixel data included
        assert got.PixelData == want.PixelData


def test_the_cloud_keeps_the_study_losslessly_compressed_at_most_40_percent_of_raw(
    server: Server, ct_study: list[Path]
) -> None:
    study_uid = pydicom.dcmread(ct_study[0], stop_before_pixels=True).StudyInstanceUID
    r = http(
        f"{server.base}/dicom-web/studies/{study_uid}",
        token=server.token(),
        accept='multipart/related; type="application/dicom"; transfer-syntax=*',
    )
    parts = parse_multipart(r)
    stored = sum(len(payload) for _, payload in parts)
    raw = sum(p.stat().st_size for p in ct_study)
    assert stored <= 0.40 * raw
    for _, payload in parts:
        got = pydicom.dcmread(io.BytesIO(payload))
        assert got.file_meta.TransferSyntaxUID == HTJ2KLossless  # the default
    metrics = http(f"{server.base}/metrics").body.decode()
    values = dict(
        line.rsplit(" ", 1) for line in metrics.splitlines() if line and not line.startswith("#")
    )
    assert float(values["cloudfilm_upload_compressed_total"]) >= len(ct_study)
    assert float(values["cloudfilm_upload_sent_bytes_total"]) <= 0.4 * float(
        values["cloudfilm_upload_bytes_total"]
    )


def test_wado_rs_series_instance_and_metadata(server: Server, ct_study: list[Path]) -> None:
    ds = pydicom.dcmread(ct_study[3])
    tok = server.token()
    s = f"{server.base}/dicom-web/studies/{ds.StudyInstanceUID}/series/{ds.SeriesInstanceUID}"
    series = parse_multipart(http(s, token=tok))
    n_series = sum(
        1
        for p in ct_study
        if pydicom.dcmread(p, stop_before_pixels=True).SeriesInstanceUID == ds.SeriesInstanceUID
    )
    assert len(series) == n_series
    one_url = f"{s}/instances/{ds.SOPInstanceUID}"
    (one,) = parse_multipart(http(one_url, token=tok, accept=ARRIVAL_SYNTAX))
    assert dataset_bytes(one[1]) == dataset_bytes(ct_study[3].read_bytes())
    meta = http(f"{s}/metadata", token=tok)
    assert meta.status == 200
    docs = meta.json()
    assert len(docs) == n_series  # type: ignore[arg-type]
    assert {d["00080018"]["Value"][0] for d in docs} >= {ds.SOPInstanceUID}  # type: ignore[attr-defined]
    thumb = http(f"{s}/thumbnail", token=tok)
    assert thumb.status == 200 and thumb.headers["content-type"] == "image/jpeg"
    assert max(Image.open(io.BytesIO(thumb.body)).size) <= 256


def test_multiframe_instance_round_trips(server: Server, us_cine: Path) -> None:
    ds = pydicom.dcmread(us_cine)
    url = (
        f"{server.base}/dicom-web/studies/{ds.StudyInstanceUID}/series/{ds.SeriesInstanceUID}"
        f"/instances/{ds.SOPInstanceUID}"
    )
    (part,) = parse_multipart(http(url, token=server.token(), accept=ARRIVAL_SYNTAX))
    got = pydicom.dcmread(io.BytesIO(part[1]))
    assert int(got.NumberOfFrames) == 8
    assert dataset_bytes(part[1]) == dataset_bytes(us_cine.read_bytes())


def test_share_page_carries_every_series_and_its_thumbnails_load(
    server: Server, ct_study: list[Path]
) -> None:
    ds = pydicom.dcmread(ct_study[0], stop_before_pixels=True)
    r = http(
        f"{server.base}/api/shares",
        token=server.token(),
        method="POST",
        body={"study_uid": ds.StudyInstanceUID},
    )
    assert r.status == 201, r.body
    link = r.json()["url"]  # type: ignore[index]
    page = http(link)
    assert page.status == 200 and page.headers["content-type"].startswith("text/html")
    html = page.body.decode()
    m = re.search(r'<script type="application/json" id="manifest">(.*?)</script>', html, re.S)
    assert m is not None
    manifest = json.loads(m[1])
    series = manifest["study"]["series"]
    assert len(series) == 2 and sum(len(s["images"]) for s in series) == len(ct_study)
    for s in series:
        img = http(f"{server.base}{manifest['base']}/series/{s['uid']}/thumbnail")
        assert img.status == 200 and img.headers["content-type"] == "image/jpeg"
        Image.open(io.BytesIO(img.body)).verify()
    assert str(ds.PatientName) not in html  # the name is masked


def test_bad_input_gets_clear_errors(server: Server, ct_study: list[Path]) -> None:
    ds = pydicom.dcmread(ct_study[0], stop_before_pixels=True)
    tok = server.token()
    base = f"{server.base}/dicom-web"
    assert http(f"{base}/studies").status == 401
    assert http(f"{base}/studies", token=tok + "x").status == 401
    r = http(f"{base}/studies/1.2.3.999", token=tok)
    assert r.status == 404 and "error" in r.json()  # type: ignore[operator]
    r = http(f"{base}/studies/{ds.StudyInstanceUID}/series/1.2.3.999/metadata", token=tok)
    assert r.status == 404 and "error" in r.json()  # type: ignore[operator]
    for bad in ("1.2.abc", "..%2F..%2Fetc", "1" * 65):
        r = http(f"{base}/studies/{bad}", token=tok)
        assert r.status == 400 and "error" in r.json(), bad  # type: ignore[operator]
    other = server.token(hospital="HOSP2")
    # another hospital's study answers exactly as a study that does not exist
    theirs = http(f"{base}/studies/{ds.StudyInstanceUID}/metadata", token=other)
    unknown = http(f"{base}/studies/1.2.3.999/metadata", token=other)
    assert theirs.status == unknown.status == 404
    assert theirs.body.replace(ds.StudyInstanceUID.encode(), b"") == unknown.body.replace(
        b"1.2.3.999", b""
    )
    share = http(
        f"{server.base}/api/shares",
        token=tok,
        method="POST",
        body={"study_uid": ds.StudyInstanceUID},
    ).json()
    link: str = share["url"]  # type: ignore[index]
    tampered = link[:-2] + ("AA" if not link.endswith("AA") else "BB")
    page = http(tampered)
    assert page.status == 403 and page.headers["content-type"].startswith("text/html")


def test_metrics_report_spool_and_upload_counters(server: Server, ct_study: list[Path]) -> None:
    r = http(f"{server.base}/metrics")
    assert r.status == 200 and r.headers["content-type"].startswith("text/plain")
    values = {}
    for line in r.body.decode().splitlines():
        if line and not line.startswith("#"):
            name, _, value = line.rpartition(" ")
            values[name] = float(value)
    assert values["cloudfilm_store_accepted_total"] >= len(ct_study)
    assert values["cloudfilm_upload_instances_total"] >= len(ct_study)
    assert values["cloudfilm_spool_depth"] == 0
    assert 'cloudfilm_store_refused_total{reason="out_of_resources"}' in values

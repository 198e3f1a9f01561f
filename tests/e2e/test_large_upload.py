"""A large multi-frame through real processes: storescu → `cloudfilm gateway run` → a resumable
upload session of `cloudfilm cloud`, the gateway SIGKILLed mid-upload and restarted."""

from __future__ import annotations

import io
import re
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pydicom
import pytest

from cloudfilm.synth import synthesize_study
from pacs_gateway.cloud_sink import CloudSinkSettings, HttpIngestSink
from pacs_gateway.credential import load_credential
from pacs_gateway.large_upload import read_sidecar
from tests.e2e.conftest import http
from tests.e2e.fault_harness import dataset_bytes
from tests.e2e.test_end_to_end import ARRIVAL_SYNTAX, parse_multipart
from tests.e2e.test_region import Gateway, Region, _stop, cli

pytestmark = pytest.mark.e2e

CHUNK_LINE = re.compile(r"upload session H1/(\S+): (\d+) bytes at offset (\d+)")


@pytest.fixture
def region(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Region]:
    # the processes inherit these: 8 MB and up goes through a session, in 1 MB chunks
    monkeypatch.setenv("CLOUDFILM_LARGE_OBJECT_MB", "8")
    monkeypatch.setenv("CLOUDFILM_LARGE_CHUNK_MB", "1")
    reg = Region(tmp_path, tmp_path / "cloud")
    reg.start_cloud()
    cli("hospitals", "add", "H1", "--name", "Hospital H1", "--data", str(reg.data))
    gw = Gateway("H1", tmp_path / "gw-H1", tmp_path / "cred-H1.json", tmp_path / "gw-H1.log")
    gw.data.mkdir(mode=0o700)
    reg.issue("H1", gw.credential)
    gw.start(reg.url)
    reg.gateways["H1"] = gw
    yield reg
    gw.stop()
    if reg.proc is not None:
        _stop(reg.proc)


def session_offset(sink: HttpIngestSink, session: str) -> int:
    token = sink.token()
    resp = sink.session.head(
        f"{sink.base}/gateway/uploads/{session}",
        headers={"Authorization": f"Bearer {token.value}"},
        timeout=10,
    )
    return int(resp.headers["Upload-Offset"]) if resp.status_code == 200 else -1


def test_a_gateway_killed_mid_upload_resumes_the_session_and_the_instance_is_stored_once(
    region: Region, tmp_path: Path
) -> None:
    gw = region.gateways["H1"]
    (path,) = synthesize_study(tmp_path / "us", modality="US", images=1, frames=120, seed=61)
    header = pydicom.dcmread(path, stop_before_pixels=True)
    study, series, sop = header.StudyInstanceUID, header.SeriesInstanceUID, header.SOPInstanceUID
    sink = HttpIngestSink(load_credential(gw.credential), CloudSinkSettings(region.url))
    storescu = subprocess.Popen(
        ["storescu", "-aet", "MODALITY", "-aec", "GWH1", "127.0.0.1", str(gw.port), str(path)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        # wait until the cloud has part of the instance: then the gateway dies
        deadline = time.monotonic() + 60
        session, offset, total = "", 0, 0
        while time.monotonic() < deadline and not 0 < offset < total:
            sidecars = list((gw.data / "spool" / "ready").glob("*.dcm.upload"))
            car = read_sidecar(sidecars[0].with_suffix("")) if sidecars else None
            if car is not None:
                session, total = car.session, car.size  # the spool file's size
                offset = session_offset(sink, session)
            time.sleep(0.01)
        assert 0 < offset < total, (offset, total)
        assert gw.proc is not None
        gw.proc.send_signal(signal.SIGKILL)
        _stop(gw.proc)
        gw.proc = None
        assert storescu.wait(60) == 0  # the modality had its Success before the upload began
    finally:
        if storescu.poll() is None:
            storescu.kill()
            storescu.wait()
    log = tmp_path / "cloud.log"
    mark = log.stat().st_size
    gw.start(region.url)

    token = region.token("H1")
    assert region.wait_instances(token, study, 1) == [sop]
    url = f"{region.url}/dicom-web/studies/{study}/series/{series}/instances/{sop}"
    ((_ctype, got),) = parse_multipart(http(url, token=token, accept=ARRIVAL_SYNTAX))
    assert dataset_bytes(got) == dataset_bytes(path.read_bytes())
    assert pydicom.dcmread(io.BytesIO(got), stop_before_pixels=True).NumberOfFrames == 120

    # the restarted gateway went on from the cloud's offset: fewer bytes than the whole
    with open(log, encoding="utf-8", errors="replace") as fh:
        fh.seek(mark)
        after = [(int(m[2]), int(m[3])) for m in CHUNK_LINE.finditer(fh.read()) if m[1] == session]
    assert after, "no chunk of the session reached the cloud after the restart"
    assert after[0][1] > 0
    assert sum(n for n, _ in after) < total
    assert sum(n for n, _ in after) + after[0][1] == total, after[:3]
    # nothing left behind: no spool entry, no sidecar, no staged bytes
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline and list((gw.data / "spool" / "ready").iterdir()):
        time.sleep(0.1)
    assert list((gw.data / "spool" / "ready").iterdir()) == []
    staged = [
        p.name
        for where in (region.data / "uploads", region.data / "objects" / "uploads.staging")
        for p in where.rglob("*")
        if p.is_file()
    ]
    assert staged == []
    sink.close()

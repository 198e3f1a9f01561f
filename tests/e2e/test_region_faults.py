"""Faults on the wire between a hospital's gateway and the cloud, with real processes: a
`cloudfilm cloud` whose object store is a small tmpfs, and a `cloudfilm gateway run` that
reaches it only through tests.e2e.fault_proxy (connections dropped mid-body, stalled, passed).
Whatever the modality was told Success for reaches the cloud exactly once, and the gateway
keeps accepting while the cloud cannot take anything."""

from __future__ import annotations

import io
import os
import re
import socket
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pydicom
import pytest

from image_store.records import StudyQuery
from pacs_gateway.cloud_sink import CloudSinkSettings, CloudUnavailable, HttpIngestSink
from pacs_gateway.credential import load_credential
from pacs_gateway.priors_http import HttpPriorsFactory
from tests.e2e.conftest import http, register_user
from tests.e2e.fault_harness import dataset_bytes
from tests.e2e.fault_proxy import FaultProxy
from tests.e2e.test_end_to_end import ARRIVAL_SYNTAX, parse_multipart
from tests.e2e.test_region import Gateway, Region, _stop, study

pytestmark = pytest.mark.e2e

OBJECTS_MB = 48


def free_port() -> int:
    with socket.create_server(("127.0.0.1", 0)) as s:
        return int(s.getsockname()[1])


def metrics(url: str) -> dict[str, str]:
    text = http(f"{url}/metrics").body.decode()
    return dict(line.rsplit(" ", 1) for line in text.splitlines() if line[:1] not in "#")


def wait_for(what: str, check: Callable[[], bool], timeout: float = 20) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return
        time.sleep(0.05)
    raise AssertionError(f"still waiting, after {timeout} s, for {what}")


def storescu_acked(port: int, ae: str, files: list[Path]) -> int:
    """Send ``files`` with DCMTK storescu; how many got a Success response."""
    out = subprocess.run(
        ["storescu", "-v", "-aet", "MODALITY", "-aec", ae, "127.0.0.1", str(port),
         *map(str, files)],
        env={**os.environ, "TCP_NODELAY": "1"},
        timeout=60,
        capture_output=True,
        text=True,
    )  # fmt: skip
    return len(re.findall(r"Received Store Response \(Success\)", out.stdout + out.stderr))


@dataclass
class FaultRegion:
    region: Region
    gateway: Gateway
    proxy: FaultProxy
    objects: Path
    """The cloud's object store: a tmpfs of OBJECTS_MB MiB."""

    def failed(self) -> list[Path]:
        return sorted((self.gateway.data / "spool" / "failed").glob("*.dcm"))

    def ingest_total(self, what: str) -> int:
        """The cloud's ``cloudfilm_ingest_<what>_total`` for H1."""
        found = metrics(self.region.url).get(f'cloudfilm_ingest_{what}_total{{hospital="H1"}}', 0)
        return int(found)

    def sops(self, paths: list[Path]) -> list[str]:
        return sorted(
            str(pydicom.dcmread(p, stop_before_pixels=True).SOPInstanceUID) for p in paths
        )


@pytest.fixture(scope="module")
def faulty(tmp_path_factory: pytest.TempPathFactory) -> Iterator[FaultRegion]:
    root = tmp_path_factory.mktemp("faults")
    proxy = FaultProxy()
    reg = Region(root, root / "cloud")
    objects = reg.data / "objects"
    objects.mkdir(mode=0o700, parents=True)
    subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={OBJECTS_MB}m,mode=0700", "tmpfs", str(objects)],
        check=True,
    )
    gw = Gateway("H1", root / "gw-H1", root / "cred-H1.json", root / "gw-H1.log")
    try:
        # the gateway knows the cloud by the proxy's address: the cloud's public one
        (reg.data / "cloudfilm.toml").write_text(f'public_base_url = "{proxy.url}"\n')
        port = free_port()
        reg.start_cloud(f"127.0.0.1:{port}")
        reg.url = f"http://127.0.0.1:{port}"  # the test itself goes round the proxy
        proxy.upstream = ("127.0.0.1", port)
        register_user(reg.data, "t.clinician.H1", "H1", "clinician")  # and the hospital
        gw.data.mkdir(mode=0o700)
        reg.issue("H1", gw.credential)
        gw.start(proxy.url)
        reg.gateways["H1"] = gw
        yield FaultRegion(reg, gw, proxy, objects)
    finally:
        gw.stop()
        if reg.proc is not None:
            _stop(reg.proc)
        proxy.close()
        subprocess.run(["umount", "-l", str(objects)], check=False)


def test_drops_and_stalls_between_gateway_and_cloud_lose_and_duplicate_nothing(
    faulty: FaultRegion,
) -> None:
    reg, gw, proxy = faulty.region, faulty.gateway, faulty.proxy
    _, paths, uid = study(reg.root, "study-faults", 29, 500)  # 30 files
    token = reg.token("H1")
    stored_before = faulty.ingest_total("stored")
    duplicates_before = faulty.ingest_total("duplicate")
    parts = [paths[:10], paths[10:20], paths[20:25], paths[25:]]

    # connections reset once ~3 instances of a batch have gone up: those are committed,
    # the rest of the body never arrives, the gateway retries the whole batch
    proxy.drop(after_bytes=700_000)
    assert storescu_acked(gw.port, "GWH1", parts[0]) == len(parts[0])
    wait_for("two batches cut short", lambda: proxy.snapshot().dropped >= 2)
    assert len(reg.instances(token, uid)) < len(parts[0])

    # connections held without a byte forwarded, then reset
    proxy.stall(2.0)
    assert storescu_acked(gw.port, "GWH1", parts[1]) == len(parts[1])
    wait_for("a held connection reset", lambda: proxy.snapshot().stall_resets >= 1)
    assert len(gw.spooled()) >= len(parts[1])

    # the cloud commits every batch, the gateway never hears it did: it must send again
    proxy.lose_answers()
    assert storescu_acked(gw.port, "GWH1", parts[2]) == len(parts[2])
    wait_for("answers lost", lambda: proxy.snapshot().lost_answers >= 1)
    wait_for("the cloud to hold what the spool still holds", lambda: bool(
        set(reg.instances(token, uid)) & set(faulty.sops(gw.spooled()))
    ))  # fmt: skip

    proxy.passing()
    assert storescu_acked(gw.port, "GWH1", parts[3]) == len(parts[3])
    assert len(reg.wait_instances(token, uid, len(paths))) == len(paths)
    wait_for("the spool to drain", lambda: gw.spooled() == [])
    time.sleep(0.5)  # a late duplicate would show now
    assert sorted(reg.instances(token, uid)) == faulty.sops(paths)
    assert faulty.ingest_total("stored") - stored_before == len(paths)  # once each, no version
    # parts that arrived whole before a reset were committed; the retry found them stored
    assert faulty.ingest_total("duplicate") > duplicates_before
    assert faulty.failed() == []
    counts = proxy.snapshot()
    assert counts.dropped >= 2 and counts.stalled >= 1 and counts.lost_answers >= 1


def _outcome_within(seconds: float, call: Callable[[], object]) -> BaseException | None:
    """Run ``call`` in a thread; what it raised (None if it returned). AssertionError if it
    is still running after ``seconds``."""
    outcome: list[BaseException | None] = []

    def run() -> None:
        try:
            call()
            outcome.append(None)
        except BaseException as exc:  # handed to the test's thread
            outcome.append(exc)

    worker = threading.Thread(target=run, daemon=True)
    worker.start()
    worker.join(seconds)
    assert outcome, f"still waiting on a stalled connection after {seconds} s"
    return outcome[0]


def test_the_gateways_sink_and_priors_give_up_on_a_stalled_cloud_after_their_read_timeout(
    faulty: FaultRegion,
) -> None:
    settings = CloudSinkSettings(faulty.proxy.url, connect_timeout_s=2, read_timeout_s=1)
    sink = HttpIngestSink(load_credential(faulty.gateway.credential), settings)
    priors = HttpPriorsFactory(faulty.gateway.credential, settings)()
    _, paths, _ = study(faulty.region.root, "study-stalled", 1, 510)
    try:
        sink.token()  # through the proxy while it passes
        priors.cloud.token()
        faulty.proxy.stall(None)  # then nothing more ever comes back
        raised = _outcome_within(15, lambda: sink.ingest("H1", [paths[0].read_bytes()]))
        assert isinstance(raised, CloudUnavailable), raised
        raised = _outcome_within(15, lambda: priors.find_studies(StudyQuery(patient_id="P510")))
        assert isinstance(raised, CloudUnavailable), raised
    finally:
        faulty.proxy.passing()
        sink.close()
        priors.cloud.session.close()


def findscu(port: int, ae: str, out: Path, patient_id: str) -> str:
    out.mkdir()
    done = subprocess.run(
        ["findscu", "-v", "-S", "-aet", "WS1", "-aec", ae, "-X", "-od", str(out),
         "-k", "QueryRetrieveLevel=STUDY", "-k", f"PatientID={patient_id}",
         "-k", "StudyInstanceUID", "127.0.0.1", str(port)],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    return done.stdout + done.stderr


def test_a_workstations_query_fails_clearly_while_the_cloud_cannot_answer(
    faulty: FaultRegion, tmp_path: Path
) -> None:
    gw, proxy = faulty.gateway, faulty.proxy
    _, paths, uid = study(faulty.region.root, "study-find", 1, 530)
    assert storescu_acked(gw.port, "GWH1", paths) == len(paths)
    faulty.region.wait_instances(faulty.region.token("H1"), uid, len(paths))
    proxy.lose_answers()
    try:
        log = findscu(gw.port, "GWH1", tmp_path / "lost", "P530")
    finally:
        proxy.passing()
    # a failure, never an empty Success the radiologist would read as "no priors"
    assert "Received Final Find Response (Success)" not in log, log
    assert "Received Final Find Response" in log, log
    assert list((tmp_path / "lost").glob("rsp*.dcm")) == []
    log = findscu(gw.port, "GWH1", tmp_path / "back", "P530")
    assert "Received Final Find Response (Success)" in log, log
    found = [pydicom.dcmread(p).StudyInstanceUID for p in (tmp_path / "back").glob("rsp*.dcm")]
    assert found == [uid]


def _partial_writes(objects: Path) -> list[Path]:
    return [p for p in objects.rglob("*") if p.is_file() and ".partial" in str(p)]


def _instance_objects(objects: Path, hospital: str, study_uid: str) -> list[str]:
    """SOP Instance UIDs of the study's instance objects (thumbnails and versions aside)."""
    return sorted(
        p.name
        for p in (objects / hospital / study_uid).rglob("*")
        if p.is_file() and "." in p.name and p.name.replace(".", "").isdigit()
    )


def test_the_clouds_full_disk_keeps_the_rest_spooled_until_space_is_freed(
    faulty: FaultRegion,
) -> None:
    reg, gw = faulty.region, faulty.gateway
    _, paths, uid = study(reg.root, "study-full", 19, 520)  # 20 files, ~10 MB raw
    token = reg.token("H1")
    stored_before = faulty.ingest_total("stored")
    failures_before = int(metrics(gw.metrics).get("cloudfilm_upload_failures_total", 0))
    stat = os.statvfs(faulty.objects)
    filler = faulty.objects / "filler.bin"
    room = 1_500_000  # a few instances' worth
    with open(filler, "wb") as fh:
        block = b"\0" * (1 << 20)
        left = stat.f_bavail * stat.f_frsize - room
        while left > 0:
            left -= fh.write(block[: min(left, len(block))])
    try:
        assert storescu_acked(gw.port, "GWH1", paths) == len(paths)  # Success for all
        wait_for(
            "uploads failing on the full disk",
            lambda: (
                int(metrics(gw.metrics)["cloudfilm_upload_failures_total"]) >= failures_before + 2
            ),
        )
        got = reg.instances(token, uid)
        assert len(got) < len(paths)
        assert len(gw.spooled()) >= len(paths) - len(got)
        assert faulty.failed() == []  # retryable, never refused
        # between retries, no partial write and no object the index does not list (a group
        # that failed midway leaves none behind; while one is being written, there are some)
        wait_for(
            "the store to hold only what the index lists",
            lambda: (
                not _partial_writes(faulty.objects)
                and _instance_objects(faulty.objects, "H1", uid)
                == sorted(reg.instances(token, uid))
            ),
        )
        assert "the cloud answered 507" in gw.log.read_text()  # a clear, retryable error
        assert "unhandled error" not in (reg.root / "cloud.log").read_text()
    finally:
        filler.unlink()
    assert len(reg.wait_instances(token, uid, len(paths))) == len(paths)
    wait_for("the spool to drain", lambda: gw.spooled() == [])
    assert sorted(reg.instances(token, uid)) == faulty.sops(paths)
    assert faulty.ingest_total("stored") - stored_before == len(paths)
    assert faulty.failed() == []
    r = http(f"{reg.url}/dicom-web/studies/{uid}", token=token, accept=ARRIVAL_SYNTAX)
    got_bytes = {pydicom.dcmread(io.BytesIO(p)).SOPInstanceUID: p for _, p in parse_multipart(r)}
    for path in paths:
        sop = pydicom.dcmread(path, stop_before_pixels=True).SOPInstanceUID
        assert dataset_bytes(got_bytes[sop]) == dataset_bytes(path.read_bytes())

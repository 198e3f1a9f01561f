"""The region as separate programs: one `cloudfilm cloud`, three `cloudfilm gateway run` (three
hospitals, their own data dirs and credentials), joined only by the authenticated ingest API."""

from __future__ import annotations

import io
import json
import os
import re
import signal
import ssl
import subprocess
import sys
import time
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import pydicom
import pytest

from cloudfilm.synth import synthesize_study
from tests.e2e.conftest import http, register_user
from tests.e2e.fault_harness import dataset_bytes
from tests.e2e.test_end_to_end import ARRIVAL_SYNTAX, parse_multipart

pytestmark = pytest.mark.e2e

CLOUD_READY = re.compile(r"^ready: cloud http (\S+)")
GATEWAY_READY = re.compile(
    r"^ready: gateway (\S+) dicom (\S+)@([\d.]+):(\d+) cloud \S+ metrics (\S+)"
)
HOSPITALS = ("H1", "H2", "H3")
COMPRESSION = {"H1": "jpeg-ls", "H2": "htj2k", "H3": "rle"}
"""Each hospital's gateway compresses at the edge with another codec."""
STORED_SYNTAX = {
    "jpeg-ls": "1.2.840.10008.1.2.4.80",
    "htj2k": "1.2.840.10008.1.2.4.201",
    "rle": "1.2.840.10008.1.2.5",
}


def cli(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "cloudfilm.cli", *args],
        check=check,
        capture_output=True,
        text=True,
        timeout=120,
    )


def _spawn(
    args: list[str], log: Path, ready: re.Pattern[str], env: dict[str, str] | None = None
) -> tuple[subprocess.Popen[str], re.Match[str]]:
    with open(log, "a") as log_fh:
        proc = subprocess.Popen(
            [sys.executable, "-m", "cloudfilm.cli", *args],
            stdout=subprocess.PIPE,
            stderr=log_fh,
            text=True,
            start_new_session=True,
            env={**os.environ, **(env or {})},
        )
    assert proc.stdout is not None
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        line = proc.stdout.readline()
        if not line:
            break
        m = ready.match(line)
        if m:
            return proc, m
    _stop(proc)
    raise RuntimeError(f"{args[0]} did not start:\n{log.read_text()[-3000:]}")


def _stop(proc: subprocess.Popen[str], sig: int = signal.SIGTERM) -> None:
    if proc.poll() is None:
        os.killpg(proc.pid, sig)
    try:
        proc.wait(20)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(5)
    if proc.stdout is not None:
        proc.stdout.close()


@dataclass
class Gateway:
    hospital: str
    data: Path
    credential: Path
    log: Path
    proc: subprocess.Popen[str] | None = None
    port: int = 0
    metrics: str = ""
    compression: str = "jpeg-ls"

    def start(self, cloud_url: str) -> None:
        self.proc, m = _spawn(
            [
                "gateway", "run", "--data", str(self.data), "--dicom", "127.0.0.1:0",
                "--ae", f"GW{self.hospital}", "--cloud", cloud_url,
                "--credential", str(self.credential), "--http", "127.0.0.1:0",
            ],
            self.log,
            GATEWAY_READY,
            {"CLOUDFILM_UPLOAD_COMPRESSION": self.compression},
        )  # fmt: skip
        assert m[1] == self.hospital
        self.port, self.metrics = int(m[4]), m[5]

    def stop(self) -> None:
        if self.proc is not None:
            _stop(self.proc)
            self.proc = None

    def spooled(self) -> list[Path]:
        return sorted((self.data / "spool" / "ready").glob("*.dcm"))


@dataclass
class Region:
    root: Path
    data: Path
    url: str = ""
    proc: subprocess.Popen[str] | None = None
    gateways: dict[str, Gateway] = field(default_factory=dict)
    context: ssl.SSLContext | None = None
    """Trust for a cloud behind HTTPS with its own CA."""

    def start_cloud(self, http_addr: str = "127.0.0.1:0") -> None:
        self.proc, m = _spawn(
            ["cloud", "--data", str(self.data), "--http", http_addr],
            self.root / "cloud.log",
            CLOUD_READY,
        )
        self.url = m[1]

    def token(self, hospital: str, role: str = "clinician") -> str:
        subject = f"t.{role}.{hospital}"
        register_user(self.data, subject, hospital, role)
        return cli(
            "token", "--data", str(self.data), "--hospital", hospital, "--role", role,
            "--subject", subject,
        ).stdout.strip()  # fmt: skip

    def issue(self, hospital: str, out: Path) -> str:
        return cli(
            "gateway", "credential", "--data", str(self.data), "--hospital", hospital,
            "--out", str(out), "--cloud-url", self.url,
        ).stdout.strip()  # fmt: skip

    def instances(self, token: str, study_uid: str) -> list[str]:
        r = http(
            f"{self.url}/dicom-web/studies/{study_uid}/instances",
            token=token,
            context=self.context,
        )
        if r.status != 200:
            return []
        return [d["00080018"]["Value"][0] for d in r.json()]  # type: ignore[attr-defined]

    def wait_instances(self, token: str, study_uid: str, count: int) -> list[str]:
        deadline = time.monotonic() + 60
        got: list[str] = []
        while time.monotonic() < deadline:
            got = self.instances(token, study_uid)
            if len(got) >= count:
                return got
            time.sleep(0.1)
        raise AssertionError(f"{len(got)} of {count} instances of {study_uid} reached the cloud")


def storescu(port: int, ae: str, folder: Path) -> None:
    subprocess.run(
        ["storescu", "-aet", "MODALITY", "-aec", ae, "+sd", "+r", "127.0.0.1", str(port),
         str(folder)],
        check=True,
        env={**os.environ, "TCP_NODELAY": "1"},
        timeout=120,
        capture_output=True,
    )  # fmt: skip


def study(root: Path, name: str, images: int, seed: int) -> tuple[Path, list[Path], str]:
    out = root / name
    paths = synthesize_study(out, modality="CT", images=images, seed=seed, patient_id=f"P{seed}")
    uid = str(pydicom.dcmread(paths[0], stop_before_pixels=True).StudyInstanceUID)
    return out, sorted(paths), uid


@pytest.fixture(scope="module")
def region(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Region]:
    root = tmp_path_factory.mktemp("region")
    reg = Region(root, root / "cloud")
    reg.start_cloud()
    try:
        for h in HOSPITALS:
            cli("hospitals", "add", h, "--name", f"Hospital {h}", "--data", str(reg.data))
            gw = Gateway(h, root / f"gw-{h}", root / f"cred-{h}.json", root / f"gw-{h}.log")
            gw.compression = COMPRESSION[h]
            gw.data.mkdir(mode=0o700)
            reg.gateways[h] = gw

        def issue_and_start(gw: Gateway) -> None:
            reg.issue(gw.hospital, gw.credential)
            gw.start(reg.url)

        each_gateway(issue_and_start, reg.gateways.values())
        yield reg
    finally:
        each_gateway(Gateway.stop, reg.gateways.values())
        if reg.proc is not None:
            _stop(reg.proc)


def each_gateway(run: Callable[[Gateway], None], gateways: Iterable[Gateway]) -> None:
    """``run`` on every gateway at once (process start-up and shut-down dominate); the first
    error is raised once all are done."""
    with ThreadPoolExecutor() as pool:
        list(pool.map(run, gateways))


def test_each_hospitals_study_reaches_the_cloud_byte_identical_under_its_hospital(
    region: Region,
) -> None:
    """Each gateway compresses at the edge with another codec (COMPRESSION): whichever it
    was, the cloud stores it so, renders it and gives back the arrival bytes."""
    sent = {}
    for n, (h, gw) in enumerate(region.gateways.items()):
        folder, paths, uid = study(region.root, f"study-{h}", 3, 100 + n)
        storescu(gw.port, f"GW{h}", folder)
        sent[h] = (paths, uid)
    for h, (paths, uid) in sent.items():
        token = region.token(h)
        assert len(region.wait_instances(token, uid, len(paths))) == len(paths)
        r = http(f"{region.url}/dicom-web/studies/{uid}", token=token, accept=ARRIVAL_SYNTAX)
        got = {pydicom.dcmread(io.BytesIO(p)).SOPInstanceUID: p for _, p in parse_multipart(r)}
        for path in paths:
            raw = path.read_bytes()
            sop = pydicom.dcmread(path, stop_before_pixels=True).SOPInstanceUID
            assert dataset_bytes(got[sop]) == dataset_bytes(raw)
        r = http(f"{region.url}/dicom-web/studies/{uid}/instances", token=token)
        first = r.json()[0]  # type: ignore[attr-defined]
        stored = first["00083002"]["Value"][0]  # Available Transfer Syntax UID
        assert stored == STORED_SYNTAX[region.gateways[h].compression], h
        series, sop = first["0020000E"]["Value"][0], first["00080018"]["Value"][0]
        rendered = http(
            f"{region.url}/dicom-web/studies/{uid}/series/{series}/instances/{sop}/rendered",
            token=token,
            accept="image/jpeg",
        )
        assert rendered.status == 200 and rendered.body[:2] == b"\xff\xd8", h
        for other in HOSPITALS:  # stored under the credential's hospital, no other
            if other != h:
                assert region.instances(region.token(other), uid) == []
    text = http(f"{region.url}/metrics").body.decode()
    metrics = dict(line.rsplit(" ", 1) for line in text.splitlines() if line[:1] not in "#")
    for h in HOSPITALS:  # the cloud's per-hospital ingest counters
        assert metrics[f'cloudfilm_ingest_stored_total{{hospital="{h}"}}'] == str(
            len(sent[h][0])
        ), text


def test_a_gateway_configured_as_another_hospital_than_its_credential_refuses_to_start(
    region: Region,
) -> None:
    gw = region.gateways["H1"]
    out = cli(
        "gateway", "run", "--data", str(region.root / "gw-wrong"), "--dicom", "127.0.0.1:0",
        "--cloud", region.url, "--credential", str(gw.credential), "--hospital", "H2",
        check=False,
    )  # fmt: skip
    assert out.returncode == 2
    assert "credential" in out.stderr and "'H1'" in out.stderr
    assert not (region.root / "gw-wrong" / "spool").exists()


def test_a_revoked_credential_is_refused_and_its_spool_drains_after_a_new_one(
    region: Region,
) -> None:
    gw = region.gateways["H3"]
    cred_id = json.loads(gw.credential.read_text())["id"]
    assert (
        cli("gateway", "credential", "--data", str(region.data), "--revoke", cred_id).returncode
        == 0
    )
    again = cli(
        "gateway", "credential", "--data", str(region.data), "--revoke", cred_id, check=False
    )
    assert again.returncode == 1
    folder, paths, uid = study(region.root, "study-revoked", 2, 300)
    storescu(gw.port, "GWH3", folder)  # the modality's Success: durable in the spool
    token = region.token("H3")
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline and "refuses gateway credential" not in gw.log.read_text():
        time.sleep(0.1)
    assert "refuses gateway credential" in gw.log.read_text()
    assert region.instances(token, uid) == []
    assert len(gw.spooled()) == len(paths)
    # the operator issues a new credential; the gateway restarts with it and drains
    gw.stop()
    gw.credential = region.root / "cred-H3-new.json"
    region.issue("H3", gw.credential)
    gw.start(region.url)
    assert len(region.wait_instances(token, uid, len(paths))) == len(paths)
    deadline = time.monotonic() + 10
    while gw.spooled() and time.monotonic() < deadline:
        time.sleep(0.1)
    assert gw.spooled() == []


def test_the_cloud_killed_mid_upload_loses_and_duplicates_nothing(region: Region) -> None:
    gw = region.gateways["H1"]
    folder, paths, uid = study(region.root, "study-kill", 80, 400)
    token = region.token("H1")
    storescu(gw.port, "GWH1", folder)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and not region.instances(token, uid):
        time.sleep(0.02)
    seen = len(region.instances(token, uid))
    assert region.proc is not None
    _stop(region.proc, signal.SIGKILL)
    assert 0 < seen < len(paths), f"{seen} of {len(paths)} before the kill"
    port = region.url.rsplit(":", 1)[1]
    region.start_cloud(f"127.0.0.1:{port}")
    got = region.wait_instances(token, uid, len(paths))
    time.sleep(0.5)
    got = region.instances(token, uid)
    assert sorted(got) == sorted(
        str(pydicom.dcmread(p, stop_before_pixels=True).SOPInstanceUID) for p in paths
    )
    deadline = time.monotonic() + 10
    while gw.spooled() and time.monotonic() < deadline:
        time.sleep(0.1)
    assert gw.spooled() == []


def test_a_gateways_data_dir_holds_no_secret_index_or_store_of_the_region(
    region: Region,
) -> None:
    secrets = [p.read_bytes() for p in (region.data / "secrets").iterdir() if p.is_file()]
    assert secrets
    for gw in region.gateways.values():
        names = {p.name for p in gw.data.rglob("*")}
        assert not names & {"secrets", "objects", "index.sqlite", "api.key", "person.key",
                            "audit.key", "registry.sqlite", "gateways.sqlite"}  # fmt: skip
        for path in (p for p in gw.data.rglob("*") if p.is_file()):
            data = path.read_bytes()
            assert not any(secret in data for secret in secrets), path

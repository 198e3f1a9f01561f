"""`cloudfilm serve` stops promptly on SIGTERM/SIGINT, mid-ingest too, and loses nothing it
acknowledged (#15)."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import threading
import time
from pathlib import Path

import pydicom
import pytest
from pydicom.uid import ExplicitVRLittleEndian
from pynetdicom import AE
from pynetdicom.sop_class import CTImageStorage

from cloudfilm.synth import synthesize_study
from tests.e2e.conftest import start_server
from tests.e2e.fault_harness import _audit, _storescu, acked_files
from tests.e2e.test_end_to_end import wait_indexed

pytestmark = pytest.mark.e2e

LIVENESS_S = 10.0
"""A generous bound on the whole stop (the target is 5 s), only so a hang fails the test."""


def _group_alive(pgid: int) -> bool:
    """True while a process of group ``pgid`` runs (zombies waiting for init to reap them
    have exited and do not count)."""
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue  # gone meanwhile
        if int(fields[2]) == pgid and fields[0] != "Z":
            return True
    return False


def _stop_group(proc: subprocess.Popen[str], sig: int) -> bool:
    """Send ``sig`` to the serve process only (as an init system or Ctrl-C does); True when
    it and every process of its group (the gateway workers) are gone within the bound."""
    os.kill(proc.pid, sig)
    try:
        proc.wait(LIVENESS_S)
    except subprocess.TimeoutExpired:
        return False
    finally:
        if proc.stdout is not None:
            proc.stdout.close()
    deadline = time.monotonic() + 2.0  # children reparented and reaped
    while _group_alive(proc.pid) and time.monotonic() < deadline:
        time.sleep(0.05)
    return not _group_alive(proc.pid)


def _stalled_retrieve(base: str, token: str, study_uid: str) -> socket.socket:
    """A WADO-RS retrieve whose client stops reading after the first bytes (a phone that went
    out of coverage): the response stays in flight."""
    host, port = base.split("//", 1)[1].rsplit(":", 1)
    sock = socket.create_connection((host, int(port)))
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.sendall(
        f"GET /dicom-web/studies/{study_uid} HTTP/1.1\r\nHost: {host}\r\n"
        f"Authorization: Bearer {token}\r\n\r\n".encode()
    )
    assert sock.recv(64).startswith(b"HTTP/1.1 200")
    return sock


class _Modality(threading.Thread):
    """Sends ``files`` over one association like a modality, a few per tick once ``started``
    is set, until the gateway stops answering; ``acked`` holds the files answered Success."""

    def __init__(self, port: int, files: list[str]) -> None:
        super().__init__(daemon=True)
        self.port, self.files = port, files
        self.acked: list[str] = []
        self.started = threading.Event()
        self.cut = False

    def run(self) -> None:
        ae = AE(ae_title="MODALITY")
        ae.add_requested_context(CTImageStorage, ExplicitVRLittleEndian)
        assoc = ae.associate("127.0.0.1", self.port, ae_title="CLOUDFILM")
        try:
            for n, path in enumerate(self.files):
                if not assoc.is_established:
                    self.cut = True
                    return
                try:
                    status = assoc.send_c_store(pydicom.dcmread(path))
                except RuntimeError:  # the gateway ended the association since the check
                    self.cut = True
                    return
                if getattr(status, "Status", None) != 0:
                    self.cut = True
                    return
                self.acked.append(path)
                if n == 4:
                    self.started.set()
                time.sleep(0.02)  # a paced send: the stop lands while it goes on
        finally:
            self.started.set()
            if assoc.is_established:
                assoc.release()


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_serve_stops_promptly_mid_ingest_and_keeps_every_acknowledged_instance(
    tmp_path: Path, sig: int
) -> None:
    files = [str(p) for p in synthesize_study(tmp_path / "s", modality="CT", images=160, seed=5)]
    first, rest = files[:40], files[40:]
    data, log = tmp_path / "data", tmp_path / "serve.log"
    proc, server = start_server(data, log, new_session=True)
    held: list[socket.socket] = []
    try:
        out, _ = _storescu(server.dicom_port, first).communicate(timeout=120)
        acked = acked_files(out)
        token = server.token()
        study = str(pydicom.dcmread(first[0], stop_before_pixels=True).StudyInstanceUID)
        wait_indexed(server, token, study, len(first))
        held.append(_stalled_retrieve(server.base, token, study))
        # connections that never associate (a port scanner, a modality that hung)
        held += [socket.create_connection(("127.0.0.1", server.dicom_port)) for _ in range(3)]
        modality = _Modality(server.dicom_port, rest)
        modality.start()
        assert modality.started.wait(60)
        stopped = _stop_group(proc, sig)
        modality.join(60)
    finally:
        for sock in held:
            sock.close()
        if _group_alive(proc.pid):
            os.killpg(proc.pid, signal.SIGKILL)
    assert stopped, f"serve or a gateway worker outlived {LIVENESS_S} s:\n{log.read_text()[-3000:]}"
    assert modality.cut and len(modality.acked) < len(rest), "the stop did not land mid-send"
    acked |= set(modality.acked)
    # restart: whatever was acknowledged is uploaded and indexed, byte for byte
    proc, server = start_server(data, log, new_session=True)
    try:
        deadline = time.monotonic() + 60
        while list((data / "spool" / "ready").iterdir()) and time.monotonic() < deadline:
            time.sleep(0.1)
    finally:
        assert _stop_group(proc, signal.SIGTERM)
    report = _audit(data, files, acked, 1)
    assert (report.lost, report.duplicated, report.failed) == (0, 0, 0), report

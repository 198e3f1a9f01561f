"""SIGKILL the whole embedded stack at random moments while storescu sends, then count what
the cloud lost or duplicated. Used by tests/e2e/test_faults.py and bench/kill_soak.py."""

from __future__ import annotations

import io
import os
import random
import re
import signal
import sqlite3
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

import pydicom

from dicom_codecs.transcode import transcode
from image_store.metadata import read_header
from tests.e2e.conftest import start_server


@dataclass(frozen=True)
class FaultReport:
    files: int
    acked: int
    interrupted: int
    """Kills that landed while storescu was sending."""
    lost: int
    """Instances storescu saw Success for that the cloud does not hold byte-identical."""
    duplicated: int
    """Index rows or objects beyond one per instance."""
    failed: int
    """Instances the uploader moved to spool/failed."""


def _start(data: Path, log: Path) -> tuple[subprocess.Popen[str], int]:
    proc, server = start_server(data, log, new_session=True)
    return proc, server.dicom_port


def _stop(proc: subprocess.Popen[str], sig: int) -> None:
    os.killpg(proc.pid, sig)  # the API process and its gateway child at once
    proc.wait(20)
    if proc.stdout is not None:
        proc.stdout.close()


def acked_files(log: str) -> set[str]:
    """Files storescu (-v) saw a Success response for."""
    done, current = set(), None
    for line in log.splitlines():
        if m := re.match(r"I: Sending file: (.+)$", line):
            current = m[1].strip()
        elif "Received Store Response (Success)" in line and current:
            done.add(current)
            current = None
    return done


def arrival_bytes(stored: bytes) -> bytes:
    """A stored object as it arrived: the gateway's lossless re-encoding undone (a no-op for
    objects stored as they came)."""
    header = read_header(stored)
    return transcode(stored, header.original_transfer_syntax_uid or header.transfer_syntax_uid)


def dataset_bytes(part10: bytes) -> bytes:
    fp = io.BytesIO(part10)
    pydicom.filereader.read_preamble(fp, False)
    pydicom.filereader._read_file_meta_info(fp)
    return fp.read()


def _storescu(port: int, files: list[str]) -> subprocess.Popen[str]:
    return subprocess.Popen(
        ["storescu", "-v", "-aec", "CLOUDFILM", "127.0.0.1", str(port), *files],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env={**os.environ, "TCP_NODELAY": "1"},
    )


def run_kill_cycle(work: Path, files: list[str], *, kills: int, seed: int) -> FaultReport:
    rng = random.Random(seed)
    data, log = work / "data", work / "serve.log"
    acked: set[str] = set()
    interrupted = 0
    for _ in range(kills):
        proc, port = _start(data, log)
        scu = _storescu(port, [f for f in files if f not in acked])
        time.sleep(rng.uniform(0.02, 0.3))
        _stop(proc, signal.SIGKILL)
        out, _ = scu.communicate(timeout=60)
        acked |= acked_files(out)
        interrupted += scu.returncode != 0
    proc, port = _start(data, log)  # a last, undisturbed run sends the rest and drains
    try:
        todo = [f for f in files if f not in acked]
        if todo:
            out, _ = _storescu(port, todo).communicate(timeout=120)
            acked |= acked_files(out)
        deadline = time.monotonic() + 60
        while list((data / "spool" / "ready").iterdir()) and time.monotonic() < deadline:
            time.sleep(0.2)
    finally:
        _stop(proc, signal.SIGTERM)
    return _audit(data, files, acked, interrupted)


def _audit(data: Path, files: list[str], acked: set[str], interrupted: int) -> FaultReport:
    with sqlite3.connect(data / "index.sqlite") as db:
        rows = db.execute("SELECT sop_uid, object_key FROM instances").fetchall()
    by_uid = dict(rows)
    # objects proper: not thumbnails, not writes a kill interrupted (swept after an hour)
    objects = [
        p
        for p in (data / "objects").rglob("*")
        if p.is_file() and ".thumb." not in p.name and ".partial" not in p.parts
    ]
    lost = 0
    for f in acked:
        uid = pydicom.dcmread(f, stop_before_pixels=True).SOPInstanceUID
        key = by_uid.get(uid)
        path = data / "objects" / key if key else None
        if (
            path is None
            or not path.is_file()
            or dataset_bytes(arrival_bytes(path.read_bytes()))
            != dataset_bytes(Path(f).read_bytes())
        ):
            lost += 1
    return FaultReport(
        files=len(files),
        acked=len(acked),
        interrupted=interrupted,
        lost=lost,
        duplicated=(len(rows) - len(by_uid)) + max(0, len(objects) - len(by_uid)),
        failed=len(list((data / "spool" / "failed").glob("*.dcm"))),
    )

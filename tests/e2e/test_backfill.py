"""Backfill from a real Orthanc (Debian package) on loopback, in a private network namespace."""

from __future__ import annotations

import io
import json
import os
import shutil
import sqlite3
import subprocess
import sys
from pathlib import Path

import pydicom
import pytest

from tests.e2e.fault_harness import dataset_bytes

pytestmark = pytest.mark.e2e
SCENARIO = Path(__file__).with_name("orthanc_scenario.py")


@pytest.mark.skipif(shutil.which("Orthanc") is None, reason="Orthanc is not installed")
@pytest.mark.skipif(os.geteuid() != 0, reason="a private network namespace needs root")
def test_backfill_copies_orthanc_and_resumes(tmp_path: Path) -> None:
    out = subprocess.run(
        ["unshare", "-n", sys.executable, str(SCENARIO), str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert out.returncode == 0, out.stdout + out.stderr
    report = json.loads(out.stdout.strip().splitlines()[-1])
    assert "5 instances in Orthanc, 5 copied, 0 already done, 0 refused" in report["run1"]
    assert "9 instances in Orthanc, 4 copied, 5 already done, 0 refused" in report["run2"]
    # the progress bar is the only per-instance output: no HTTP client's request log lines
    assert " GET http" not in report["log1"] and "apiron" not in report["log1"], report["log1"]
    with sqlite3.connect(tmp_path / "data" / "index.sqlite") as db:
        rows = dict(db.execute("SELECT sop_uid, object_key FROM instances").fetchall())
    assert len(rows) == 9
    for f in report["files"]:
        raw = Path(f).read_bytes()
        uid = pydicom.dcmread(io.BytesIO(raw), stop_before_pixels=True).SOPInstanceUID
        stored = (tmp_path / "data" / "objects" / rows[uid]).read_bytes()
        assert dataset_bytes(stored) == dataset_bytes(raw)

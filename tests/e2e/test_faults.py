"""A C-STORE answered Success is never lost: SIGKILL the whole stack while storescu sends."""

from __future__ import annotations

from pathlib import Path

import pytest

from cloudfilm.synth import synthesize_study
from tests.e2e.fault_harness import run_kill_cycle

pytestmark = pytest.mark.e2e


def test_sigkill_during_ingest_loses_and_duplicates_nothing(tmp_path: Path) -> None:
    files = [str(p) for p in synthesize_study(tmp_path / "study", modality="CT", images=80, seed=9)]
    report = run_kill_cycle(tmp_path, files, kills=4, seed=20261123)
    assert report.interrupted >= 1, "no kill landed while storescu was sending"
    assert report.acked == report.files
    assert (report.lost, report.duplicated, report.failed) == (0, 0, 0)

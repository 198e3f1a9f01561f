from __future__ import annotations

from pathlib import Path

import pytest

from pacs_gateway.errors import SpoolFull
from pacs_gateway.spool import Spool


def test_accepted_instance_is_a_complete_file_in_ready(tmp_path: Path) -> None:
    spool = Spool(tmp_path)
    entry = spool.accept([b"abc", memoryview(b"def")], "1.2.3")
    assert entry.path.parent == spool.ready
    assert entry.path.read_bytes() == b"abcdef"
    assert entry.sop_uid == "1.2.3"
    assert spool.stats().depth == 1 and spool.stats().bytes == 6


def test_pending_is_oldest_first_and_survives_a_restart(tmp_path: Path) -> None:
    spool = Spool(tmp_path)
    uids = [f"1.2.{i}" for i in range(5)]
    for uid in uids:
        spool.accept([b"x" * 10], uid)
    reopened = Spool(tmp_path)
    assert [e.sop_uid for e in reopened.pending()] == uids
    assert reopened.stats().depth == 5 and reopened.stats().bytes == 50


def test_partial_files_from_a_crash_are_dropped_on_restart(tmp_path: Path) -> None:
    spool = Spool(tmp_path)
    (spool.incoming / "123-000000-1.2.3.dcm").write_bytes(b"half")
    reopened = Spool(tmp_path)
    assert list(reopened.incoming.iterdir()) == []
    assert reopened.pending() == []


def test_high_water_mark_refuses_instead_of_accepting(tmp_path: Path) -> None:
    spool = Spool(tmp_path, high_water_bytes=25)
    spool.accept([b"x" * 20], "1.2.1")
    with pytest.raises(SpoolFull):
        spool.accept([b"x" * 10], "1.2.2")
    assert len(spool.pending()) == 1
    spool.remove(spool.pending())
    spool.accept([b"x" * 10], "1.2.2")


def test_too_little_free_disk_refuses(tmp_path: Path) -> None:
    spool = Spool(tmp_path, min_free_bytes=1 << 62)
    with pytest.raises(SpoolFull):
        spool.accept([b"x"], "1.2.1")
    assert spool.pending() == [] and list(spool.incoming.iterdir()) == []
    assert spool.stats().depth == 0


def test_invalid_sop_uid_never_becomes_a_path(tmp_path: Path) -> None:
    spool = Spool(tmp_path)
    with pytest.raises(ValueError):
        spool.accept([b"x"], "../../etc/passwd")


def test_failed_entries_keep_their_reason(tmp_path: Path) -> None:
    spool = Spool(tmp_path)
    entry = spool.accept([b"x"], "1.2.1")
    spool.fail(entry, "not DICOM")
    assert spool.pending() == []
    assert (spool.failed / entry.name).exists()
    assert (spool.failed / entry.name).with_suffix(".reason").read_text().strip() == "not DICOM"
    assert spool.stats().failed == 1 and spool.stats().depth == 0

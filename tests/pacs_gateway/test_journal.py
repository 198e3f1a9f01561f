"""The spool's journal: what was acknowledged comes back after a crash, nothing else does."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from pacs_gateway import journal as jn
from pacs_gateway.journal import Journal, read_segment
from pacs_gateway.spool import Spool

ROOT = Path(__file__).resolve().parents[2]


def _accept_then_die(spool_dir: Path, items: list[tuple[str, bytes]]) -> None:
    """Another process accepts ``items`` through its journal, then is killed (SIGKILL)."""
    code = textwrap.dedent(
        f"""
        import os, signal, sys, time
        from pathlib import Path
        from pacs_gateway.spool import Spool
        spool = Spool(Path({str(spool_dir)!r}))
        spool.start_journal()
        deadline = time.monotonic() + 30
        while not spool._journal._prepared:  # the first segment is ready: no plain fallback
            assert time.monotonic() < deadline
            time.sleep(0.01)
        for uid, data in {items!r}:
            spool.accept([data], uid)
        os.kill(os.getpid(), signal.SIGKILL)
        """
    )
    proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True)
    assert proc.returncode == -9, proc.stderr.decode()[-2000:]


def _journal_records(spool: Spool) -> list[jn.Record]:
    return [r for seg in sorted(spool.journal_root.glob("*/*.seg")) for r in read_segment(seg)]


def test_acknowledged_instances_lost_or_torn_in_ready_come_back_from_the_journal(
    tmp_path: Path,
) -> None:
    items = [(f"1.2.840.99.{i}", bytes([i]) * (1000 + i)) for i in range(6)]
    _accept_then_die(tmp_path, items)
    spool_view = Spool.__new__(Spool)  # read the dead writer's state without replaying it
    spool_view.journal_root = tmp_path / "journal"
    assert [r.data for r in _journal_records(spool_view)] == [d for _, d in items]
    ready = sorted((tmp_path / "ready").iterdir())
    assert len(ready) == 6
    # a power loss: two entries never reached the disk, one is torn
    ready[0].unlink()
    ready[3].unlink()
    with open(ready[5], "r+b") as fh:
        fh.truncate(10)
    spool = Spool(tmp_path)
    assert {e.sop_uid: e.path.read_bytes() for e in spool.pending()} == dict(items)
    assert spool.stats().depth == 6
    assert list(spool.journal_root.iterdir()) == []  # replayed and removed


def test_a_replayed_journal_restores_only_the_latest_instance_of_a_uid(tmp_path: Path) -> None:
    _accept_then_die(tmp_path, [("1.2.840.99.1", b"old"), ("1.2.840.99.1", b"new")])
    for p in (tmp_path / "ready").iterdir():
        p.unlink()  # both delivered (the uploader deletes what the cloud committed)
    spool = Spool(tmp_path)
    assert [e.path.read_bytes() for e in spool.pending()] == [b"new"]


def test_a_journal_whose_owner_lives_is_not_replayed(tmp_path: Path) -> None:
    writer = Spool(tmp_path)
    writer.start_journal()
    other = Spool(tmp_path)  # e.g. a second SCP process starting up
    assert other.pending() == [] and len(list(writer.journal_root.iterdir())) == 1
    writer.close()
    assert list(writer.journal_root.iterdir()) == []  # a clean stop leaves no journal


def test_recycled_segments_never_replay_their_stale_records(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(jn, "SEGMENT_BYTES", 4096)
    monkeypatch.setattr(jn, "_MAX_SEGMENTS", 3)
    checkpointed: list[str] = []
    journal = Journal(tmp_path, checkpointed.extend)
    names = [f"{i:04d}-x-1.2.{i}.dcm" for i in range(60)]
    for name in names:
        while True:
            try:
                journal.append(name, [b"y" * 1000])
                break
            except jn.JournalUnavailable:  # the background thread is recycling
                pass
    live = [r.name for seg in sorted(journal.dir.glob("*.seg")) for r in read_segment(seg)]
    # every record still in a segment is one of the latest, each once, in order
    assert live == names[len(names) - len(live) :]
    assert len(live) >= 3
    # and every earlier one was checkpointed before its segment was reused
    assert set(names[: len(names) - len(live)]) <= set(checkpointed)
    journal.close()


def test_the_spool_falls_back_to_plain_fsync_when_no_segment_is_ready(tmp_path: Path) -> None:
    spool = Spool(tmp_path)  # no start_journal: the first accept finds nothing prepared
    entry = spool.accept([b"abc"], "1.2.3")
    assert entry.path.read_bytes() == b"abc"
    spool.close()
    assert os.listdir(spool.journal_root) == []

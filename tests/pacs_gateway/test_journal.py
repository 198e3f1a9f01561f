"""The spool's journal: what was acknowledged comes back after a crash, nothing else does."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from pacs_gateway import journal as jn
from pacs_gateway import spool as spool_module
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
        spool = Spool(Path({str(spool_dir)!r}), journal_bytes=64 << 20)
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


def _journals(spool: Spool) -> list[Path]:
    return [d for d in spool.journal_root.iterdir() if not d.name.startswith(".")]


def _journal_records(spool: Spool) -> list[jn.Record]:
    return [r for seg in sorted(spool.journal_root.glob("*/*.seg")) for r in read_segment(seg)]


def _ready_journal(tmp_path: Path) -> Spool:
    """A spool whose journal has its first segment ready (so accepts go through it)."""
    spool = Spool(tmp_path, journal_bytes=64 << 20)
    spool.start_journal()
    deadline = time.monotonic() + 30
    while not spool._journal or not spool._journal._prepared:
        assert time.monotonic() < deadline
        time.sleep(0.01)
    return spool


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
    assert _journals(spool) == []  # replayed and removed (its segments kept for reuse)


def test_a_replayed_journal_restores_only_the_latest_instance_of_a_uid(tmp_path: Path) -> None:
    _accept_then_die(tmp_path, [("1.2.840.99.1", b"old"), ("1.2.840.99.1", b"new")])
    for p in (tmp_path / "ready").iterdir():
        p.unlink()  # both delivered (the uploader deletes what the cloud committed)
    spool = Spool(tmp_path)
    assert [e.path.read_bytes() for e in spool.pending()] == [b"new"]


def test_a_journal_whose_owner_lives_is_not_replayed(tmp_path: Path) -> None:
    writer = Spool(tmp_path, journal_bytes=64 << 20)
    writer.start_journal()
    other = Spool(tmp_path)  # e.g. a second SCP process starting up
    assert other.pending() == [] and len(_journals(writer)) == 1
    writer.close()
    assert _journals(writer) == []  # a clean stop leaves no journal
    reused = Spool(tmp_path, journal_bytes=64 << 20)
    reused.start_journal()
    deadline = time.monotonic() + 30
    while list(reused.journal_root.glob(".pool/*")):  # the next journal takes the segments
        assert time.monotonic() < deadline
        time.sleep(0.01)
    reused.close()


def test_recycled_segments_never_replay_their_stale_records(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(jn, "SEGMENT_BYTES", 3 * jn._ALIGN)  # three records a segment
    checkpointed: list[str] = []
    journal = Journal(tmp_path, checkpointed.extend, max_segments=4)
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
    spool = Spool(tmp_path, journal_bytes=64 << 20)  # the first accept finds no segment yet
    entry = spool.accept([b"abc"], "1.2.3")
    assert entry.path.read_bytes() == b"abc"
    spool.close()
    assert _journals(spool) == []


def test_a_journalled_instance_whose_ready_file_cannot_be_written_is_retried_not_lost(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    spool = _ready_journal(tmp_path)
    write = Spool._write_entry
    failures = iter([OSError(28, "No space left on device")])

    def flaky(self: Spool, *args: object, **kwargs: object) -> None:
        for exc in failures:
            raise exc
        write(self, *args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(Spool, "_write_entry", flaky)
    spool.accept([b"first"], "1.2.840.99.1")  # durable in the journal; its file failed
    assert spool.pending() == []
    assert [r.data for r in _journal_records(spool)] == [b"first"]
    spool.accept([b"second"], "1.2.840.99.2")  # the next accept writes both
    assert sorted(e.path.read_bytes() for e in spool.pending()) == [b"first", b"second"]
    spool.close()


def test_where_the_filesystem_refuses_direct_io_the_journal_writes_through_the_page_cache(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def refuse_direct(path: Path, flags: int) -> tuple[int, bool]:
        return os.open(path, flags, 0o600), False  # what _open_segment does after EINVAL

    monkeypatch.setattr(jn, "_open_segment", refuse_direct)
    spool = _ready_journal(tmp_path)
    assert not spool._journal._prepared[0].direct
    spool.accept([b"x" * 5000], "1.2.840.99.1")
    spool.accept([b"y" * 10], "1.2.840.99.2")
    assert [r.data for r in _journal_records(spool)] == [b"x" * 5000, b"y" * 10]
    spool.close()


def test_records_written_directly_read_back_across_their_padding(tmp_path: Path) -> None:
    spool = _ready_journal(tmp_path)
    assert spool._journal._prepared[0].direct  # the tests' disk takes O_DIRECT
    sizes = [1, 4095, 4096 - 60, 100_000, 0]
    for i, n in enumerate(sizes):
        spool.accept([bytes([i]) * n], f"1.2.840.99.{i}")
    assert [r.data for r in _journal_records(spool)] == [
        bytes([i]) * n for i, n in enumerate(sizes)
    ]
    spool.close()


def test_an_entry_whose_file_is_still_to_be_written_keeps_its_segment_and_the_journal(
    tmp_path: Path,
) -> None:
    spool = _ready_journal(tmp_path)
    later: list[Callable[[], None]] = []
    entry = spool.accept([b"acked"], "1.2.840.99.1", later=later)  # answered, file pending
    with pytest.raises(OSError):
        spool._checkpoint([entry.name])  # its segment may not be recycled yet
    later[0]()
    spool._checkpoint([entry.name])
    spool.close()


def test_a_stop_before_a_pending_file_is_written_leaves_the_journal_to_replay(
    tmp_path: Path,
) -> None:
    code = textwrap.dedent(
        f"""
        import time
        from pathlib import Path
        from pacs_gateway.spool import Spool
        spool = Spool(Path({str(tmp_path)!r}), journal_bytes=64 << 20)
        spool.start_journal()
        while not spool._journal._prepared:
            time.sleep(0.01)
        later = []
        spool.accept([b"acked"], "1.2.840.99.1", later=later)  # answered; never written
        spool.close(timeout=0.2)
        """
    )
    proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True)
    assert proc.returncode == 0, proc.stderr.decode()[-2000:]
    assert b"the journal stays for replay" in proc.stderr
    reopened = Spool(tmp_path)  # the next start
    assert [e.path.read_bytes() for e in reopened.pending()] == [b"acked"]


def test_a_clean_stop_waits_for_pending_spool_files_then_removes_the_journal(
    tmp_path: Path,
) -> None:
    spool = _ready_journal(tmp_path)
    later: list[Callable[[], None]] = []
    spool.accept([b"acked"], "1.2.840.99.1", later=later)
    closing = threading.Thread(target=spool.close)
    closing.start()
    time.sleep(0.05)
    for work in later:
        work()
    closing.join(15)
    assert not closing.is_alive()
    assert _journals(spool) == []
    assert [e.path.read_bytes() for e in spool.pending()] == [b"acked"]


def test_a_partial_file_of_a_writer_that_died_during_the_start_is_replaced_from_the_journal(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The restart's sweep of incoming/ still saw the killed writer running (it was dying) and
    kept its partial file; by the journal replay it is gone, and its entry comes back whole."""
    items = [("1.2.840.99.7", b"x" * 5000)]
    _accept_then_die(tmp_path, items)
    (entry,) = (tmp_path / "ready").iterdir()
    entry.unlink()  # never reached the disk ...
    (tmp_path / "incoming" / entry.name).write_bytes(b"x" * 100)  # ... but a torn start did
    dead = spool_module._writer_tag(entry.name)
    monkeypatch.setattr(spool_module, "_live_pid_tags", lambda: {dead})
    spool = Spool(tmp_path)
    assert [e.path.read_bytes() for e in spool.pending()] == [items[0][1]]
    assert list((tmp_path / "incoming").iterdir()) == []

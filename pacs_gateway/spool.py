"""The gateway's durable spool: every accepted instance is a fsynced file until the cloud has it.

Layout under the spool root::

    incoming/   files being written (a crash leaves at most a partial file here; never acked)
    ready/      complete instances waiting for upload, oldest first by name
    failed/     instances the cloud refused permanently, each with a ``.reason`` text beside it
    journal/    the write-ahead journals of the processes that accept (pacs_gateway/journal.py)

A file reaches ``ready/`` only by ``rename``, after its bytes are durable: in a journal record
(one ``fdatasync``; the file itself is fsynced at the journal's next checkpoint, or written
back from the record after a crash), or, for instances too large for a journal segment, by
``fsync`` of the file and then of the directory. So once :meth:`Spool.accept` returns the
instance survives a crash or power loss. The file is a DICOM Part 10 file: its file meta
carries the SOP UIDs, the transfer syntax and the calling AE title, so the spool needs no
other record.
"""

from __future__ import annotations

import functools
import itertools
import logging
import multiprocessing
import os
import shutil
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from image_store.fsutil import fsync_dir
from image_store.keys import check_uid
from pacs_gateway.errors import SpoolFull
from pacs_gateway.journal import (
    SEGMENT_BYTES,
    Journal,
    JournalUnavailable,
    Record,
    drop_journal_pool,
    private_dir,
    replay_orphans,
)

logger = logging.getLogger(__name__)


def _sop_uid_of(name: str) -> str:
    """The SOP Instance UID in an entry's name ("<ns timestamp>-<seq>-<sop uid>.dcm")."""
    return name.removesuffix(".dcm").split("-", 2)[2]


@dataclass(frozen=True, slots=True)
class SpoolEntry:
    path: Path
    size: int

    @property
    def name(self) -> str:
        return self.path.name

    @property
    def sop_uid(self) -> str:
        return _sop_uid_of(self.path.name)

    @property
    def accepted_ns(self) -> int:
        return int(self.path.stem.split("-", 1)[0])


@dataclass(frozen=True, slots=True)
class SpoolStats:
    depth: int
    bytes: int
    oldest_age_s: float
    failed: int


class SpoolUsage:
    """How many instances and bytes a spool holds, in shared memory: the SCP process adds,
    the uploader process subtracts, and both see the same high-water accounting."""

    def __init__(self) -> None:
        ctx = multiprocessing.get_context("spawn")
        # depth, bytes, monotonic ns of the last reserve, associations open
        self._values = ctx.RawArray("q", 4)
        self._lock = ctx.Lock()

    def reserve(self, size: int, high_water: int) -> None:
        with self._lock:
            self._values[2] = time.monotonic_ns()
            if self._values[1] + size > high_water:
                raise SpoolFull(
                    f"spool holds {self._values[1]} bytes, high-water mark {high_water}"
                )
            self._values[0] += 1
            self._values[1] += size

    def quiet_s(self) -> float:
        """Seconds since an instance last arrived (CLOCK_MONOTONIC is one clock for every
        process on the machine); large when none has yet."""
        with self._lock:
            last = int(self._values[2])
        return (time.monotonic_ns() - last) / 1e9 if last else float("inf")

    def association_opened(self) -> None:
        with self._lock:
            self._values[3] += 1

    def association_closed(self) -> None:
        with self._lock:
            self._values[3] = max(0, self._values[3] - 1)

    def receiving(self) -> bool:
        """True while a modality holds an association open with one of the SCP processes (a
        process killed mid-association leaves it counted: then only :meth:`quiet_s` tells)."""
        with self._lock:
            return bool(self._values[3] > 0)

    def release(self, depth: int, size: int) -> None:
        with self._lock:
            self._values[0] -= depth
            self._values[1] -= size

    def get(self) -> tuple[int, int]:
        with self._lock:
            return int(self._values[0]), int(self._values[1])


class Spool:
    """A directory of instances accepted from modalities and not yet committed in the cloud.

    Several processes may open the same spool (the SCP writes, the uploader drains) when they
    share one :class:`SpoolUsage`; the first opener's ``usage`` counts what is already there.
    """

    def __init__(
        self,
        root: Path,
        *,
        high_water_bytes: int = 20 * 1024**3,
        min_free_bytes: int = 512 * 1024**2,
        fsync: bool = True,
        usage: SpoolUsage | None = None,
        journal_bytes: int = 0,
        no_plaintext_after_upload: bool = False,
    ) -> None:
        """``journal_bytes``: the write-ahead journal of each accepting process
        (pacs_gateway/journal.py) grows to this size; 0 makes every instance durable with
        plain fsyncs. A spool of any setting replays the journals a crash left.

        ``no_plaintext_after_upload`` (the cloud encrypts at rest): keep no instance bytes
        once the instance is uploaded. The journal is off (its segments are recycled, not
        rewritten, so they would keep every instance's bytes long after its upload; scrubbing
        each record would cost the write the journal saves), and the segments journals left
        in the pool are deleted once replayed. Uploaded entries are unlinked as always.

        Directories are created 0700 and files 0600 (the spool holds patient data)."""
        self.root = Path(root)
        self.incoming = self.root / "incoming"
        self.ready = self.root / "ready"
        self.failed = self.root / "failed"
        for d in (self.root, self.incoming, self.ready, self.failed):
            private_dir(d)
        if no_plaintext_after_upload:
            journal_bytes = 0
        self.high_water_bytes = high_water_bytes
        self.min_free_bytes = min_free_bytes
        self._fsync = fsync
        self._journal_segments = journal_bytes // SEGMENT_BYTES if fsync else 0
        self._seq = itertools.count()
        self._work = threading.Event()
        self.journal_root = self.root / "journal"
        self._journal: Journal | None = None
        self._journal_lock = threading.Lock()
        self._unwritten: set[str] = set()
        """Journalled entries whose ready/ file is not written yet (their segment must not be
        recycled, a clean stop waits for them)."""
        self._retry: dict[str, bytes] = {}
        """Copies of the unwritten entries whose write failed, to retry."""
        self._unwritten_lock = threading.Lock()
        self._sweep_incoming()
        self.usage = usage or SpoolUsage()
        restored = self._replay_journals()
        if usage is None:
            entries = self.pending()
            self.usage.release(-len(entries), -sum(e.size for e in entries))
            if entries:
                self._work.set()
                logger.info("spool resumes with %d pending instances", len(entries))
        elif restored:
            self.usage.release(-restored[0], -restored[1])
            self._work.set()
        if no_plaintext_after_upload:
            drop_journal_pool(self.journal_root)

    def _sweep_incoming(self) -> None:
        """Drop the partial files a crash left behind (never acknowledged). A file whose
        writer is still running stays: another process of this spool (a second acceptor, a
        restarted one) may be receiving a large instance into it right now."""
        live = _live_pid_tags()
        for leftover in self.incoming.iterdir():
            if _writer_tag(leftover.name) in live:
                continue
            leftover.unlink(missing_ok=True)

    # -- accepting -----------------------------------------------------------------------------

    def accept(
        self,
        parts: Sequence[bytes | memoryview],
        sop_uid: str,
        *,
        later: list[Callable[[], None]] | None = None,
    ) -> SpoolEntry:
        """Write an instance (the concatenation of ``parts``) durably; raise SpoolFull instead of
        accepting when over the high-water mark or short of disk.

        With ``later``, the ready/ file of a journalled instance is written by a callable
        appended to it, for the caller to run once it has answered the modality (``parts``
        must stay valid until then): the instance is durable when accept returns either way."""
        check_uid(sop_uid, "SOPInstanceUID")
        size = sum(len(p) for p in parts)
        # reserve before the write, so concurrent stores see it
        self.usage.reserve(size, self.high_water_bytes)
        name = self._new_name(sop_uid)
        final = self.ready / name
        try:
            if shutil.disk_usage(self.root).free - size < self.min_free_bytes:
                raise SpoolFull(f"less than {self.min_free_bytes} bytes free on the spool disk")
            if (
                self._journal_segments
                and Journal.fits(name, size)
                and self._journal_append(name, parts)
            ):
                # durable once in the journal; the ready/ file is checkpointed later
                with self._unwritten_lock:
                    self._unwritten.add(name)
                if later is None:
                    self._materialize(name, parts)
                else:
                    later.append(functools.partial(self._materialize, name, parts))
            else:
                self._write_entry(name, parts, size, fsync=self._fsync)
                self._work.set()
        except BaseException:
            self.usage.release(1, size)
            raise
        return SpoolEntry(final, size)

    def _materialize(self, name: str, parts: Sequence[bytes | memoryview]) -> None:
        """The ready/ file of a journalled instance (no fsync: the journal holds its bytes).
        A failure (a full disk) keeps a copy to retry; the journal keeps the record until the
        file is written (or replays it after a restart)."""
        self._retry_unwritten()
        try:
            self._write_entry(name, parts, sum(len(p) for p in parts), fsync=False)
        except OSError as exc:
            logger.error("spool entry %s is in the journal only, retrying: %s", name, exc)
            with self._unwritten_lock:
                self._retry[name] = b"".join(parts)
        else:
            with self._unwritten_lock:
                self._unwritten.discard(name)
        self._work.set()

    def _retry_unwritten(self) -> None:
        if not self._retry:
            return
        with self._unwritten_lock:
            waiting = list(self._retry.items())
        for name, data in waiting:
            try:
                self._write_entry(name, [data], len(data), fsync=False)
            except OSError:
                return
            with self._unwritten_lock:
                self._retry.pop(name, None)
                self._unwritten.discard(name)

    def _write_entry(
        self, name: str, parts: Sequence[bytes | memoryview], size: int, *, fsync: bool
    ) -> None:
        """incoming/ then rename into ready/ (with fsync of file and directory when asked)."""
        tmp = self.incoming / name
        try:
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            try:
                written = os.writev(fd, list(parts))
                if written != size:  # short writev: finish the rest
                    rest = b"".join(bytes(p) for p in parts)[written:]
                    while rest:
                        n = os.write(fd, rest)
                        rest = rest[n:]
                if fsync:
                    os.fsync(fd)
            finally:
                os.close(fd)
            os.rename(tmp, self.ready / name)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
        if fsync:
            fsync_dir(self.ready)

    def start_journal(self) -> None:
        """Give this process a journal now (its first segments are prepared in the
        background; until one is ready, accepts take the plain fsync path)."""
        with self._journal_lock:
            if self._journal is None and self._journal_segments:
                self._journal = Journal(
                    self.journal_root, self._checkpoint, max_segments=self._journal_segments
                )

    def _journal_append(self, name: str, parts: Sequence[bytes | memoryview]) -> bool:
        """Append to this process's journal; False when it has no segment to offer."""
        self.start_journal()
        journal = self._journal
        if journal is None:  # closed meanwhile
            return False
        try:
            journal.append(name, parts)
        except JournalUnavailable:
            return False
        return True

    def _checkpoint(self, names: list[str]) -> None:
        """Make journalled entries durable in ready/ (those not delivered or failed yet).
        OSError while one of them could not be written yet: the journal keeps its record."""
        self._retry_unwritten()
        with self._unwritten_lock:
            stuck = [n for n in names if n in self._unwritten]
        if stuck:
            raise OSError(f"{len(stuck)} journalled entries not written to ready/ yet")
        for name in names:
            try:
                fd = os.open(self.ready / name, os.O_RDONLY)
            except FileNotFoundError:
                continue
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
        fsync_dir(self.ready)

    def _replay_journals(self) -> tuple[int, int] | None:
        """Write back into ready/ what the journals of gone writers hold (see journal.py);
        returns (entries, bytes) written back."""
        restored = [0, 0]

        def restore(records: list[Record]) -> None:
            latest = {_sop_uid_of(r.name): r.name for r in records}
            for r in records:
                if latest[_sop_uid_of(r.name)] != r.name:
                    continue  # a later instance with the same UID superseded it
                if (self.failed / r.name).exists():
                    continue
                target = self.ready / r.name
                try:
                    if target.read_bytes() == r.data:
                        continue
                    existed = True
                except FileNotFoundError:
                    existed = False
                # a partial file of this entry is its gone writer's (entry names are unique
                # to their writer): the start's sweep may have seen that writer still dying
                (self.incoming / r.name).unlink(missing_ok=True)
                self._write_entry(r.name, [r.data], len(r.data), fsync=True)
                if not existed:
                    restored[0] += 1
                    restored[1] += len(r.data)
                logger.warning("spool entry %s restored from the journal", r.name)

        if replay_orphans(self.journal_root, restore) == 0:
            return None
        return restored[0], restored[1]

    def close(self, timeout: float = 10.0) -> None:
        """Checkpoint and remove this process's journal (a clean stop), once every journalled
        entry has its ready/ file; if some still have none after ``timeout`` (a full disk), the
        journal stays for the next start to replay."""
        with self._journal_lock:
            journal, self._journal = self._journal, None
        if journal is None:
            return
        deadline = time.monotonic() + timeout
        while self._unwritten and time.monotonic() < deadline:
            self._retry_unwritten()
            time.sleep(0.01)
        if self._unwritten:
            logger.error(
                "%d journalled entries have no ready/ file yet; the journal stays for replay",
                len(self._unwritten),
            )
            return
        journal.close()

    def _new_name(self, sop_uid: str) -> str:
        """Sortable by arrival, unique across the processes sharing the spool."""
        return (
            f"{time.time_ns():020d}-{os.getpid() % 1000000:06d}{next(self._seq):06d}-{sop_uid}.dcm"
        )

    def new_incoming(self) -> Path:
        """A fresh path in incoming/ for an instance written piece by piece (then
        :meth:`accept_file`); whatever a crash leaves there is dropped at the next open."""
        return self.incoming / f"{os.getpid()}-{next(self._seq)}.part"

    def accept_file(self, path: Path, sop_uid: str) -> SpoolEntry:
        """Adopt a complete file already written on the spool's filesystem (a streamed large
        instance): fsync it, rename it into ready/, fsync the directory."""
        check_uid(sop_uid, "SOPInstanceUID")
        size = path.stat().st_size
        self.usage.reserve(size, self.high_water_bytes)
        name = self._new_name(sop_uid)
        final = self.ready / name
        try:
            if shutil.disk_usage(self.root).free < self.min_free_bytes:
                raise SpoolFull(f"less than {self.min_free_bytes} bytes free on the spool disk")
            if self._fsync:
                fd = os.open(path, os.O_RDONLY)
                try:
                    os.fsync(fd)
                finally:
                    os.close(fd)
            os.rename(path, final)
            if self._fsync:
                fsync_dir(self.ready)
        except BaseException:
            self.usage.release(1, size)
            raise
        self._work.set()
        return SpoolEntry(final, size)

    # -- draining ------------------------------------------------------------------------------

    def pending(self, limit: int | None = None) -> list[SpoolEntry]:
        """Ready entries, oldest first."""
        names = sorted(n for n in os.listdir(self.ready) if n.endswith(".dcm"))
        if limit is not None:
            names = names[:limit]
        out = []
        for n in names:
            p = self.ready / n
            try:
                out.append(SpoolEntry(p, p.stat().st_size))
            except FileNotFoundError:
                continue
        return out

    def remove(self, entries: Iterable[SpoolEntry]) -> None:
        """Forget entries the cloud has committed (one directory fsync per batch)."""
        removed = 0
        freed = 0
        for e in entries:
            try:
                e.path.unlink()
            except FileNotFoundError:
                continue
            removed += 1
            freed += e.size
        if removed and self._fsync:
            fsync_dir(self.ready)
        self.usage.release(removed, freed)

    def fail(self, entry: SpoolEntry, reason: str) -> None:
        """Move an entry the cloud refused permanently to failed/ with its reason."""
        dest = self.failed / entry.name
        reason_file = dest.with_suffix(".reason")
        fd = os.open(reason_file, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write(reason + "\n")
        try:
            os.rename(entry.path, dest)
        except FileNotFoundError:
            return
        if self._fsync:
            fsync_dir(self.failed)
            fsync_dir(self.ready)
        self.usage.release(1, entry.size)
        logger.warning("spool entry %s failed permanently: %s", entry.name, reason)

    def wait_for_work(self, timeout: float) -> bool:
        """Block until something was accepted (or ``timeout``); clears the signal."""
        got = self._work.wait(timeout)
        self._work.clear()
        return got

    def wake(self) -> None:
        self._work.set()

    def oldest_age_s(self) -> float:
        """How long the oldest pending entry has waited (0 when none)."""
        oldest = self.pending(limit=1)
        return (time.time_ns() - oldest[0].accepted_ns) / 1e9 if oldest else 0.0

    def stats(self) -> SpoolStats:
        age = self.oldest_age_s()
        failed = sum(1 for n in os.listdir(self.failed) if n.endswith(".dcm"))
        depth, size = self.usage.get()
        return SpoolStats(depth=depth, bytes=size, oldest_age_s=age, failed=failed)


_PID_TAG = 1_000_000
"""Spool names carry the writer's pid modulo this (see Spool._new_name)."""


def _live_pid_tags() -> set[int]:
    """The running processes' pids modulo _PID_TAG (Linux /proc)."""
    return {int(p) % _PID_TAG for p in os.listdir("/proc") if p.isdigit()}


def _writer_tag(name: str) -> int | None:
    """The pid tag of the process that writes an incoming/ file: ``<pid>-<seq>.part``
    (:meth:`Spool.new_incoming`) or an entry name ``<ns>-<pid tag><seq>-<uid>.dcm``; None
    for a name of neither form."""
    head, _, rest = name.partition("-")
    try:
        if name.endswith(".part"):
            return int(head) % _PID_TAG
        return int(rest[:6])
    except ValueError:
        return None

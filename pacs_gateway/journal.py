"""The spool's write-ahead journal: one ``fdatasync`` makes an accepted instance durable.

Making a new spool file durable the plain way (fsync the file, rename it into ready/, fsync
the directory) costs two journal commits of the filesystem: about 0.7 ms per CT slice here,
half of what the gateway may spend per instance to stay ahead of a modality. Appending the
same bytes to a segment file whose blocks already exist and calling ``fdatasync`` changes no
metadata, so the disk only has to take the data: about 0.3 ms.

So the spool first appends each accepted instance to its process's journal (a record: header
with a CRC-32, the spool entry's name, the Part 10 bytes; written with O_DIRECT where the
filesystem allows, so it skips the page cache) and ``fdatasync``s it; only then does it write
the entry into ready/ the ordinary way, without fsync. Every file in ready/ is
therefore either durable already, or its bytes are in a journal record that is:

- **checkpointed** when its segment is full and the journal, grown to its size (the
  ``spool_journal_mb`` setting), needs the segment back: a background thread fsyncs the
  segment's entries still in ready/ (usually few: the uploader has delivered and deleted most
  of them by then, so their bytes never reached the disk a second time) and the directory,
  then recycles the segment (its blocks are reused);
- **replayed** when a journal's owner is gone (a crash, a power loss): every valid record of
  its segments is written back into ready/ (and fsynced), unless ready/ already holds the same
  bytes or a later record has the same SOP Instance UID. An entry the uploader had already
  delivered may come back once; delivery is idempotent, so the cloud keeps one copy.

A journal belongs to one process (``journal/<pid>-<random>/``, held with ``flock``); a spool
opener replays the journals whose lock it can take. Records carry their segment's generation,
so a recycled segment's stale records are never replayed.
"""

from __future__ import annotations

import errno
import fcntl
import logging
import mmap
import os
import secrets
import struct
import threading
import zlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from image_store.fsutil import fsync_dir

logger = logging.getLogger(__name__)

SEGMENT_BYTES = 16 * 1024 * 1024
"""Size of a segment: about 30 CT slices; larger instances skip the journal (the plain
fsync path, where the two commits are small beside the data)."""
_READY_SEGMENTS = 2
"""Segments kept prepared ahead of the writer."""
_POOL_SEGMENTS = 32
"""Segments kept in the spool's pool for future journals (the rest of a closed journal's are
deleted)."""
_RETRY_S = 5.0
_POOL = ".pool"
_FREE = ".free"

_ALIGN = 4096
"""Records start on this boundary (O_DIRECT needs aligned offsets, lengths and buffers)."""
_MAGIC = b"CFJ1"
_HEADER = struct.Struct("<4sQHQI")  # magic, generation, name length, data length, CRC-32
_LOCK = "owner.lock"


def _crc(generation: int, name: bytes, parts: Sequence[bytes | memoryview]) -> int:
    crc = zlib.crc32(struct.pack("<Q", generation))
    crc = zlib.crc32(name, crc)
    for p in parts:
        crc = zlib.crc32(p, crc)
    return crc


@dataclass(slots=True)
class _Segment:
    generation: int
    path: Path
    fd: int
    direct: bool
    offset: int = 0
    names: list[str] = field(default_factory=list)


@dataclass(frozen=True, slots=True)
class Record:
    name: str
    data: bytes


def _aligned(n: int) -> int:
    return (n + _ALIGN - 1) // _ALIGN * _ALIGN


def record_size(name: str, size: int) -> int:
    """Bytes a record takes in its segment (records start on _ALIGN boundaries)."""
    return _aligned(_HEADER.size + len(name.encode("utf-8")) + size)


def _open_segment(path: Path, flags: int) -> tuple[int, bool]:
    """Open for O_DIRECT writes where the filesystem allows (tmpfs does not): the data goes
    from our buffer to the disk without a page-cache copy and its writeback, about 0.1 ms of a
    0.3 ms append here. Returns the fd and whether it is direct."""
    try:
        return os.open(path, flags | os.O_DIRECT, 0o600), True
    except OSError as exc:
        if exc.errno != errno.EINVAL:
            raise
    return os.open(path, flags, 0o600), False


class JournalUnavailable(OSError):
    """No segment to write to (the disk is full, or the journal is still preparing one):
    the spool makes the instance durable the plain way instead."""


class Journal:
    """The journal of one writing process (thread-safe: appends are serialised)."""

    def __init__(
        self,
        root: Path,
        checkpoint: Callable[[list[str]], None],
        max_segments: int = 8,
    ) -> None:
        """``checkpoint(names)`` must make those ready/ entries (the ones still there) and
        the ready/ directory durable; it runs on the journal's background thread. The journal
        grows to ``max_segments`` segments, then recycles them."""
        name = f"{os.getpid()}-{secrets.token_hex(4)}"
        building = Path(root) / f".{name}"  # not an orphan to anyone while its lock is taken
        private_dir(building.parent)
        building.mkdir(mode=0o700)
        self._lock_fd = os.open(building / _LOCK, os.O_WRONLY | os.O_CREAT, 0o600)
        fcntl.flock(self._lock_fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        self.dir = Path(root) / name
        os.rename(building, self.dir)
        fsync_dir(self.dir)
        fsync_dir(self.dir.parent)
        self._checkpoint = checkpoint
        self._max_segments = max(max_segments, _READY_SEGMENTS + 2)
        self._pool = Path(root) / _POOL
        private_dir(self._pool)
        self._generation = 0
        self._append_lock = threading.Lock()
        self._cond = threading.Condition()
        self._prepared: list[_Segment] = []
        self._full: list[_Segment] = []
        self._free: list[Path] = []
        self._closed = False
        self._error: BaseException | None = None
        self._current: _Segment | None = None
        self._buffer = mmap.mmap(-1, _ALIGN)
        self._worker = threading.Thread(target=self._background, name="spool-journal", daemon=True)
        self._worker.start()

    @staticmethod
    def fits(name: str, size: int) -> bool:
        return record_size(name, size) <= SEGMENT_BYTES

    def append(self, name: str, parts: Sequence[bytes | memoryview]) -> None:
        """Write one record and make it durable (``fdatasync``). OSError when the disk fails
        (then nothing of it counts)."""
        raw_name = name.encode("utf-8")
        size = sum(len(p) for p in parts)
        length = _aligned(_HEADER.size + len(raw_name) + size)
        with self._append_lock:
            seg = self._current
            if seg is None or seg.offset + length > SEGMENT_BYTES:
                seg = self._next_segment()
            header = _HEADER.pack(
                _MAGIC, seg.generation, len(raw_name), size, _crc(seg.generation, raw_name, parts)
            )
            record = [header, raw_name, *parts]
            if seg.direct:
                expected = length
                with self._stage(record, length) as staged:
                    written = os.pwrite(seg.fd, staged, seg.offset)
            else:
                expected = _HEADER.size + len(raw_name) + size
                written = os.pwritev(seg.fd, record, seg.offset)
            if written != expected:
                raise OSError(f"short journal write: {written} of {expected} bytes")
            os.fdatasync(seg.fd)
            seg.offset += length
            seg.names.append(name)

    def _stage(self, parts: Sequence[bytes | memoryview], length: int) -> memoryview:
        """The record in the page-aligned buffer O_DIRECT needs, padded to ``length``."""
        if len(self._buffer) < length:
            self._buffer.close()
            self._buffer = mmap.mmap(-1, _aligned(length * 5 // 4))
        with memoryview(self._buffer) as view:
            pos = 0
            for p in parts:
                view[pos : pos + len(p)] = p
                pos += len(p)
        return memoryview(self._buffer)[:length]

    def _next_segment(self) -> _Segment:
        if self._current is not None:
            self._seal(self._current)
            self._current = None
        with self._cond:
            if not self._prepared:  # never wait: the caller has a slower path
                self._cond.notify_all()
                raise JournalUnavailable(
                    f"no journal segment ready: {self._error or 'still preparing'}"
                )
            seg = self._prepared.pop(0)
            self._cond.notify_all()
        self._current = seg
        return seg

    def _seal(self, seg: _Segment) -> None:
        with self._cond:
            self._full.append(seg)
            self._cond.notify_all()

    def close(self) -> None:
        """Checkpoint everything and remove the journal (a clean stop); its segments go to
        the spool's pool for the next journal."""
        with self._append_lock:
            if self._current is not None:
                self._seal(self._current)
                self._current = None
            with self._cond:
                self._closed = True
                self._cond.notify_all()
            self._worker.join(60)
            for seg in self._prepared:
                os.close(seg.fd)
            self._buffer.close()
            if self._error is None and not self._full:
                _give_to_pool(self.dir, self._pool)
            os.close(self._lock_fd)

    # -- the background thread -----------------------------------------------------------

    def _background(self) -> None:
        while True:
            with self._cond:
                while not self._closed and not self._has_work():
                    self._cond.wait()
                closing = self._closed
                if closing:
                    retire = list(self._full)
                elif self._must_recycle():
                    retire = self._full[:1]
                else:
                    retire = []
            try:
                for seg in retire:
                    self._retire(seg)
                    with self._cond:
                        self._full.remove(seg)
            except OSError:
                if closing:  # left for the replay at the next start
                    logger.exception("spool journal checkpoint failed at close")
                    return
                logger.exception("spool journal checkpoint failed; retrying")
                with self._cond:
                    self._cond.wait(_RETRY_S)
                continue
            if closing:
                return
            if len(self._prepared) < _READY_SEGMENTS and (self._free or self._room()):
                self._prepare_one()

    def _room(self) -> bool:
        """Another segment may be created (instead of recycling one)."""
        total = len(self._prepared) + len(self._full) + len(self._free) + 1  # + current
        return total < self._max_segments

    def _must_recycle(self) -> bool:
        return (
            len(self._prepared) < _READY_SEGMENTS
            and not self._free
            and not self._room()
            and bool(self._full)
        )

    def _has_work(self) -> bool:
        return len(self._prepared) < _READY_SEGMENTS and (
            bool(self._free) or self._room() or bool(self._full)
        )

    def _prepare_one(self) -> None:
        try:
            seg = self._prepare()
        except OSError as exc:  # e.g. a full disk: accept() falls back to plain fsyncs
            with self._cond:
                if self._error is None:
                    logger.warning("spool journal cannot prepare a segment: %s", exc)
                self._error = exc
                self._cond.notify_all()
                self._cond.wait(_RETRY_S)
            return
        with self._cond:
            self._error = None
            self._prepared.append(seg)
            self._cond.notify_all()

    def _retire(self, seg: _Segment) -> None:
        self._checkpoint(seg.names)
        os.close(seg.fd)
        free = seg.path.with_suffix(_FREE)  # no longer replayed: its entries are durable
        os.rename(seg.path, free)
        self._free.append(free)

    def _prepare(self) -> _Segment:
        self._generation += 1
        path = self.dir / f"{self._generation:012d}.seg"
        reuse = self._free.pop(0) if self._free else _take_from_pool(self._pool)
        if reuse is not None:  # a used segment: its blocks are written, its records stale
            os.rename(reuse, path)
            fd, direct = _open_segment(path, os.O_RDWR)
        else:
            fd, direct = _open_segment(path, os.O_RDWR | os.O_CREAT | os.O_EXCL)
            try:
                # allocated now, so a full disk shows here and not in append(); the first
                # write to each block still converts it (a metadata change, in a new
                # journal's first SEGMENT_BYTES x max_segments only)
                os.posix_fallocate(fd, 0, SEGMENT_BYTES)
                os.fsync(fd)
            except BaseException:
                os.close(fd)
                path.unlink(missing_ok=True)
                raise
        fsync_dir(self.dir)
        return _Segment(self._generation, path, fd, direct)


def private_dir(path: Path) -> None:
    """Create ``path`` (and missing parents) readable by its owner only (0700), and make an
    existing one so."""
    path.mkdir(mode=0o700, parents=True, exist_ok=True)
    if path.stat().st_mode & 0o077:
        os.chmod(path, 0o700)


def drop_journal_pool(root: Path) -> None:
    """Delete the segments kept for future journals under ``root`` (they hold old records)."""
    pool = root / _POOL
    if not pool.is_dir():
        return
    for p in pool.glob(f"*{_FREE}"):
        p.unlink(missing_ok=True)
    fsync_dir(pool)


def _take_from_pool(pool: Path) -> Path | None:
    return next(iter(sorted(pool.glob(f"*{_FREE}"))), None)


def _give_to_pool(journal_dir: Path, pool: Path) -> None:
    """Move a finished journal's segments to the pool (up to a bound), delete the rest."""
    room = _POOL_SEGMENTS - len(list(pool.glob(f"*{_FREE}")))
    for p in sorted(journal_dir.iterdir()):
        if p.suffix in (".seg", _FREE) and room > 0:
            os.rename(p, pool / f"{secrets.token_hex(8)}{_FREE}")
            room -= 1
        else:
            p.unlink(missing_ok=True)
    journal_dir.rmdir()
    fsync_dir(pool)
    fsync_dir(journal_dir.parent)


def read_segment(path: Path) -> list[Record]:
    """The valid records of a segment, in order (reading stops at the first that is not)."""
    try:
        generation = int(path.stem)
    except ValueError:
        return []
    data = path.read_bytes()
    out: list[Record] = []
    pos = 0
    while pos + _HEADER.size <= len(data):
        magic, gen, name_len, size, crc = _HEADER.unpack_from(data, pos)
        start = pos + _HEADER.size
        end = start + name_len + size
        if magic != _MAGIC or gen != generation or end > len(data):
            break
        raw_name = data[start : start + name_len]
        body = data[start + name_len : end]
        if _crc(gen, raw_name, [body]) != crc:
            break
        try:
            out.append(Record(raw_name.decode("utf-8"), body))
        except UnicodeDecodeError:
            break
        pos = _aligned(end)
    return out


def replay_orphans(root: Path, restore: Callable[[list[Record]], None]) -> int:
    """Replay and remove every journal under ``root`` whose owner is gone (its lock can be
    taken; it is held while replaying, so two openers never replay one journal). ``restore``
    gets each journal's valid records, oldest first. Returns how many journals it replayed."""
    if not root.is_dir():
        return 0
    private_dir(root / _POOL)
    replayed = 0
    for d in sorted(root.iterdir()):
        if not d.is_dir() or d.name.startswith("."):
            continue
        try:
            fd = os.open(d / _LOCK, os.O_WRONLY | os.O_CREAT, 0o600)
        except OSError:
            continue  # removed meanwhile by another opener
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:
                continue  # its owner is alive
            if not d.is_dir():
                continue
            segments = sorted(d.glob("*.seg"), key=lambda p: p.stem)
            records = [r for seg in segments for r in read_segment(seg)]
            restore(records)
            _give_to_pool(d, root / _POOL)
            replayed += 1
        finally:
            os.close(fd)
    return replayed

"""EncryptedObjectStore: envelope encryption at rest in front of any ObjectStore.

Wraps the filesystem or S3 store; what it stores is the sealed form of ``image_store.crypto``
(header + 4 MiB AEAD segments), what it returns is the plaintext, checked. Sizes and sha256 in
ObjectInfo are the plaintext's, so the index, scrub and the read paths (which hash what ``get``
returns) are unchanged. A byte that was changed, a segment that was dropped, moved or cut off,
a key that does not match: IntegrityError, never bad bytes.

Memory: a stream given to ``put`` is sealed one segment at a time as the inner store reads it
(the filesystem store then writes in constant memory). The sealed stream of a seekable source
(a file) is seekable back to its start and seals the same bytes again (the data key and the
segment nonces are fixed once per put), so the S3 store can hash it in one pass and upload it
by multipart in a second without holding it; a byte range reads and opens only the
segments it covers; ``stat`` opens the object in 16 MiB ranges. ``get`` of a whole object
returns it whole, as the ObjectStore interface does.
"""

from __future__ import annotations

import hashlib
import io
from collections import deque
from collections.abc import Iterator
from typing import BinaryIO

from image_store.crypto import (
    DEFAULT_SEGMENT_LOG2,
    MAX_HEADER,
    TAG,
    Algorithm,
    Header,
    new_header,
    open_segment,
    parse_header,
    rewrapped_header,
    seal_segment,
    split_segments,
    unwrap,
)
from image_store.errors import IntegrityError, ObjectNotFound
from image_store.key_providers import KeyProvider
from image_store.keys import check_key
from image_store.ports import ObjectStore
from image_store.records import ByteRange, ObjectInfo

_STAT_SEGMENTS = 4


def _hospital(key: str) -> str:
    """Whose KEK seals an object: keys start with the hospital id."""
    return check_key(key).split("/", 1)[0]


class _SealingReader(io.RawIOBase):
    """A read-only stream of the sealed form of ``source``, produced segment by segment.

    Hashes the plaintext as it goes; at its end it checks ``expected_sha256`` and raises
    IntegrityError before the final segment, so the inner store never completes the put.
    Seekable (to its start only) when ``source`` is and ``rewindable``: ``seek(0)`` seeks the
    source back and starts the same sealed stream again."""

    def __init__(
        self,
        source: BinaryIO,
        header_bytes: bytes,
        header: Header,
        data_key: bytes,
        key: str,
        expected_sha256: str | None,
        *,
        rewindable: bool = True,
    ) -> None:
        super().__init__()
        self._src = source
        self._header = header
        self._header_bytes = header_bytes
        self._dk = data_key
        self._key = key
        self._expected = expected_sha256
        self._src_start = _tell(source) if rewindable else None
        self._restart()

    def _restart(self) -> None:
        self._out: deque[bytes] = deque([self._header_bytes])  # sealed bytes not read yet
        self._pos = 0  # read from self._out[0] so far
        self._delivered = 0
        self._next = self._read_segment()
        self._index = 0
        self._done = False
        self.digest = hashlib.sha256()
        self.size = 0

    def _read_segment(self) -> bytes:
        want = self._header.segment_size
        parts: list[bytes] = []
        while want > 0:
            chunk = self._src.read(want)
            if not chunk:
                break
            parts.append(chunk)
            want -= len(chunk)
        return b"".join(parts)

    def _advance(self) -> None:
        current = self._next
        self._next = self._read_segment() if len(current) == self._header.segment_size else b""
        final = not self._next
        self.digest.update(current)
        self.size += len(current)
        if final and self._expected is not None and self.digest.hexdigest() != self._expected:
            raise IntegrityError(
                f"object {self._key!r}: sha256 {self.digest.hexdigest()} != expected "
                f"{self._expected}"
            )
        self._out.append(seal_segment(self._header, self._dk, self._index, final, current))
        self._index += 1
        self._done = final

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return self._src_start is not None

    def tell(self) -> int:
        return self._delivered

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        """Back to the start (``seek(0)``), or nowhere (a seek to the current position)."""
        if whence == io.SEEK_SET:
            target = offset
        elif whence == io.SEEK_CUR:
            target = self._delivered + offset
        else:
            raise io.UnsupportedOperation("a sealed stream has no known end to seek from")
        if target == self._delivered:
            return target
        if target != 0 or self._src_start is None:
            raise io.UnsupportedOperation("a sealed stream seeks back to its start only")
        self._src.seek(self._src_start)
        self._restart()
        return 0

    def read(self, size: int | None = -1) -> bytes:
        out = self._read(size)
        self._delivered += len(out)
        return out

    def _read(self, size: int | None) -> bytes:
        if size is None or size < 0:
            while not self._done:
                self._advance()
            out = b"".join(self._out)[self._pos :]
            self._out.clear()
            self._pos = 0
            return out
        while not self._done and self._buffered() < size:
            self._advance()
        parts: list[bytes] = []
        while size > 0 and self._out:
            head = self._out[0]
            piece = head[self._pos : self._pos + size]
            parts.append(piece)
            size -= len(piece)
            self._pos += len(piece)
            if self._pos == len(head):
                self._out.popleft()
                self._pos = 0
        return b"".join(parts)

    def _buffered(self) -> int:
        return sum(len(b) for b in self._out) - self._pos

    def readinto(self, buffer: memoryview) -> int:  # type: ignore[override]
        data = self.read(len(buffer))
        buffer[: len(data)] = data
        return len(data)


def _tell(source: BinaryIO) -> int | None:
    """Where a seekable source stands now; None for a stream that cannot seek."""
    try:
        return source.tell() if source.seekable() else None
    except (AttributeError, OSError, ValueError):
        return None


class EncryptedObjectStore:
    """An ObjectStore that seals every object with a fresh data key under its hospital's KEK."""

    def __init__(
        self,
        inner: ObjectStore,
        keys: KeyProvider,
        algorithm: Algorithm = Algorithm.AES_256_GCM,
        *,
        segment_log2: int = DEFAULT_SEGMENT_LOG2,
    ) -> None:
        self.inner = inner
        self.keys = keys
        self.algorithm = algorithm
        self.segment_log2 = segment_log2

    # -- writes ------------------------------------------------------------------------------

    def put(self, key: str, data: bytes | BinaryIO, *, sha256: str | None = None) -> ObjectInfo:
        kek = self.keys.current(_hospital(key))
        raw, header, dk = new_header(self.algorithm, kek.key_id, kek.key, key, self.segment_log2)
        in_memory = isinstance(data, bytes | bytearray | memoryview)
        if isinstance(data, bytes | bytearray | memoryview):
            data = io.BytesIO(data)
        # bytes already in memory are sealed once (the inner store may hold the sealed form);
        # a file is sealed twice rather than held
        reader = _SealingReader(data, raw, header, dk, key, sha256, rewindable=not in_memory)
        self.inner.put(key, reader)  # type: ignore[arg-type]
        return ObjectInfo(key=key, size=reader.size, sha256=reader.digest.hexdigest())

    def rewrap(self, key: str) -> bool:
        """Wrap the object's data key under its hospital's current KEK (after a rotation), the
        sealed payload unchanged; False when it already is. Run it over every key before a
        retired KEK is removed. A put of the same key at the same moment may be lost to it."""
        current = self.keys.current(_hospital(key))
        data = self.inner.get(key)
        header, dk = self._open_header(key, data)
        if header.key_id == current.key_id:
            return False
        raw = rewrapped_header(header, dk, current.key_id, current.key, key)
        self.inner.put(key, raw + data[header.length :])
        return True

    def delete(self, key: str) -> None:
        self.inner.delete(key)

    def iter_keys(self, prefix: str) -> Iterator[str]:
        return self.inner.iter_keys(prefix)

    # -- reads -------------------------------------------------------------------------------

    def _open_header(self, key: str, data: bytes | memoryview) -> tuple[Header, bytes]:
        header = parse_header(key, data)
        kek = self.keys.get(_hospital(key), header.key_id)
        return header, unwrap(header, kek.key, key)

    def _open_body(
        self, key: str, header: Header, dk: bytes, body: memoryview, first: int, to_end: bool
    ) -> bytes:
        """Open the segments in ``body`` (starting at segment ``first``). With ``to_end`` the
        body reaches the end of the object, so its last segment must be the final one."""
        pieces = list(split_segments(header, body, first))
        return b"".join(
            open_segment(header, dk, index, to_end and n == len(pieces) - 1, sealed, key)
            for n, (index, sealed) in enumerate(pieces)
        )

    def get(self, key: str, byte_range: ByteRange | None = None) -> bytes:
        if byte_range is None:
            data = memoryview(self.inner.get(key))
            header, dk = self._open_header(key, data)
            return self._open_body(key, header, dk, data[header.length :], 0, True)
        return self._get_range(key, byte_range)

    def _get_range(self, key: str, r: ByteRange) -> bytes:
        if r.end is not None and r.end <= r.start:
            check_key(key)
            return b""
        header, dk = self._open_header(key, self.inner.get(key, ByteRange(0, MAX_HEADER)))
        seg, step = header.segment_size, header.segment_size + TAG
        first = r.start // seg
        start = header.length + first * step
        if r.end is None:
            body = self.inner.get(key, ByteRange(start))
            to_end = True
        else:
            last = (r.end - 1) // seg
            want = (last - first + 1) * step
            body = self.inner.get(key, ByteRange(start, start + want + 1))  # +1: is there more?
            to_end = len(body) <= want
            body = body[:want]
        if not body:  # past the end (or cut short): only the whole object can tell which
            return self.get(key)[r.start : r.end]
        plain = self._open_body(key, header, dk, memoryview(body), first, to_end)
        lo = r.start - first * seg
        hi = None if r.end is None else r.end - first * seg
        return plain[lo:hi]

    def stat(self, key: str) -> ObjectInfo | None:
        """Plaintext size and sha256: the object is read and opened (16 MiB at a time)."""
        try:
            digest = hashlib.sha256()
            size = 0
            for chunk in self.iter_plaintext(key):
                digest.update(chunk)
                size += len(chunk)
        except ObjectNotFound:
            return None
        return ObjectInfo(key=key, size=size, sha256=digest.hexdigest())

    def iter_plaintext(self, key: str) -> Iterator[bytes]:
        """The object's plaintext in pieces of up to 4 segments, each checked before it is
        yielded (a damaged later piece raises IntegrityError after the earlier ones)."""
        header, dk = self._open_header(key, self.inner.get(key, ByteRange(0, MAX_HEADER)))
        step = header.segment_size + TAG
        first = 0
        while True:
            start = header.length + first * step
            want = _STAT_SEGMENTS * step
            body = self.inner.get(key, ByteRange(start, start + want + 1))
            to_end = len(body) <= want
            if not body:
                raise IntegrityError(f"object {key!r}: segment {first} is missing")
            yield self._open_body(key, header, dk, memoryview(body)[:want], first, to_end)
            if to_end:
                return
            first += _STAT_SEGMENTS

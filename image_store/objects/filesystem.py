"""An ObjectStore on a local filesystem: one file per key, written atomically and durably,
readable by the store's own user only (files 0600, directories 0700)."""

from __future__ import annotations

import contextlib
import hashlib
import os
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO

from image_store.errors import IntegrityError, ObjectNotFound
from image_store.fsutil import fsync_dir, make_dirs
from image_store.keys import check_key
from image_store.records import ByteRange, ObjectInfo

_CHUNK = 1 << 20
_PARTIAL = ".partial"
_TMP_DIR = ".partial"
FILE_MODE = 0o600


class FilesystemObjectStore:
    """Objects under ``root/<key>``. Writes go to ``<key>.partial-<uuid>``, are fsynced, then
    renamed over the key and the directory is fsynced: readers never see half an object and an
    acknowledged put survives a crash."""

    def __init__(self, root: Path, *, fsync: bool = True) -> None:
        self.root = Path(root)
        self._tmp = self.root / _TMP_DIR
        make_dirs(self._tmp)
        self._fsync = fsync
        self._sweep_partials()

    def _sweep_partials(self) -> None:
        """Remove writes that a crash interrupted. Other processes may be writing right now,
        so only files older than an hour go."""
        cutoff = time.time() - 3600
        for p in self._tmp.iterdir():
            with contextlib.suppress(FileNotFoundError):
                if p.stat().st_mtime < cutoff:
                    p.unlink()

    def _path(self, key: str) -> Path:
        return self.root / check_key(key)

    def put(self, key: str, data: bytes | BinaryIO, *, sha256: str | None = None) -> ObjectInfo:
        path = self._path(key)
        make_dirs(path.parent)
        # partial writes live apart from the objects (same filesystem, so rename is atomic)
        tmp = self._tmp / (uuid.uuid4().hex + _PARTIAL)
        digest = hashlib.sha256()
        size = 0
        try:
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, FILE_MODE)
            with os.fdopen(fd, "wb") as fh:
                if isinstance(data, bytes | bytearray | memoryview):
                    view = memoryview(data)
                    digest.update(view)
                    fh.write(view)
                    size = len(view)
                else:
                    while chunk := data.read(_CHUNK):
                        digest.update(chunk)
                        fh.write(chunk)
                        size += len(chunk)
                if self._fsync:
                    fh.flush()
                    os.fsync(fh.fileno())
            actual = digest.hexdigest()
            if sha256 is not None and actual != sha256:
                raise IntegrityError(f"object {key!r}: sha256 {actual} != expected {sha256}")
            os.replace(tmp, path)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
        if self._fsync:
            fsync_dir(path.parent)
        return ObjectInfo(key=key, size=size, sha256=actual)

    def get(self, key: str, byte_range: ByteRange | None = None) -> bytes:
        path = self._path(key)
        try:
            with open(path, "rb") as fh:
                if byte_range is None:
                    return fh.read()
                fh.seek(byte_range.start)
                if byte_range.end is None:
                    return fh.read()
                return fh.read(max(0, byte_range.end - byte_range.start))
        except (FileNotFoundError, NotADirectoryError, IsADirectoryError) as exc:
            raise ObjectNotFound(f"no object {key!r}") from exc

    def stat(self, key: str) -> ObjectInfo | None:
        path = self._path(key)
        if not path.is_file():
            return None
        digest = hashlib.sha256()
        size = 0
        with open(path, "rb") as fh:
            while chunk := fh.read(_CHUNK):
                digest.update(chunk)
                size += len(chunk)
        return ObjectInfo(key=key, size=size, sha256=digest.hexdigest())

    def delete(self, key: str) -> None:
        path = self._path(key)
        try:
            path.unlink()
        except FileNotFoundError:
            return
        if self._fsync:
            fsync_dir(path.parent)

    def iter_keys(self, prefix: str) -> Iterator[str]:
        root = str(self.root)
        found: list[str] = []
        # walk only the deepest directory the prefix names in full
        base = prefix.rsplit("/", 1)[0] if "/" in prefix else ""
        start = self.root / base if base else self.root
        if base:
            check_key(base)
        for dirpath, dirs, files in os.walk(start):
            if dirpath == root:
                dirs[:] = [d for d in dirs if d != _TMP_DIR]
            for name in files:
                key = os.path.relpath(os.path.join(dirpath, name), root).replace(os.sep, "/")
                if key.startswith(prefix):
                    found.append(key)
        yield from sorted(found)

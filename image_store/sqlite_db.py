"""A SQLite database file shared by threads: one connection per thread, one writer at a time.

WAL mode with ``synchronous=FULL``: these files are stores of record (the index, share links,
the audit log), so a committed transaction survives a power cut. The database is created with
mode 0600 in a directory made 0700 (SQLite gives its -wal and -shm files the database's mode).
"""

from __future__ import annotations

import contextlib
import os
import sqlite3
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from image_store.fsutil import make_dirs


class SqliteDatabase:
    def __init__(self, path: Path, schema: str) -> None:
        self.path = Path(path)
        make_dirs(self.path.parent)
        # 0600 before SQLite makes it; never open (and close) a file SQLite may hold here:
        # closing any descriptor drops this process's POSIX locks on it, and another process
        # closing its last connection would then delete the WAL under our connections
        with contextlib.suppress(FileExistsError):
            os.close(os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o600))
        self._local = threading.local()
        self._write_lock = threading.Lock()
        self._all: list[sqlite3.Connection] = []
        self._all_lock = threading.Lock()
        with self._write_lock:
            self.conn().executescript(schema)

    def conn(self) -> sqlite3.Connection:
        """This thread's connection (autocommit outside of :meth:`tx`)."""
        conn: sqlite3.Connection | None = getattr(self._local, "conn", None)
        if conn is None:
            conn = sqlite3.connect(
                self.path, timeout=30.0, isolation_level=None, check_same_thread=False
            )
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute("PRAGMA synchronous=FULL")
            conn.execute("PRAGMA foreign_keys=ON")
            self._local.conn = conn
            with self._all_lock:
                self._all.append(conn)
        return conn

    @contextmanager
    def tx(self) -> Iterator[sqlite3.Connection]:
        """A write transaction: committed on success, rolled back on any exception."""
        with self._write_lock:
            conn = self.conn()
            conn.execute("BEGIN IMMEDIATE")
            try:
                yield conn
            except BaseException:
                conn.execute("ROLLBACK")
                raise
            conn.execute("COMMIT")

    def close(self) -> None:
        with self._all_lock:
            for conn in self._all:
                conn.close()
            self._all.clear()
        self._local = threading.local()

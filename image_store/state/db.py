"""The database the region's state lives in: the index's own (``index.sqlite`` embedded, the
PostgreSQL DSN in a region), with the '?' placeholders the stores' shared SQL is written in.

:class:`SqliteStateDb` serialises writers with ``BEGIN IMMEDIATE``; :class:`PostgresStateDb`
runs each write transaction under a transaction-level advisory lock named by the store, so a
read-modify-write (a lockout counter, the audit chain's head) is serialised across every API
process sharing the database.
"""

from __future__ import annotations

import re
import sqlite3
import threading
import zlib
from collections.abc import Iterator, Sequence
from contextlib import AbstractContextManager, contextmanager
from pathlib import Path
from typing import Any, Literal, Protocol

from image_store.sqlite_db import SqliteDatabase


class Conn(Protocol):
    """A connection taking '?' placeholders; ``execute`` returns a DB-API cursor."""

    def execute(self, sql: str, params: Sequence[Any] = ..., /) -> Any: ...


class StateDb(Protocol):
    dialect: Literal["sqlite", "postgres"]
    integrity_errors: tuple[type[Exception], ...]
    """What an insert violating a unique key raises."""

    def ensure_schema(self, schema: str) -> None:
        """Run ``schema`` (SQLite types: INTEGER, REAL, TEXT; adapted for PostgreSQL)."""

    def columns(self, table: str) -> set[str]: ...

    def add_columns(self, table: str, columns: Sequence[tuple[str, str]]) -> None:
        """Add the ``(name, declaration)`` columns ``table`` lacks (SQLite types)."""

    def conn(self) -> Conn:
        """This thread's connection, autocommitting outside :meth:`tx`."""

    def tx(self, lock: str) -> AbstractContextManager[Conn]:
        """A write transaction, serialised with every other ``tx`` of the same ``lock`` name
        (across processes); committed on success, rolled back on any exception."""

    def close(self) -> None: ...


class SqliteStateDb:
    dialect: Literal["sqlite", "postgres"] = "sqlite"
    integrity_errors: tuple[type[Exception], ...] = (sqlite3.IntegrityError,)

    def __init__(self, path: Path) -> None:
        self.db = SqliteDatabase(path, "")
        self.path = self.db.path

    def ensure_schema(self, schema: str) -> None:
        with self.db.tx() as conn:
            for statement in _statements(schema):
                conn.execute(statement)

    def columns(self, table: str) -> set[str]:
        return {str(r[1]) for r in self.db.conn().execute(f"PRAGMA table_info({table})")}

    def add_columns(self, table: str, columns: Sequence[tuple[str, str]]) -> None:
        with self.db.tx() as conn:
            have = self.columns(table)
            for name, decl in columns:
                if name not in have:
                    conn.execute(f"ALTER TABLE {table} ADD COLUMN {name} {decl}")

    def conn(self) -> Conn:
        return self.db.conn()

    @contextmanager
    def tx(self, lock: str) -> Iterator[Conn]:
        with self.db.tx() as conn:  # BEGIN IMMEDIATE: one writer for the whole file
            yield conn

    def close(self) -> None:
        self.db.close()


def _statements(schema: str) -> list[str]:
    return [s.strip() for s in schema.split(";") if s.strip()]


def postgres_schema(schema: str) -> str:
    """SQLite's INTEGER/REAL/BLOB as BIGINT/DOUBLE PRECISION/BYTEA."""
    schema = re.sub(r"\bBLOB\b", "BYTEA", schema)
    schema = re.sub(r"\bINTEGER\b", "BIGINT", schema)
    return re.sub(r"\bREAL\b", "DOUBLE PRECISION", schema)


class _PgConn:
    def __init__(self, raw: Any) -> None:
        self.raw = raw

    def execute(self, sql: str, params: Sequence[Any] = (), /) -> Any:
        return self.raw.execute(sql.replace("?", "%s"), list(params))


class PostgresStateDb:
    dialect: Literal["sqlite", "postgres"] = "postgres"

    def __init__(self, dsn: str) -> None:
        import psycopg

        self._psycopg = psycopg
        self.integrity_errors: tuple[type[Exception], ...] = (psycopg.errors.IntegrityError,)
        self.dsn = dsn
        self._local = threading.local()
        self._all: list[Any] = []
        self._lock = threading.Lock()

    def ensure_schema(self, schema: str) -> None:
        with self.tx("schema") as conn:
            for statement in _statements(postgres_schema(schema)):
                conn.execute(statement)

    def columns(self, table: str) -> set[str]:
        rows = self.conn().execute(
            "SELECT column_name FROM information_schema.columns WHERE table_name = ?", (table,)
        )
        return {str(r[0]) for r in rows}

    def add_columns(self, table: str, columns: Sequence[tuple[str, str]]) -> None:
        with self.tx("schema") as conn:
            for name, decl in columns:
                conn.execute(
                    f"ALTER TABLE {table} ADD COLUMN IF NOT EXISTS {name} {postgres_schema(decl)}"
                )

    def conn(self) -> _PgConn:
        conn: _PgConn | None = getattr(self._local, "conn", None)
        if conn is None or conn.raw.closed or conn.raw.broken:
            conn = _PgConn(self._psycopg.connect(self.dsn, autocommit=True))
            self._local.conn = conn
            with self._lock:
                self._all.append(conn.raw)
        return conn

    @contextmanager
    def tx(self, lock: str) -> Iterator[Conn]:
        conn = self.conn()
        with conn.raw.transaction():
            conn.execute("SELECT pg_advisory_xact_lock(?)", (lock_id(lock),))
            yield conn

    def close(self) -> None:
        with self._lock:
            for raw in self._all:
                raw.close()
            self._all.clear()
        self._local = threading.local()


def lock_id(name: str) -> int:
    """A stable advisory-lock number for a store's name (apart from the index's 72637)."""
    return 0x5157_0000_0000 + zlib.crc32(name.encode())


def as_db(db: StateDb | Path | str) -> StateDb:
    """``db`` itself, or a SQLite file at that path (for tools and tests given a path)."""
    if isinstance(db, (Path, str)):
        return SqliteStateDb(Path(db))
    return db

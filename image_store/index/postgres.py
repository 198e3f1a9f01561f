"""The Index on PostgreSQL: what a region runs (replicas for reads, partitioning later).

Same queries and writes as SQLite (image_store.index.sqlbase); one connection per thread
(psycopg 3), each batch in one transaction, so a connection lost mid-batch leaves no
half-indexed study. Person-name prefix matching uses ILIKE over lower() indexes.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import psycopg

from image_store.index.sql import POSTGRES
from image_store.index.sqlbase import ADDED_COLUMNS, SqlIndex, schema

SCHEMA = schema(
    serial_pk="BIGSERIAL PRIMARY KEY",
    bigint="BIGINT",
    real="DOUBLE PRECISION",
    pattern_ops=" text_pattern_ops",
)


class _Connection:
    """psycopg with the '?' placeholders the shared SQL is written in."""

    def __init__(self, conn: psycopg.Connection[Any]) -> None:
        self.raw = conn

    def execute(self, sql: str, params: Sequence[Any] = ()) -> Any:
        return self.raw.execute(sql.replace("?", "%s"), list(params))


class PostgresIndex(SqlIndex):
    dialect = POSTGRES

    def __init__(self, dsn: str) -> None:
        self.dsn = dsn
        self._local = threading.local()
        self._all: list[psycopg.Connection[Any]] = []
        self._lock = threading.Lock()
        with self._tx() as conn:
            conn.raw.execute("SELECT pg_advisory_xact_lock(72637)")  # one schema creator
            conn.raw.execute(SCHEMA)
            for table, column, declaration in ADDED_COLUMNS:  # indexes made by older versions
                conn.raw.execute(
                    f"ALTER TABLE {table} ADD COLUMN IF NOT EXISTS {column} {declaration}"
                )

    def _connect(self) -> _Connection:
        conn: _Connection | None = getattr(self._local, "conn", None)
        if conn is None or conn.raw.closed or conn.raw.broken:
            raw = psycopg.connect(self.dsn, autocommit=True)
            conn = _Connection(raw)
            self._local.conn = conn
            with self._lock:
                self._all.append(raw)
        return conn

    def _conn(self) -> _Connection:
        return self._connect()

    @contextmanager
    def _tx(self) -> Iterator[_Connection]:
        conn = self._connect()
        with conn.raw.transaction():
            yield conn

    def close(self) -> None:
        with self._lock:
            for raw in self._all:
                raw.close()
            self._all.clear()
        self._local = threading.local()

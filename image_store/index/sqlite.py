"""The Index on SQLite: the embedded default (laptops, tests, one-hospital demos).

WAL mode with ``synchronous=FULL`` (this is the store of record), one connection per thread,
one writer at a time, and every batch committed in one transaction.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from image_store.index.sql import SQLITE
from image_store.index.sqlbase import ADDED_COLUMNS, SqlIndex, schema
from image_store.sqlite_db import SqliteDatabase

SCHEMA = schema(
    serial_pk="INTEGER PRIMARY KEY",  # SQLite's rowid alias
    bigint="INTEGER",
    real="REAL",
    pattern_ops="",
)


class SqliteIndex(SqlIndex):
    """Index of patients, studies, series and instances in one SQLite file."""

    dialect = SQLITE

    def __init__(self, path: Path) -> None:
        self.db = SqliteDatabase(path, SCHEMA)
        self.path = self.db.path
        with self.db.tx() as conn:  # indexes made by older versions
            for table, column, declaration in ADDED_COLUMNS:
                have = {row[1] for row in conn.execute(f"PRAGMA table_info({table})")}
                if column not in have:
                    conn.execute(f"ALTER TABLE {table} ADD COLUMN {column} {declaration}")

    def _conn(self) -> sqlite3.Connection:
        return self.db.conn()

    @contextmanager
    def _tx(self) -> Iterator[sqlite3.Connection]:
        with self.db.tx() as conn:
            yield conn

    def close(self) -> None:
        self.db.close()

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
from image_store.index.sqlbase import SqlIndex

SCHEMA = """
CREATE TABLE IF NOT EXISTS patients (
    pk BIGSERIAL PRIMARY KEY,
    hospital TEXT NOT NULL,
    issuer TEXT NOT NULL,
    patient_id TEXT NOT NULL,
    name TEXT NOT NULL,
    name_alpha TEXT NOT NULL,
    name_ideo TEXT NOT NULL,
    birth_date TEXT NOT NULL,
    sex TEXT NOT NULL,
    UNIQUE (hospital, issuer, patient_id)
);
CREATE INDEX IF NOT EXISTS patients_pid ON patients (patient_id);
CREATE INDEX IF NOT EXISTS patients_name ON patients (lower(name_alpha) text_pattern_ops);
CREATE TABLE IF NOT EXISTS studies (
    study_uid TEXT PRIMARY KEY,
    hospital TEXT NOT NULL,
    patient_pk BIGINT NOT NULL REFERENCES patients (pk),
    study_date TEXT NOT NULL,
    study_time TEXT NOT NULL,
    accession_number TEXT NOT NULL,
    study_description TEXT NOT NULL,
    referring_physician TEXT NOT NULL,
    study_id TEXT NOT NULL,
    modalities TEXT NOT NULL,
    number_of_series INTEGER NOT NULL,
    number_of_instances INTEGER NOT NULL,
    updated_at DOUBLE PRECISION NOT NULL
);
CREATE INDEX IF NOT EXISTS studies_date ON studies (hospital, study_date);
CREATE INDEX IF NOT EXISTS studies_patient ON studies (patient_pk);
CREATE INDEX IF NOT EXISTS studies_accession ON studies (accession_number);
CREATE TABLE IF NOT EXISTS series (
    series_uid TEXT PRIMARY KEY,
    study_uid TEXT NOT NULL REFERENCES studies (study_uid),
    modality TEXT NOT NULL,
    series_number INTEGER,
    series_description TEXT NOT NULL,
    body_part TEXT NOT NULL,
    number_of_instances INTEGER NOT NULL
);
CREATE INDEX IF NOT EXISTS series_study ON series (study_uid, modality);
CREATE TABLE IF NOT EXISTS instances (
    sop_uid TEXT PRIMARY KEY,
    series_uid TEXT NOT NULL REFERENCES series (series_uid),
    study_uid TEXT NOT NULL,
    hospital TEXT NOT NULL,
    sop_class_uid TEXT NOT NULL,
    instance_number INTEGER,
    transfer_syntax_uid TEXT NOT NULL,
    rows_ INTEGER,
    columns_ INTEGER,
    number_of_frames INTEGER,
    object_key TEXT NOT NULL,
    size BIGINT NOT NULL,
    sha256 TEXT NOT NULL,
    metadata TEXT NOT NULL,
    indexed_at DOUBLE PRECISION NOT NULL
);
CREATE INDEX IF NOT EXISTS instances_series ON instances (series_uid, instance_number);
CREATE INDEX IF NOT EXISTS instances_study ON instances (study_uid);
CREATE TABLE IF NOT EXISTS instance_versions (
    sop_uid TEXT NOT NULL,
    sha256 TEXT NOT NULL,
    object_key TEXT NOT NULL,
    size BIGINT NOT NULL,
    replaced_at DOUBLE PRECISION NOT NULL,
    PRIMARY KEY (sop_uid, sha256)
);
"""


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

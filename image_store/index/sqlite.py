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
from image_store.index.sqlbase import SqlIndex
from image_store.sqlite_db import SqliteDatabase

SCHEMA = """
CREATE TABLE IF NOT EXISTS patients (
    pk INTEGER PRIMARY KEY,
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
CREATE INDEX IF NOT EXISTS patients_name ON patients (name_alpha COLLATE NOCASE);
CREATE TABLE IF NOT EXISTS studies (
    study_uid TEXT PRIMARY KEY,
    hospital TEXT NOT NULL,
    patient_pk INTEGER NOT NULL REFERENCES patients (pk),
    study_date TEXT NOT NULL,
    study_time TEXT NOT NULL,
    accession_number TEXT NOT NULL,
    study_description TEXT NOT NULL,
    referring_physician TEXT NOT NULL,
    study_id TEXT NOT NULL,
    modalities TEXT NOT NULL,
    number_of_series INTEGER NOT NULL,
    number_of_instances INTEGER NOT NULL,
    updated_at REAL NOT NULL
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
    size INTEGER NOT NULL,
    sha256 TEXT NOT NULL,
    metadata TEXT NOT NULL,
    indexed_at REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS instances_series ON instances (series_uid, instance_number);
CREATE INDEX IF NOT EXISTS instances_study ON instances (study_uid);
CREATE TABLE IF NOT EXISTS instance_versions (
    sop_uid TEXT NOT NULL,
    sha256 TEXT NOT NULL,
    object_key TEXT NOT NULL,
    size INTEGER NOT NULL,
    replaced_at REAL NOT NULL,
    PRIMARY KEY (sop_uid, sha256)
);
"""


class SqliteIndex(SqlIndex):
    """Index of patients, studies, series and instances in one SQLite file."""

    dialect = SQLITE

    def __init__(self, path: Path) -> None:
        self.db = SqliteDatabase(path, SCHEMA)
        self.path = self.db.path

    def _conn(self) -> sqlite3.Connection:
        return self.db.conn()

    @contextmanager
    def _tx(self) -> Iterator[sqlite3.Connection]:
        with self.db.tx() as conn:
            yield conn

    def close(self) -> None:
        self.db.close()

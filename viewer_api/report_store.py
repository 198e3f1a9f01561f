"""Where reports are kept: their list in the region's state database (the index's, SQLite or
PostgreSQL); the bytes live in the object store."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from image_store.state.db import StateDb, as_db
from image_store.state.records import Report

SCHEMA = """
CREATE TABLE IF NOT EXISTS reports (
    id TEXT PRIMARY KEY,
    study_uid TEXT NOT NULL,
    hospital TEXT NOT NULL,
    media_type TEXT NOT NULL,
    title TEXT NOT NULL,
    status TEXT NOT NULL,
    mutual_recognition INTEGER NOT NULL,
    object_key TEXT NOT NULL,
    size INTEGER NOT NULL,
    sha256 TEXT NOT NULL,
    created_by TEXT NOT NULL,
    created_at REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS reports_study ON reports (study_uid, created_at);
"""


_COLS = (
    "id, study_uid, hospital, media_type, title, status, mutual_recognition, object_key, size, "
    "sha256, created_by, created_at"
)


def _report(r: Any) -> Report:
    return Report(
        str(r[0]),
        str(r[1]),
        str(r[2]),
        str(r[3]),
        str(r[4]),
        str(r[5]),
        bool(r[6]),
        str(r[7]),
        int(r[8]),
        str(r[9]),
        str(r[10]),
        float(r[11]),
    )


class SqlReports:
    def __init__(self, db: StateDb | Path) -> None:
        self.db = as_db(db)
        self.db.ensure_schema(SCHEMA)

    def add(self, report: Report) -> None:
        with self.db.tx("reports") as conn:
            conn.execute(
                f"INSERT INTO reports ({_COLS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    report.id,
                    report.study_uid,
                    report.hospital,
                    report.media_type,
                    report.title,
                    report.status,
                    int(report.mutual_recognition),
                    report.object_key,
                    report.size,
                    report.sha256,
                    report.created_by,
                    report.created_at,
                ),
            )

    def of_study(self, study_uid: str) -> list[Report]:
        rows = self.db.conn().execute(
            f"SELECT {_COLS} FROM reports WHERE study_uid = ? ORDER BY created_at", (study_uid,)
        )
        return [_report(r) for r in rows]

    def get(self, report_id: str) -> Report | None:
        row = (
            self.db.conn()
            .execute(f"SELECT {_COLS} FROM reports WHERE id = ?", (report_id,))
            .fetchone()
        )
        return None if row is None else _report(row)

    def close(self) -> None:
        self.db.close()


def report_status(reports: list[Report]) -> tuple[str, bool]:
    """('final' | 'preliminary' | 'none', eligible for mutual recognition) of a study."""
    if not reports:
        return "none", False
    status = "final" if any(r.status == "final" for r in reports) else "preliminary"
    return status, any(r.mutual_recognition and r.status == "final" for r in reports)

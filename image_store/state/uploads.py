"""Resumable upload sessions' state in the region's database: what each session declared, how
many of its bytes the region holds, which request may write to it now (a lease), and its
outcome once finalized. The bytes themselves are objects in the region's store
(viewer_api.upload_sessions), so any API process sharing the database and the store resumes a
session another one opened.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from image_store.state.db import StateDb, as_db

SCHEMA = """
CREATE TABLE IF NOT EXISTS upload_sessions (
    session TEXT PRIMARY KEY,
    hospital TEXT NOT NULL,
    sop_uid TEXT NOT NULL,
    size INTEGER NOT NULL,
    sha256 TEXT NOT NULL,
    created REAL NOT NULL,
    received INTEGER NOT NULL DEFAULT 0,
    chunks TEXT NOT NULL DEFAULT '[]',
    result TEXT,
    writer TEXT,
    writer_until REAL
);
CREATE INDEX IF NOT EXISTS upload_sessions_hospital ON upload_sessions (hospital);
CREATE INDEX IF NOT EXISTS upload_sessions_created ON upload_sessions (created)
"""
_COLUMNS = "session, hospital, sop_uid, size, sha256, created, received, chunks, result"


@dataclass(frozen=True, slots=True)
class UploadSession:
    session: str
    hospital: str
    sop_uid: str
    size: int
    sha256: str
    created: float
    received: int = 0
    """Bytes the region holds, from the start of the instance..."""
    chunks: tuple[str, ...] = ()
    """...in these objects, in order."""
    result: dict[str, Any] | None = None
    """The instance's outcome once finalized."""


def _session(row: Any) -> UploadSession:
    return UploadSession(
        str(row[0]),
        str(row[1]),
        str(row[2]),
        int(row[3]),
        str(row[4]),
        float(row[5]),
        int(row[6]),
        tuple(json.loads(row[7])),
        json.loads(row[8]) if row[8] is not None else None,
    )


class SqlUploadSessions:
    def __init__(self, db: StateDb | Path) -> None:
        self.db = as_db(db)
        self.db.ensure_schema(SCHEMA)

    def add(self, s: UploadSession) -> None:
        with self.db.tx("upload_sessions") as conn:
            conn.execute(
                f"INSERT INTO upload_sessions ({_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",  # noqa: S608
                (
                    s.session,
                    s.hospital,
                    s.sop_uid,
                    s.size,
                    s.sha256,
                    s.created,
                    s.received,
                    json.dumps(list(s.chunks)),
                    None,
                ),
            )

    def get(self, hospital: str, session: str) -> UploadSession | None:
        """The session, if it is ``hospital``'s."""
        row = (
            self.db.conn()
            .execute(
                f"SELECT {_COLUMNS} FROM upload_sessions WHERE session = ? AND hospital = ?",  # noqa: S608
                (session, hospital),
            )
            .fetchone()
        )
        return _session(row) if row is not None else None

    def of_hospital(self, hospital: str) -> list[UploadSession]:
        rows = self.db.conn().execute(
            f"SELECT {_COLUMNS} FROM upload_sessions WHERE hospital = ? ORDER BY created",  # noqa: S608
            (hospital,),
        )
        return [_session(r) for r in rows]

    def opened_before(self, t: float) -> list[UploadSession]:
        rows = self.db.conn().execute(
            f"SELECT {_COLUMNS} FROM upload_sessions WHERE created <= ? ORDER BY created",  # noqa: S608
            (t,),
        )
        return [_session(r) for r in rows]

    def lease(self, session: str, writer: str, now: float, until: float) -> bool:
        """Make ``writer`` the session's one writer until ``until``; False while another
        writer's lease runs (or the session is gone)."""
        with self.db.tx("upload_sessions") as conn:
            cur = conn.execute(
                "UPDATE upload_sessions SET writer = ?, writer_until = ? WHERE session = ? "
                "AND (writer IS NULL OR writer = ? OR writer_until <= ?)",
                (writer, until, session, writer, now),
            )
            return int(cur.rowcount) == 1

    def release(self, session: str, writer: str) -> None:
        with self.db.tx("upload_sessions") as conn:
            conn.execute(
                "UPDATE upload_sessions SET writer = NULL, writer_until = NULL "
                "WHERE session = ? AND writer = ?",
                (session, writer),
            )

    def advance(self, session: str, writer: str, old: int, new: int, chunk: str) -> bool:
        """Record ``new`` bytes received where ``old`` were, the bytes between them in the
        object ``chunk``, if ``writer`` holds the lease and nothing moved the offset meanwhile."""
        with self.db.tx("upload_sessions") as conn:
            row = conn.execute(
                "SELECT chunks FROM upload_sessions WHERE session = ? AND writer = ? "
                "AND received = ? AND result IS NULL",
                (session, writer, old),
            ).fetchone()
            if row is None:
                return False
            chunks = [*json.loads(row[0]), chunk]
            conn.execute(
                "UPDATE upload_sessions SET received = ?, chunks = ? WHERE session = ?",
                (new, json.dumps(chunks), session),
            )
            return True

    def settle(self, session: str, result: dict[str, Any]) -> None:
        with self.db.tx("upload_sessions") as conn:
            conn.execute(
                "UPDATE upload_sessions SET result = ? WHERE session = ?",
                (json.dumps(result), session),
            )

    def delete(self, session: str) -> None:
        with self.db.tx("upload_sessions") as conn:
            conn.execute("DELETE FROM upload_sessions WHERE session = ?", (session,))

    def close(self) -> None:
        self.db.close()

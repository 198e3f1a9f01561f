"""Cloud-film share links: which study a link opens, until when, and whether it was revoked."""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from image_store.sqlite_db import SqliteDatabase
from viewer_api.auth import new_link_id

SCHEMA = """
CREATE TABLE IF NOT EXISTS share_links (
    id TEXT PRIMARY KEY,
    study_uid TEXT NOT NULL,
    hospital TEXT NOT NULL,
    created_by TEXT NOT NULL,
    created_at REAL NOT NULL,
    expires_at REAL NOT NULL,
    revoked_at REAL,
    views INTEGER NOT NULL DEFAULT 0
);
CREATE INDEX IF NOT EXISTS share_links_study ON share_links (study_uid);
"""


@dataclass(frozen=True, slots=True)
class ShareLink:
    id: str
    study_uid: str
    hospital: str
    created_by: str
    created_at: float
    expires_at: float
    revoked_at: float | None
    views: int

    def state(self, now: float | None = None) -> str:
        """'active', 'expired' or 'revoked'."""
        if self.revoked_at is not None:
            return "revoked"
        if self.expires_at <= (time.time() if now is None else now):
            return "expired"
        return "active"


def _link(row: Any) -> ShareLink:
    return ShareLink(
        id=str(row[0]),
        study_uid=str(row[1]),
        hospital=str(row[2]),
        created_by=str(row[3]),
        created_at=float(row[4]),
        expires_at=float(row[5]),
        revoked_at=None if row[6] is None else float(row[6]),
        views=int(row[7]),
    )


class SqliteShareLinks:
    def __init__(self, path: Path) -> None:
        self.db = SqliteDatabase(path, SCHEMA)

    def create(
        self, study_uid: str, hospital: str, created_by: str, expires_at: float
    ) -> ShareLink:
        link = ShareLink(
            id=new_link_id(),
            study_uid=study_uid,
            hospital=hospital,
            created_by=created_by,
            created_at=time.time(),
            expires_at=expires_at,
            revoked_at=None,
            views=0,
        )
        with self.db.tx() as conn:
            conn.execute(
                "INSERT INTO share_links (id, study_uid, hospital, created_by, created_at, "
                "expires_at) VALUES (?, ?, ?, ?, ?, ?)",
                (link.id, study_uid, hospital, created_by, link.created_at, expires_at),
            )
        return link

    def get(self, link_id: str) -> ShareLink | None:
        row = (
            self.db.conn()
            .execute(
                "SELECT id, study_uid, hospital, created_by, created_at, expires_at, revoked_at, "
                "views FROM share_links WHERE id = ?",
                (link_id,),
            )
            .fetchone()
        )
        return None if row is None else _link(row)

    def revoke(self, link_id: str) -> bool:
        """Revoke a link; False when there is no such link."""
        with self.db.tx() as conn:
            cur = conn.execute(
                "UPDATE share_links SET revoked_at = coalesce(revoked_at, ?) WHERE id = ?",
                (time.time(), link_id),
            )
            return cur.rowcount == 1

    def count_view(self, link_id: str) -> None:
        with self.db.tx() as conn:
            conn.execute("UPDATE share_links SET views = views + 1 WHERE id = ?", (link_id,))

    def close(self) -> None:
        self.db.close()

"""Revoked bearer tokens in the region's database: a token id (``jti``) revoked on one API
process is refused by every process at its next request."""

from __future__ import annotations

import re
import time
from collections.abc import Callable
from pathlib import Path

from image_store.state.db import StateDb, as_db

SCHEMA = """
CREATE TABLE IF NOT EXISTS revoked_tokens (
    jti TEXT PRIMARY KEY,
    expires_at REAL NOT NULL
);
"""
JTI = re.compile(r"[0-9a-f]{16}")


class SqlRevocations:
    def __init__(self, db: StateDb | Path, *, clock: Callable[[], float] = time.time) -> None:
        self.db = as_db(db)
        self.clock = clock
        self.db.ensure_schema(SCHEMA)

    def revoke(self, jti: str, expires_at: float) -> None:
        if not JTI.fullmatch(jti):
            raise ValueError("a token id (jti) is 16 hex digits")
        with self.db.tx("revoked_tokens") as conn:
            conn.execute("DELETE FROM revoked_tokens WHERE expires_at <= ?", (self.clock(),))
            conn.execute(
                "INSERT INTO revoked_tokens (jti, expires_at) VALUES (?, ?) ON CONFLICT (jti) "
                "DO UPDATE SET expires_at = excluded.expires_at",
                (jti, float(expires_at)),
            )

    def __contains__(self, jti: object) -> bool:
        if not isinstance(jti, str) or not JTI.fullmatch(jti):
            return False
        row = (
            self.db.conn()
            .execute(
                "SELECT 1 FROM revoked_tokens WHERE jti = ? AND expires_at > ?",
                (jti, self.clock()),
            )
            .fetchone()
        )
        return row is not None

    def close(self) -> None:
        self.db.close()

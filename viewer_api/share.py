"""Cloud-film share links: what a link opens (one study, or all of a patient's studies), for
whom, until when, whether it allows downloads, its extraction code and lockout, and whether it
was revoked.

A link is created by hospital staff for the patient (``audience='patient'``: the QR code on the
printed report) or by the patient, from such a link, for a doctor (``audience='doctor'``, with
``parent_id`` naming the patient's link). A doctor's link never reaches further than its parent:
it dies with it and cannot create links of its own.

Extraction codes (提取码, 4-6 digits) are kept as scrypt hashes. Guessing is bounded by the
lockout, not by the hash: after ``LOCK_AFTER`` wrong codes in a row the link is locked for
``LOCK_S`` seconds, and after ``BLOCK_AFTER`` wrong codes in all it is blocked for good (the
hospital issues a new one), so a 4-digit code is guessed with probability at most 1/1000.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import re
import secrets
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from image_store.state.db import Conn, StateDb, as_db
from image_store.state.records import BLOCK_AFTER, Audience, CodeCheck, Scope, ShareLink
from viewer_api.auth import new_link_id

LOCK_AFTER = 5
LOCK_S = 15 * 60
CODE_RE = re.compile(r"\d{4,6}")


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

# columns added after the first release; added to an existing database on open
ADDED_COLUMNS = (
    ("scope", "TEXT NOT NULL DEFAULT 'study'"),
    ("patient_id", "TEXT NOT NULL DEFAULT ''"),
    ("issuer", "TEXT NOT NULL DEFAULT ''"),
    ("allow_download", "INTEGER NOT NULL DEFAULT 0"),
    ("code_hash", "TEXT"),
    ("failed_codes", "INTEGER NOT NULL DEFAULT 0"),
    ("failed_total", "INTEGER NOT NULL DEFAULT 0"),
    ("locked_until", "REAL"),
    ("audience", "TEXT NOT NULL DEFAULT 'patient'"),
    ("parent_id", "TEXT"),
)
_COLS = (
    "id, study_uid, hospital, created_by, created_at, expires_at, revoked_at, views, scope, "
    "patient_id, issuer, allow_download, code_hash, failed_codes, failed_total, locked_until, "
    "audience, parent_id"
)


def _scrypt(code: str, salt: bytes) -> bytes:
    return hashlib.scrypt(code.encode(), salt=salt, n=2**14, r=8, p=1, dklen=32)


def hash_code(code: str) -> str:
    salt = secrets.token_bytes(16)
    digest = _scrypt(code, salt)
    return "scrypt$" + base64.b64encode(salt).decode() + "$" + base64.b64encode(digest).decode()


def code_matches(code: str, stored: str) -> bool:
    kind, salt, digest = stored.split("$")
    if kind != "scrypt":
        return False
    return hmac.compare_digest(_scrypt(code, base64.b64decode(salt)), base64.b64decode(digest))


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
        scope="patient" if row[8] == "patient" else "study",
        patient_id=str(row[9]),
        issuer=str(row[10]),
        allow_download=bool(row[11]),
        code_hash=None if row[12] is None else str(row[12]),
        failed_codes=int(row[13]),
        failed_total=int(row[14]),
        locked_until=None if row[15] is None else float(row[15]),
        audience="doctor" if row[16] == "doctor" else "patient",
        parent_id=None if row[17] is None else str(row[17]),
    )


class SqlShareLinks:
    """Share links in the state database (see image_store.state.db); ``clock`` gives the time
    links are created and revoked at and checked against."""

    def __init__(self, db: StateDb | Path, *, clock: Callable[[], float] = time.time) -> None:
        self.db = as_db(db)
        self.clock = clock
        self.db.ensure_schema(SCHEMA)
        self._migrate()

    def _migrate(self) -> None:
        self.db.add_columns("share_links", ADDED_COLUMNS)
        self.db.ensure_schema(
            "CREATE INDEX IF NOT EXISTS share_links_parent ON share_links (parent_id)"
        )

    def create(
        self,
        study_uid: str,
        hospital: str,
        created_by: str,
        expires_at: float,
        *,
        scope: Scope = "study",
        patient_id: str = "",
        issuer: str = "",
        allow_download: bool = False,
        code: str | None = None,
        audience: Audience = "patient",
        parent_id: str | None = None,
    ) -> ShareLink:
        """A new link; ``code`` (4-6 digits) is hashed here and never stored in clear."""
        if code is not None and not CODE_RE.fullmatch(code):
            raise ValueError("an extraction code is 4 to 6 digits")
        link = ShareLink(
            id=new_link_id(),
            study_uid=study_uid,
            hospital=hospital,
            created_by=created_by,
            created_at=self.clock(),
            expires_at=expires_at,
            revoked_at=None,
            views=0,
            scope=scope,
            patient_id=patient_id,
            issuer=issuer,
            allow_download=allow_download,
            code_hash=None if code is None else hash_code(code),
            audience=audience,
            parent_id=parent_id,
        )
        with self.db.tx("share_links") as conn:
            conn.execute(
                "INSERT INTO share_links (id, study_uid, hospital, created_by, created_at, "
                "expires_at, scope, patient_id, issuer, allow_download, code_hash, audience, "
                "parent_id) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    link.id,
                    study_uid,
                    hospital,
                    created_by,
                    link.created_at,
                    expires_at,
                    scope,
                    patient_id,
                    issuer,
                    int(allow_download),
                    link.code_hash,
                    audience,
                    parent_id,
                ),
            )
        return link

    def get(self, link_id: str) -> ShareLink | None:
        return self._get(self.db.conn(), link_id)

    @staticmethod
    def _get(conn: Conn, link_id: str) -> ShareLink | None:
        row = conn.execute(f"SELECT {_COLS} FROM share_links WHERE id = ?", (link_id,)).fetchone()
        return None if row is None else _link(row)

    def children(self, parent_id: str) -> list[ShareLink]:
        """The links the patient made from ``parent_id`` for doctors, newest first."""
        rows = self.db.conn().execute(
            f"SELECT {_COLS} FROM share_links WHERE parent_id = ? ORDER BY created_at DESC",
            (parent_id,),
        )
        return [_link(r) for r in rows]

    def revoke(self, link_id: str) -> bool:
        """Revoke a link; False when there is no such link."""
        with self.db.tx("share_links") as conn:
            cur = conn.execute(
                "UPDATE share_links SET revoked_at = coalesce(revoked_at, ?) WHERE id = ?",
                (self.clock(), link_id),
            )
            return bool(cur.rowcount == 1)

    def count_view(self, link_id: str) -> None:
        with self.db.tx("share_links") as conn:
            conn.execute("UPDATE share_links SET views = views + 1 WHERE id = ?", (link_id,))

    def try_code(self, link_id: str, code: str, now: float | None = None) -> CodeCheck:
        """Check an extraction code and count a wrong one. The check runs inside the write
        transaction, so concurrent guesses are counted one by one, never past the lockout."""
        now = self.clock() if now is None else now
        with self.db.tx("share_links") as conn:
            link = self._get(conn, link_id)
            if link is None or link.code_hash is None:
                return CodeCheck("ok")
            if link.failed_total >= BLOCK_AFTER:
                return CodeCheck("blocked")
            if link.locked(now):
                return CodeCheck("locked", locked_until=link.locked_until)
            if CODE_RE.fullmatch(code) and code_matches(code, link.code_hash):
                conn.execute(
                    "UPDATE share_links SET failed_codes = 0, locked_until = NULL WHERE id = ?",
                    (link_id,),
                )
                return CodeCheck("ok")
            failed, total = link.failed_codes + 1, link.failed_total + 1
            until = now + LOCK_S if failed >= LOCK_AFTER else None
            conn.execute(
                "UPDATE share_links SET failed_codes = ?, failed_total = ?, locked_until = ? "
                "WHERE id = ?",
                (0 if until else failed, total, until, link_id),
            )
        if total >= BLOCK_AFTER:
            return CodeCheck("blocked")
        if until is not None:
            return CodeCheck("locked", locked_until=until)
        return CodeCheck("wrong", tries_left=LOCK_AFTER - failed)

    def unlock(self, link_id: str) -> bool:
        """Clear a link's lockout (its hospital's staff, after checking who asks)."""
        with self.db.tx("share_links") as conn:
            cur = conn.execute(
                "UPDATE share_links SET failed_codes = 0, failed_total = 0, locked_until = NULL "
                "WHERE id = ?",
                (link_id,),
            )
            return bool(cur.rowcount == 1)

    def close(self) -> None:
        self.db.close()

"""Consent grants: a patient allows a hospital (or one clinician there) to read their studies
held at other hospitals, for a time, all studies or one; revocable. Kept per person (the master
patient index's keyed hash), so a grant covers the person's records at every hospital. Kept
beside the index: the API and the gateways' query/retrieve both check them.
"""

from __future__ import annotations

import base64
import secrets
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from image_store.sqlite_db import SqliteDatabase

SCHEMA = """
CREATE TABLE IF NOT EXISTS consents (
    id TEXT PRIMARY KEY,
    person_key TEXT NOT NULL,
    grantee_hospital TEXT NOT NULL,
    grantee_subject TEXT NOT NULL,
    study_uid TEXT NOT NULL,
    created_by TEXT NOT NULL,
    created_at REAL NOT NULL,
    expires_at REAL NOT NULL,
    revoked_at REAL
);
CREATE INDEX IF NOT EXISTS consents_person ON consents (person_key, grantee_hospital);
"""


@dataclass(frozen=True, slots=True)
class Consent:
    id: str
    person_key: str
    grantee_hospital: str
    grantee_subject: str
    """'' = anyone at the grantee hospital."""
    study_uid: str
    """'' = all of the person's studies."""
    created_by: str
    created_at: float
    expires_at: float
    revoked_at: float | None

    def active(self, now: float | None = None) -> bool:
        return self.revoked_at is None and self.expires_at > (time.time() if now is None else now)

    def covers(self, hospital: str, subject: str, study_uid: str, now: float | None = None) -> bool:
        return (
            self.active(now)
            and self.grantee_hospital == hospital
            and self.grantee_subject in ("", subject)
            and self.study_uid in ("", study_uid)
        )

    def as_json(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "grantee_hospital": self.grantee_hospital,
            "grantee_subject": self.grantee_subject,
            "study_uid": self.study_uid,
            "created_by": self.created_by,
            "created_at": self.created_at,
            "expires_at": self.expires_at,
            "revoked": self.revoked_at is not None,
            "active": self.active(),
        }


_COLS = (
    "id, person_key, grantee_hospital, grantee_subject, study_uid, created_by, created_at, "
    "expires_at, revoked_at"
)


def _consent(r: Any) -> Consent:
    return Consent(
        str(r[0]),
        str(r[1]),
        str(r[2]),
        str(r[3]),
        str(r[4]),
        str(r[5]),
        float(r[6]),
        float(r[7]),
        None if r[8] is None else float(r[8]),
    )


class SqliteConsents:
    def __init__(self, path: Path) -> None:
        self.db = SqliteDatabase(path, SCHEMA)

    def grant(
        self,
        person_key: str,
        grantee_hospital: str,
        *,
        grantee_subject: str = "",
        study_uid: str = "",
        created_by: str,
        ttl_s: int,
    ) -> Consent:
        now = time.time()
        consent = Consent(
            base64.urlsafe_b64encode(secrets.token_bytes(16)).rstrip(b"=").decode(),
            person_key,
            grantee_hospital,
            grantee_subject,
            study_uid,
            created_by,
            now,
            now + ttl_s,
            None,
        )
        with self.db.tx() as conn:
            conn.execute(
                f"INSERT INTO consents ({_COLS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?, NULL)",
                (
                    consent.id,
                    person_key,
                    grantee_hospital,
                    grantee_subject,
                    study_uid,
                    created_by,
                    consent.created_at,
                    consent.expires_at,
                ),
            )
        return consent

    def get(self, consent_id: str) -> Consent | None:
        row = (
            self.db.conn()
            .execute(f"SELECT {_COLS} FROM consents WHERE id = ?", (consent_id,))
            .fetchone()
        )
        return None if row is None else _consent(row)

    def revoke(self, consent_id: str) -> bool:
        with self.db.tx() as conn:
            cur = conn.execute(
                "UPDATE consents SET revoked_at = ? WHERE id = ? AND revoked_at IS NULL",
                (time.time(), consent_id),
            )
            return bool(cur.rowcount)

    def of_person(self, person_key: str) -> list[Consent]:
        rows = self.db.conn().execute(
            f"SELECT {_COLS} FROM consents WHERE person_key = ? ORDER BY created_at",
            (person_key,),
        )
        return [_consent(r) for r in rows]

    def covering(
        self, person_key: str, hospital: str, subject: str, study_uid: str
    ) -> Consent | None:
        """An active grant letting ``subject`` at ``hospital`` read ``study_uid``, if any."""
        rows = self.db.conn().execute(
            f"SELECT {_COLS} FROM consents WHERE person_key = ? AND grantee_hospital = ? "
            "AND revoked_at IS NULL AND expires_at > ?",
            (person_key, hospital, time.time()),
        )
        for r in rows:
            consent = _consent(r)
            if consent.covers(hospital, subject, study_uid):
                return consent
        return None

    def close(self) -> None:
        self.db.close()

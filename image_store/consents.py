"""Consent grants: a patient allows a hospital (or one clinician there) to read their studies
held at other hospitals, for a time, all studies or one; revocable. Kept per person (the master
patient index's keyed hash), so a grant covers the person's records at every hospital. Kept
beside the index: the API and the gateways' query/retrieve both check them.

Consent comes from the patient. Besides grants, this keeps what lets staff obtain one:
requests a hospital's staff send (the patient approves or declines them on their own link) and
one-time consent codes (``CODE_DIGITS`` digits, single use, ``CODE_TTL_S`` seconds, kept as
scrypt hashes; ``CODE_MAX_TRIES`` wrong entries burn the person's live code) that the patient's
page shows and a clinician enters.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from image_store.state.db import StateDb, as_db

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
CREATE TABLE IF NOT EXISTS consent_requests (
    id TEXT PRIMARY KEY,
    person_key TEXT NOT NULL,
    hospital TEXT NOT NULL,
    subject TEXT NOT NULL,
    study_uid TEXT NOT NULL,
    requested_by TEXT NOT NULL,
    ttl_s INTEGER NOT NULL,
    created_at REAL NOT NULL,
    expires_at REAL NOT NULL,
    state TEXT NOT NULL,
    decided_at REAL,
    consent_id TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS consent_requests_person ON consent_requests (person_key, state);
CREATE TABLE IF NOT EXISTS consent_codes (
    person_key TEXT PRIMARY KEY,
    code_hash TEXT NOT NULL,
    bind_subject INTEGER NOT NULL,
    study_uid TEXT NOT NULL,
    ttl_s INTEGER NOT NULL,
    created_by TEXT NOT NULL,
    created_at REAL NOT NULL,
    expires_at REAL NOT NULL,
    failures INTEGER NOT NULL,
    used_at REAL
);
"""

CODE_DIGITS = 8
CODE_TTL_S = 10 * 60
CODE_MAX_TRIES = 5
"""Wrong entries of a person's live consent code after which it is burnt."""
REQUEST_TTL_S = 7 * 86400
"""How long a consent request waits for the patient."""


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


@dataclass(frozen=True, slots=True)
class ConsentRequest:
    """A hospital's staff asking the patient for consent; the patient approves or declines."""

    id: str
    person_key: str
    hospital: str
    subject: str
    """'' = for anyone at the hospital."""
    study_uid: str
    requested_by: str
    ttl_s: int
    """Lifetime of the grant an approval makes."""
    created_at: float
    expires_at: float
    state: str
    """'pending', 'approved', 'declined' (or 'expired' when read after ``expires_at``)."""
    decided_at: float | None
    consent_id: str

    def as_json(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "hospital": self.hospital,
            "subject": self.subject,
            "study_uid": self.study_uid,
            "requested_by": self.requested_by,
            "ttl_hours": self.ttl_s // 3600,
            "created_at": self.created_at,
            "expires_at": self.expires_at,
            "state": self.state,
            "consent_id": self.consent_id,
        }


@dataclass(frozen=True, slots=True)
class CodeOutcome:
    """What entering a consent code did: the grant it made, or why none (``reason``:
    'none' no live code, 'wrong' with ``tries_left``, 'burnt' too many wrong entries)."""

    consent: Consent | None
    reason: str = ""
    tries_left: int = 0


_REQ_COLS = (
    "id, person_key, hospital, subject, study_uid, requested_by, ttl_s, created_at, "
    "expires_at, state, decided_at, consent_id"
)


def _request(r: Any, now: float) -> ConsentRequest:
    state = str(r[9])
    if state == "pending" and float(r[8]) <= now:
        state = "expired"
    return ConsentRequest(
        str(r[0]),
        str(r[1]),
        str(r[2]),
        str(r[3]),
        str(r[4]),
        str(r[5]),
        int(r[6]),
        float(r[7]),
        float(r[8]),
        state,
        None if r[10] is None else float(r[10]),
        str(r[11]),
    )


def _new_id() -> str:
    return base64.urlsafe_b64encode(secrets.token_bytes(16)).rstrip(b"=").decode()


def _scrypt(code: str, salt: bytes) -> bytes:
    return hashlib.scrypt(code.encode(), salt=salt, n=2**14, r=8, p=1, dklen=32)


def _hash_code(code: str) -> str:
    salt = secrets.token_bytes(16)
    return f"{base64.b64encode(salt).decode()}${base64.b64encode(_scrypt(code, salt)).decode()}"


def _code_matches(code: str, stored: str) -> bool:
    salt, digest = stored.split("$")
    return hmac.compare_digest(_scrypt(code, base64.b64decode(salt)), base64.b64decode(digest))


class SqlConsents:
    """Consents, requests and codes in the state database (see image_store.state.db)."""

    def __init__(self, db: StateDb | Path, *, clock: Callable[[], float] = time.time) -> None:
        self.db = as_db(db)
        self.db.ensure_schema(SCHEMA)
        self.clock = clock

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
        now = self.clock()
        consent = Consent(
            _new_id(),
            person_key,
            grantee_hospital,
            grantee_subject,
            study_uid,
            created_by,
            now,
            now + ttl_s,
            None,
        )
        with self.db.tx("consents") as conn:
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
        with self.db.tx("consents") as conn:
            cur = conn.execute(
                "UPDATE consents SET revoked_at = ? WHERE id = ? AND revoked_at IS NULL",
                (self.clock(), consent_id),
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
        now = self.clock()
        rows = self.db.conn().execute(
            f"SELECT {_COLS} FROM consents WHERE person_key = ? AND grantee_hospital = ? "
            "AND revoked_at IS NULL AND expires_at > ?",
            (person_key, hospital, now),
        )
        for r in rows:
            consent = _consent(r)
            if consent.covers(hospital, subject, study_uid, now):
                return consent
        return None

    # -- requests: staff ask, the patient decides ------------------------------------------

    def request(
        self,
        person_key: str,
        hospital: str,
        *,
        subject: str = "",
        study_uid: str = "",
        requested_by: str,
        ttl_s: int,
    ) -> ConsentRequest:
        """A pending request for a grant to ``hospital`` (``subject`` there, or anyone)."""
        now = self.clock()
        req = ConsentRequest(
            _new_id(),
            person_key,
            hospital,
            subject,
            study_uid,
            requested_by,
            ttl_s,
            now,
            now + REQUEST_TTL_S,
            "pending",
            None,
            "",
        )
        with self.db.tx("consents") as conn:
            conn.execute(
                f"INSERT INTO consent_requests ({_REQ_COLS}) "
                "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, 'pending', NULL, '')",
                (
                    req.id,
                    person_key,
                    hospital,
                    subject,
                    study_uid,
                    requested_by,
                    ttl_s,
                    now,
                    req.expires_at,
                ),
            )
        return req

    def get_request(self, request_id: str) -> ConsentRequest | None:
        row = (
            self.db.conn()
            .execute(f"SELECT {_REQ_COLS} FROM consent_requests WHERE id = ?", (request_id,))
            .fetchone()
        )
        return None if row is None else _request(row, self.clock())

    def requests_of(self, person_key: str) -> list[ConsentRequest]:
        """The person's requests, newest first."""
        rows = self.db.conn().execute(
            f"SELECT {_REQ_COLS} FROM consent_requests WHERE person_key = ? "
            "ORDER BY created_at DESC",
            (person_key,),
        )
        now = self.clock()
        return [_request(r, now) for r in rows]

    def decide(self, request_id: str, *, approve: bool, by: str) -> ConsentRequest | None:
        """Approve (a grant as requested is made, created by ``by``) or decline a pending,
        unexpired request, in one transaction; None when there is no such request."""
        now = self.clock()
        with self.db.tx("consents") as conn:
            row = conn.execute(
                f"SELECT {_REQ_COLS} FROM consent_requests WHERE id = ? AND state = 'pending' "
                "AND expires_at > ?",
                (request_id, now),
            ).fetchone()
            if row is None:
                return None
            req = _request(row, now)
            consent_id = ""
            if approve:
                consent_id = _new_id()
                conn.execute(
                    f"INSERT INTO consents ({_COLS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?, NULL)",
                    (
                        consent_id,
                        req.person_key,
                        req.hospital,
                        req.subject,
                        req.study_uid,
                        f"{by} request:{req.id}",
                        now,
                        now + req.ttl_s,
                    ),
                )
            state = "approved" if approve else "declined"
            conn.execute(
                "UPDATE consent_requests SET state = ?, decided_at = ?, consent_id = ? "
                "WHERE id = ?",
                (state, now, consent_id, request_id),
            )
        return self.get_request(request_id)

    # -- one-time codes: the patient shows one, a clinician enters it -----------------------

    def issue_code(
        self,
        person_key: str,
        *,
        bind_subject: bool,
        study_uid: str = "",
        ttl_s: int,
        created_by: str,
    ) -> tuple[str, float]:
        """A new one-time code for the person (replacing any live one): (code, expires_at).
        Entered, it grants the entering clinician's hospital (and only that clinician with
        ``bind_subject``) ``study_uid`` or all studies for ``ttl_s`` seconds."""
        code = "".join(secrets.choice("0123456789") for _ in range(CODE_DIGITS))
        now = self.clock()
        with self.db.tx("consents") as conn:
            conn.execute(
                "INSERT INTO consent_codes (person_key, code_hash, bind_subject, study_uid, "
                "ttl_s, created_by, created_at, expires_at, failures, used_at) "
                "VALUES (?, ?, ?, ?, ?, ?, ?, ?, 0, NULL) ON CONFLICT (person_key) DO UPDATE SET "
                "code_hash = excluded.code_hash, bind_subject = excluded.bind_subject, "
                "study_uid = excluded.study_uid, ttl_s = excluded.ttl_s, "
                "created_by = excluded.created_by, created_at = excluded.created_at, "
                "expires_at = excluded.expires_at, failures = 0, used_at = NULL",
                (
                    person_key,
                    _hash_code(code),
                    int(bind_subject),
                    study_uid,
                    ttl_s,
                    created_by,
                    now,
                    now + CODE_TTL_S,
                ),
            )
        return code, now + CODE_TTL_S

    def redeem_code(
        self, person_key: str, code: str, *, hospital: str, subject: str, by: str
    ) -> CodeOutcome:
        """Enter the person's live code for ``hospital``/``subject``: a match makes the grant
        and uses the code up; a wrong code counts against it (burnt after ``CODE_MAX_TRIES``),
        all in one write transaction so parallel guesses cannot overrun the count."""
        now = self.clock()
        with self.db.tx("consents") as conn:
            row = conn.execute(
                "SELECT code_hash, bind_subject, study_uid, ttl_s, created_by, failures "
                "FROM consent_codes WHERE person_key = ? AND used_at IS NULL AND expires_at > ?",
                (person_key, now),
            ).fetchone()
            if row is None:
                return CodeOutcome(None, "none")
            failures = int(row[5])
            if failures >= CODE_MAX_TRIES:
                return CodeOutcome(None, "burnt")
            if not _code_matches(code, str(row[0])):
                conn.execute(
                    "UPDATE consent_codes SET failures = failures + 1 WHERE person_key = ?",
                    (person_key,),
                )
                left = CODE_MAX_TRIES - failures - 1
                return CodeOutcome(None, "wrong" if left else "burnt", left)
            conn.execute(
                "UPDATE consent_codes SET used_at = ? WHERE person_key = ?", (now, person_key)
            )
            consent = Consent(
                _new_id(),
                person_key,
                hospital,
                subject if int(row[1]) else "",
                str(row[2]),
                f"{row[4]} code:{by}",
                now,
                now + int(row[3]),
                None,
            )
            conn.execute(
                f"INSERT INTO consents ({_COLS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?, NULL)",
                (
                    consent.id,
                    person_key,
                    consent.grantee_hospital,
                    consent.grantee_subject,
                    consent.study_uid,
                    consent.created_by,
                    now,
                    consent.expires_at,
                ),
            )
        return CodeOutcome(consent)

    def close(self) -> None:
        self.db.close()

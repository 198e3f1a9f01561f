"""The region's hospitals and the staff who may hold tokens: who they are, their hospital and
role, and whether they are still enabled. Tokens are signed and expire on their own; a
registered user who is disabled loses access at once, whatever tokens they still hold.

Only registered, enabled users hold tokens: ``cloudfilm token`` issues one only for a user's
registered hospital and role, and the API refuses a token whose user is unknown, disabled or
registered differently (:func:`token_problem`, one rule for both). Kept in the region's state
database (the index's, shared by every API process), so a user disabled through one process is
refused by all; managed with ``cloudfilm hospitals|users`` and the admin API
(``/api/admin/hospitals``, ``/api/admin/users``).
"""

from __future__ import annotations

import re
import time
from pathlib import Path

from image_store.keys import check_hospital
from image_store.state.db import StateDb, as_db
from image_store.state.records import Hospital, User
from viewer_api.auth import ROLES

SCHEMA = """
CREATE TABLE IF NOT EXISTS hospitals (
    id TEXT PRIMARY KEY,
    name TEXT NOT NULL,
    created_at REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS users (
    subject TEXT PRIMARY KEY,
    hospital TEXT NOT NULL REFERENCES hospitals (id),
    role TEXT NOT NULL,
    enabled INTEGER NOT NULL,
    created_at REAL NOT NULL
);
"""
_SUBJECT = re.compile(r"[A-Za-z0-9._@-]{1,128}")


class RegistryError(ValueError):
    """A registry change that cannot be made (unknown hospital, bad name, duplicate)."""


def token_problem(user: User | None, subject: str, hospital: str, role: str) -> str | None:
    """Why a token for ``subject`` as ``role`` at ``hospital`` must not be issued or honoured
    (``user`` is the registry's entry for ``subject``), or None when it may."""
    if not subject:
        return "the token names no user"
    if user is None:
        return f"user {subject} is not registered"
    if not user.enabled:
        return f"user {subject} is disabled"
    if (user.hospital, user.role) != (hospital, role):
        return f"user {subject} is registered as {user.role} at {user.hospital}"
    return None


def check_subject(subject: str) -> str:
    if not _SUBJECT.fullmatch(subject):
        raise RegistryError("a user is 1-128 letters, digits and . _ @ -")
    return subject


class SqlRegistry:
    def __init__(self, db: StateDb | Path) -> None:
        self.db = as_db(db)
        self.db.ensure_schema(SCHEMA)

    def add_hospital(self, hospital_id: str, name: str) -> Hospital:
        try:
            check_hospital(hospital_id)
        except ValueError as exc:
            raise RegistryError(str(exc)) from exc
        name = name.strip()
        if not 1 <= len(name) <= 128 or any(ord(c) < 32 for c in name):
            raise RegistryError("a hospital name is 1-128 printable characters")
        with self.db.tx("registry") as conn:
            conn.execute(
                "INSERT INTO hospitals (id, name, created_at) VALUES (?, ?, ?) "
                "ON CONFLICT (id) DO UPDATE SET name = excluded.name",
                (hospital_id, name, time.time()),
            )
        return Hospital(hospital_id, name)

    def hospitals(self) -> list[Hospital]:
        rows = self.db.conn().execute("SELECT id, name FROM hospitals ORDER BY id")
        return [Hospital(str(r[0]), str(r[1])) for r in rows]

    def hospital_names(self) -> dict[str, str]:
        return {h.id: h.name for h in self.hospitals()}

    def add_user(self, subject: str, hospital: str, role: str) -> User:
        check_subject(subject)
        if role not in ROLES:
            raise RegistryError(f"role must be one of {', '.join(ROLES)}, got {role!r}")
        if hospital not in self.hospital_names():
            raise RegistryError(f"unknown hospital {hospital!r}: add it first")
        with self.db.tx("registry") as conn:
            if conn.execute("SELECT 1 FROM users WHERE subject = ?", (subject,)).fetchone():
                raise RegistryError(f"user {subject!r} exists")
            conn.execute(
                "INSERT INTO users (subject, hospital, role, enabled, created_at) "
                "VALUES (?, ?, ?, 1, ?)",
                (subject, hospital, role, time.time()),
            )
        return User(subject, hospital, role, True)

    def set_enabled(self, subject: str, enabled: bool) -> bool:
        with self.db.tx("registry") as conn:
            cur = conn.execute(
                "UPDATE users SET enabled = ? WHERE subject = ?", (int(enabled), subject)
            )
            return bool(cur.rowcount)

    def user(self, subject: str) -> User | None:
        row = (
            self.db.conn()
            .execute(
                "SELECT subject, hospital, role, enabled FROM users WHERE subject = ?", (subject,)
            )
            .fetchone()
        )
        return None if row is None else User(str(row[0]), str(row[1]), str(row[2]), bool(row[3]))

    def users(self) -> list[User]:
        rows = self.db.conn().execute(
            "SELECT subject, hospital, role, enabled FROM users ORDER BY hospital, subject"
        )
        return [User(str(r[0]), str(r[1]), str(r[2]), bool(r[3])) for r in rows]

    def close(self) -> None:
        self.db.close()

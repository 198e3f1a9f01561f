"""The records of the region's state (share links, the registry, reports): what the ports of
image_store.state.ports take and return, apart from their SQL implementations."""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any, Literal

Scope = Literal["study", "patient"]
Audience = Literal["patient", "doctor"]

BLOCK_AFTER = 10


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
    scope: Scope = "study"
    patient_id: str = ""
    issuer: str = ""
    allow_download: bool = False
    code_hash: str | None = None
    failed_codes: int = 0
    failed_total: int = 0
    locked_until: float | None = None
    audience: Audience = "patient"
    parent_id: str | None = None

    def state(self, now: float | None = None) -> str:
        """'active', 'expired', 'revoked' or 'blocked' (too many wrong codes)."""
        if self.revoked_at is not None:
            return "revoked"
        if self.expires_at <= (time.time() if now is None else now):
            return "expired"
        if self.failed_total >= BLOCK_AFTER:
            return "blocked"
        return "active"

    @property
    def has_code(self) -> bool:
        return self.code_hash is not None

    def locked(self, now: float | None = None) -> bool:
        return self.locked_until is not None and self.locked_until > (
            time.time() if now is None else now
        )

    def as_json(self) -> dict[str, Any]:
        """What its creator sees of a link (never the code or its hash)."""
        return {
            "id": self.id,
            "scope": self.scope,
            "study_uid": self.study_uid or None,
            "hospital": self.hospital,
            "audience": self.audience,
            "allow_download": self.allow_download,
            "has_code": self.has_code,
            "created_at": self.created_at,
            "expires_at": self.expires_at,
            "state": self.state(),
            "views": self.views,
        }


@dataclass(frozen=True, slots=True)
class CodeCheck:
    """The outcome of entering an extraction code."""

    outcome: Literal["ok", "wrong", "locked", "blocked"]
    tries_left: int = 0
    locked_until: float | None = None


@dataclass(frozen=True, slots=True)
class Hospital:
    id: str
    name: str


@dataclass(frozen=True, slots=True)
class User:
    subject: str
    hospital: str
    role: str
    enabled: bool

    def as_json(self) -> dict[str, Any]:
        return {
            "subject": self.subject,
            "hospital": self.hospital,
            "role": self.role,
            "enabled": self.enabled,
        }


@dataclass(frozen=True, slots=True)
class Report:
    id: str
    study_uid: str
    hospital: str
    media_type: str
    title: str
    status: str
    mutual_recognition: bool
    object_key: str
    size: int
    sha256: str
    created_by: str
    created_at: float

    def as_json(self, base: str) -> dict[str, Any]:
        return {
            "id": self.id,
            "study_uid": self.study_uid,
            "hospital": self.hospital,
            "media_type": self.media_type,
            "title": self.title,
            "status": self.status,
            "mutual_recognition": self.mutual_recognition,
            "size": self.size,
            "created_by": self.created_by,
            "created_at": self.created_at,
            "url": f"{base}/api/reports/{self.id}",
        }

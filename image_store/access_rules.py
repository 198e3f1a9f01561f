"""The one rule deciding whether a reader may see a study, pure.

A reader is a hospital, a role and a user: a staff member with a bearer token (``admin``,
``radiologist``, ``clinician``, ``auditor``), a hospital's gateway (``gateway``) or a cloud-film
link held by a patient (``link``). The decision, in order:

- an ``admin`` reads every study (``admin``); an ``auditor`` reads none;
- a study of a hospital in the reader's ``readable`` set is read as ``own``;
- otherwise a consent grant covering the read opens it (``consent:<id>``) for radiologists,
  clinicians, gateways and links; the caller looks the grant up only through a trusted person
  link (:func:`needs_consent` says when to look);
- otherwise a radiologist or clinician with a break-glass reason reads it (``break-glass:...``);
- otherwise it is denied (None).

DICOMweb, the one-click call, film links and the gateway's Q/R all call :func:`decide_access`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

ReaderRole = Literal["admin", "radiologist", "clinician", "auditor", "gateway", "link"]
CONSENT_ROLES: frozenset[str] = frozenset({"radiologist", "clinician", "gateway", "link"})
"""Roles a consent grant opens another hospital's study to."""
BREAK_GLASS_ROLES: frozenset[str] = frozenset({"radiologist", "clinician"})
"""Roles that may read another hospital's study in an emergency, with a reason."""


@dataclass(frozen=True, slots=True)
class Reader:
    """Who reads: ``hospital``, ``role``, ``user`` ('' for a gateway or a link: a consent grant
    to one clinician does not open a study to them) and ``readable``, the hospitals whose
    studies they read without consent (default: their own)."""

    hospital: str
    role: ReaderRole
    user: str = ""
    readable: frozenset[str] | None = None

    def reads_without_consent(self, study_hospital: str) -> bool:
        readable = self.readable if self.readable is not None else frozenset({self.hospital})
        return self.role == "admin" or (self.role != "auditor" and study_hospital in readable)


@dataclass(frozen=True, slots=True)
class Access:
    """An allowed read: ``kind`` and, for consent or break-glass, the grant id or the reason."""

    kind: Literal["admin", "own", "consent", "break-glass"]
    detail: str = ""

    @property
    def via(self) -> str:
        """'consent:<id>' / 'break-glass:<reason>' for the audit, '' for admin and own reads."""
        return f"{self.kind}:{self.detail}" if self.kind in ("consent", "break-glass") else ""

    def __str__(self) -> str:
        return self.via or self.kind


def needs_consent(reader: Reader, study_hospital: str) -> bool:
    """True when only a consent grant could open the study to ``reader``: the caller then looks
    one up (through a trusted person link of the study's patient) and passes its id on."""
    return not reader.reads_without_consent(study_hospital) and reader.role in CONSENT_ROLES


def decide_access(
    reader: Reader,
    study_hospital: str,
    *,
    consent_id: str | None = None,
    break_glass_reason: str = "",
) -> Access | None:
    """How ``reader`` may see a study of ``study_hospital``: an :class:`Access`, or None when
    denied. ``consent_id``: a grant covering this read, found through a trusted person link
    (None: none); ``break_glass_reason``: the emergency reason given ('' for none)."""
    if reader.role == "admin":
        return Access("admin")
    if reader.role == "auditor":
        return None
    if reader.reads_without_consent(study_hospital):
        return Access("own")
    if consent_id and reader.role in CONSENT_ROLES:
        return Access("consent", consent_id)
    reason = break_glass_reason.strip()
    if reason and reader.role in BREAK_GLASS_ROLES:
        return Access("break-glass", reason)
    return None

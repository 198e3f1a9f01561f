"""Validation of UIDs and hospital ids, and the object key layout.

Objects live under ``{hospital}/{study_uid}/{series_uid}/{sop_uid}``; derived objects of a series
(thumbnails) under the same series prefix with a suffix. Every part is validated before it becomes
a key or a path, so nothing a client sends can escape the store.
"""

from __future__ import annotations

import re
from typing import NewType

from image_store.errors import InvalidKey, InvalidUID

StudyUID = NewType("StudyUID", str)
SeriesUID = NewType("SeriesUID", str)
SopUID = NewType("SopUID", str)

_UID_RE = re.compile(r"[0-9.]{1,64}")
_HOSPITAL_RE = re.compile(r"[A-Za-z0-9_-]{1,32}")
_KEY_PART_RE = re.compile(r"[A-Za-z0-9._-]{1,128}")


def is_valid_uid(value: str) -> bool:
    """True when ``value`` is 1-64 characters of digits and dots (and not just dots)."""
    return bool(_UID_RE.fullmatch(value)) and value.strip(".") != ""


def check_uid(value: str, what: str = "UID") -> str:
    """Return ``value`` if it is a valid UID, else raise InvalidUID naming ``what``."""
    if not isinstance(value, str) or not is_valid_uid(value):
        shown = value[:80] if isinstance(value, str) else type(value).__name__
        raise InvalidUID(f"{what} must be 1-64 digits and dots, got {shown!r}")
    return value


def check_hospital(value: str) -> str:
    """Return ``value`` if it is a valid hospital id ([A-Za-z0-9_-]{1,32})."""
    if not _HOSPITAL_RE.fullmatch(value):
        raise InvalidKey(f"hospital id must match [A-Za-z0-9_-]{{1,32}}, got {value[:40]!r}")
    return value


def instance_key(hospital: str, study_uid: str, series_uid: str, sop_uid: str) -> str:
    """The object key of an instance's DICOM bytes."""
    return "/".join(
        (
            check_hospital(hospital),
            check_uid(study_uid, "StudyInstanceUID"),
            check_uid(series_uid, "SeriesInstanceUID"),
            check_uid(sop_uid, "SOPInstanceUID"),
        )
    )


def series_prefix(hospital: str, study_uid: str, series_uid: str) -> str:
    """The key prefix of a series (ends with '/')."""
    return "/".join(
        (
            check_hospital(hospital),
            check_uid(study_uid, "StudyInstanceUID"),
            check_uid(series_uid, "SeriesInstanceUID"),
            "",
        )
    )


def thumbnail_key(hospital: str, study_uid: str, series_uid: str, sop_uid: str) -> str:
    """The key of a series thumbnail rendered from instance ``sop_uid``."""
    return instance_key(hospital, study_uid, series_uid, sop_uid) + ".thumb.jpg"


def report_key(hospital: str, study_uid: str, report_id: str, extension: str) -> str:
    """The key of a diagnostic report attached to a study (text or PDF)."""
    if not re.fullmatch(r"[A-Za-z0-9_-]{16,64}", report_id) or extension not in ("txt", "pdf"):
        raise InvalidKey("a report id is 16-64 URL-safe characters, its extension txt or pdf")
    return "/".join(
        (
            check_hospital(hospital),
            check_uid(study_uid, "StudyInstanceUID"),
            "reports",
            f"{report_id}.{extension}",
        )
    )


def check_key(key: str) -> str:
    """Validate a full object key: '/'-separated parts of [A-Za-z0-9._-], no '.' or '..' parts."""
    parts = key.split("/")
    if (
        not key
        or len(key) > 512
        or any(p in ("", ".", "..") or not _KEY_PART_RE.fullmatch(p) for p in parts)
    ):
        raise InvalidKey(f"object key has an invalid form: {key[:120]!r}")
    return key


def prior_version_key(key: str, sha256: str) -> str:
    """Where the replaced bytes of an instance are kept (same prefix, the old hash in the name)."""
    if not re.fullmatch(r"[0-9a-f]{64}", sha256):
        raise InvalidKey(f"sha256 must be 64 hex digits, got {sha256[:70]!r}")
    return f"{check_key(key)}.v-{sha256[:32]}"

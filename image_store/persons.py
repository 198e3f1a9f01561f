"""Regional person identifiers (resident ID, health card number) as keyed hashes.

The master patient index links each hospital's Patient ID to a person by
``HMAC-SHA256(region key, ISSUER ":" normalised value)``: equal identifiers give equal keys, the
identifier itself is never stored, and without the region key the hashes cannot be tested
against guessed numbers. Pure functions; the key comes from the caller.
"""

from __future__ import annotations

import hashlib
import hmac
import re
from collections.abc import Iterable
from dataclasses import dataclass

from pydicom.dataset import Dataset

from image_store.errors import ImageStoreError
from image_store.records import PatientInfo, PersonLink

DEFAULT_ISSUERS = frozenset({"CN_RESIDENT_ID", "CN_HEALTH_CARD"})
"""Issuer of Patient ID values that name regional person identifiers unless configured."""

_VALUE = re.compile(r"[0-9A-Za-z]{6,32}")


class InvalidPersonId(ImageStoreError, ValueError):
    """An identifier that cannot be a person identifier (empty, odd characters, too long)."""


def normalise(value: str) -> str:
    """Upper case, spaces and hyphens removed; InvalidPersonId if it is not 6-32 letters/digits."""
    text = re.sub(r"[\s\-]", "", value).upper()
    if not _VALUE.fullmatch(text):
        raise InvalidPersonId("a person identifier is 6-32 letters and digits")
    return text


class PersonKeyer:
    """Turns (issuer, identifier) into the person key, for the configured issuers only."""

    def __init__(self, key: bytes, issuers: Iterable[str] = DEFAULT_ISSUERS) -> None:
        if len(key) < 32:
            raise ValueError("the person key must be at least 32 bytes")
        self._key = hmac.new(key, b"cloudfilm person key v1", hashlib.sha256).digest()
        self.issuers = frozenset(i.strip().upper() for i in issuers if i.strip())

    def key(self, issuer: str, value: str) -> str:
        """The person key of an identifier (InvalidPersonId for a bad one or another issuer)."""
        issuer = issuer.strip().upper()
        if issuer not in self.issuers:
            raise InvalidPersonId(f"issuer {issuer[:64]!r} is not a person identifier issuer")
        text = f"{issuer}:{normalise(value)}"
        return hmac.new(self._key, text.encode(), hashlib.sha256).hexdigest()

    def first_key(self, ids: Iterable[tuple[str, str]]) -> str | None:
        """The key of the first usable (issuer, value) pair, None if there is none."""
        for issuer, value in ids:
            try:
                return self.key(issuer, value)
            except InvalidPersonId:
                continue
        return None


def identifiers(ds: Dataset) -> tuple[tuple[str, str], ...]:
    """(issuer, value) pairs of a dataset: its Patient ID with Issuer of Patient ID, then the
    items of the Other Patient IDs Sequence."""
    out: list[tuple[str, str]] = []
    issuer = str(ds.get("IssuerOfPatientID") or "").strip()
    pid = str(ds.get("PatientID") or "").strip()
    if issuer and pid:
        out.append((issuer, pid))
    for item in ds.get("OtherPatientIDsSequence") or []:
        issuer = str(item.get("IssuerOfPatientID") or "").strip()
        pid = str(item.get("PatientID") or "").strip()
        if issuer and pid:
            out.append((issuer, pid))
    return tuple(out)


@dataclass(frozen=True, slots=True)
class LinkVerdict:
    """What to do with a link a trusted source asks for: ``apply`` it, ``keep`` the current
    one (nothing changes), or ``review`` (hold it for an administrator, ``reason`` says why)."""

    action: str
    reason: str = ""


def _conflict(a: PatientInfo, b: PatientInfo) -> str:
    """Which demographics of two records of one person disagree ('' when none do); values
    missing on either side do not conflict."""
    if a.birth_date and b.birth_date and a.birth_date != b.birth_date:
        return "birth date"
    sexes = {"M", "F"}
    if a.sex in sexes and b.sex in sexes and a.sex != b.sex:
        return "sex"
    return ""


def link_verdict(
    current: PersonLink | None,
    person_key: str,
    record: PatientInfo,
    others: Iterable[tuple[str, PatientInfo]],
    hospital: str,
) -> LinkVerdict:
    """The rule for a link from a trusted source (the hospital's gateway) of ``hospital``'s
    ``record`` to ``person_key``: a record linked to another person is never moved without
    review; a record joining a person whose records at other hospitals (``others``: hospital
    and patient) disagree on birth date or sex is held for review; a link already there is
    kept; an untrusted link to the same person is confirmed."""
    if current is not None and current.person_key != person_key:
        return LinkVerdict("review", "the record is linked to another person now")
    if current is not None:
        return LinkVerdict("keep") if current.trusted else LinkVerdict("apply")
    for other_hospital, other in others:
        if other_hospital == hospital:
            continue
        what = _conflict(record, other)
        if what:
            return LinkVerdict(
                "review", f"{what} differs from the person's record at {other_hospital}"
            )
    return LinkVerdict("apply")

"""Reading a Query/Retrieve identifier: its level, UID lists, date range and study keys, and
the scope rules that refuse a universal match over the hospital (pure, over pydicom Datasets).

Matching follows PS3.4 C.2.2.2: empty values are universal, '*'/'?' wildcards for names and
text, ranges for dates, backslash-separated UID lists. A C-GET or C-MOVE at PATIENT level needs
one exact PatientID (no wildcard), at STUDY level and below the Study Instance UIDs; a C-FIND
at PATIENT or STUDY level needs at least one narrowing key (a PatientID or PatientName that is
more than wildcards, a StudyDate or a date range, an AccessionNumber or StudyInstanceUID): a
workstation may list a day's studies, not the whole hospital.
"""

from __future__ import annotations

from pydicom.dataset import Dataset

from image_store.keys import is_valid_uid
from image_store.metadata import text_value
from image_store.records import StudyQuery

LEVELS = ("PATIENT", "STUDY", "SERIES", "IMAGE")
_NARROWING_KEYS = ("StudyDate", "AccessionNumber", "StudyInstanceUID")


class BadIdentifier(ValueError):
    """An identifier we cannot match (unknown level, malformed UID list or date range), or
    one too broad to answer (a universal match over the hospital)."""


def is_universal(value: str) -> bool:
    """True for '' and values of wildcards only ('*', '**?')."""
    return not value.replace("*", "").replace("?", "").strip()


def uids(ds: Dataset, keyword: str) -> tuple[str, ...]:
    """The UIDs of a backslash-separated list; BadIdentifier when one is not a valid UID."""
    text = text_value(ds, keyword)
    if not text:
        return ()
    found = tuple(u.strip() for u in text.split("\\"))
    if not all(is_valid_uid(u) for u in found):
        raise BadIdentifier(f"{keyword} holds an invalid UID list")
    return found


def study_dates(ds: Dataset) -> tuple[str, str]:
    """StudyDate as (from, to): one date gives both, an open range leaves one side empty."""
    text = text_value(ds, "StudyDate")
    if not text:
        return "", ""
    lo, sep, hi = text.partition("-")
    if not sep:
        hi = lo
    for d in (lo, hi):
        if d and not (len(d) == 8 and d.isdigit()):
            raise BadIdentifier(f"StudyDate must be YYYYMMDD or a range, got {text!r}")
    return lo, hi


def level_of(ds: Dataset) -> str:
    level = text_value(ds, "QueryRetrieveLevel").upper()
    if level not in LEVELS:
        raise BadIdentifier(f"QueryRetrieveLevel must be one of {', '.join(LEVELS)}")
    return level


def study_query(ds: Dataset, hospitals: frozenset[str] | None = None) -> StudyQuery:
    """The study keys of an identifier as a StudyQuery."""
    lo, hi = study_dates(ds)
    modalities = tuple(m for m in text_value(ds, "ModalitiesInStudy").split("\\") if m)
    return StudyQuery(
        hospitals=hospitals,
        patient_id=text_value(ds, "PatientID"),
        patient_name=text_value(ds, "PatientName"),
        study_date_from=lo,
        study_date_to=hi,
        modalities=modalities,
        accession_number=text_value(ds, "AccessionNumber"),
        study_uids=uids(ds, "StudyInstanceUID"),
        study_description=text_value(ds, "StudyDescription"),
    )


def check_find_scope(ds: Dataset, level: str) -> None:
    """Refuse a PATIENT or STUDY level C-FIND that names nothing to narrow it down."""
    if level not in ("PATIENT", "STUDY"):
        return  # SERIES and IMAGE need their parent's UID (find_matches checks)
    if any(not is_universal(text_value(ds, kw)) for kw in ("PatientID", "PatientName")):
        return
    if any(text_value(ds, kw).strip("*? -") for kw in _NARROWING_KEYS):
        return
    raise BadIdentifier("universal match refused: give a PatientID, name, date or UID")


def check_retrieve_scope(ds: Dataset, level: str) -> None:
    """Refuse a C-GET/C-MOVE that is not pinned to one patient or to named studies."""
    if level == "PATIENT":
        patient_id = text_value(ds, "PatientID")
        if not patient_id or any(c in patient_id for c in "*?\\"):
            raise BadIdentifier("universal match refused: one exact PatientID needed")
    elif not uids(ds, "StudyInstanceUID"):
        raise BadIdentifier(f"universal match refused: {level} level needs StudyInstanceUID")


def audited_keys(ds: Dataset) -> str:
    """The keys of an identifier for the audit log: names only, plus the study UIDs asked for
    (never patient names or IDs)."""
    names = sorted({e.keyword for e in ds if e.keyword} - {"QueryRetrieveLevel"})
    out = "keys=" + ",".join(names)
    try:
        studies = uids(ds, "StudyInstanceUID")
    except BadIdentifier:
        studies = ()
    if studies:
        out += "&studies=" + ",".join(studies[:20])
    return out

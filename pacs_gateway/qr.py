"""Query/Retrieve SCP: workstations find and pull priors from the regional index.

C-FIND (patient, study, series and image level; patient and study roots), C-GET and C-MOVE
answer from the cloud's Index and ObjectStore, limited to the hospitals this gateway may read.
Identifier matching follows PS3.4 C.2.2.2: empty values are universal, '*'/'?' wildcards for
names and text, ranges for dates, backslash-separated UID lists.

Identifiers that would sweep the hospital are refused (0xA900 with an Error Comment): a C-GET
or C-MOVE at PATIENT level needs one exact PatientID (no wildcard), at STUDY level and below
the Study Instance UIDs; a C-FIND at PATIENT or STUDY level needs at least one narrowing key
(a PatientID or PatientName that is more than wildcards, a StudyDate or a date range, an
AccessionNumber or StudyInstanceUID): a workstation may list a day's studies, not the whole
hospital. Every C-FIND, C-GET and C-MOVE is appended to the audit log (calling AE, peer host,
level, the names of the keys and the study UIDs, never patient names or IDs; how many matched
and the status).
"""

from __future__ import annotations

import dataclasses
import functools
import io
import logging
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import pydicom
from pydicom.dataset import Dataset
from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian
from pynetdicom.presentation import build_context

from dicom_codecs.errors import CodecError
from dicom_codecs.transcode import TARGETS, choose_syntax, transcode
from image_store.audit import AuditEvent
from image_store.consents import SqliteConsents
from image_store.errors import ImageStoreError
from image_store.keys import is_valid_uid
from image_store.metadata import text_value
from image_store.ports import Index, ObjectStore
from image_store.records import (
    InstanceQuery,
    InstanceSummary,
    PatientRef,
    PersonLink,
    SeriesQuery,
    SeriesRecord,
    StudyQuery,
    StudyRecord,
)
from image_store.verified import read_verified

logger = logging.getLogger(__name__)

_ANY_DESTINATION = [
    build_context(uid, [ExplicitVRLittleEndian, ImplicitVRLittleEndian])
    for uid in (
        "1.2.840.10008.1.1",  # Verification
        "1.2.840.10008.5.1.4.1.1.2",  # CT Image Storage
        "1.2.840.10008.5.1.4.1.1.4",  # MR Image Storage
        "1.2.840.10008.5.1.4.1.1.7",  # Secondary Capture Image Storage
    )
]
STATUS_PENDING = 0xFF00
STATUS_SUCCESS = 0x0000
STATUS_CANCEL = 0xFE00
STATUS_IDENTIFIER_MISMATCH = 0xA900
STATUS_FIND_FAILED = 0xC300
STATUS_MOVE_UNKNOWN_DESTINATION = 0xA801
STATUS_RETRIEVE_FAILED = 0xC400
MAX_MATCHES = 10_000
LEVELS = ("PATIENT", "STUDY", "SERIES", "IMAGE")


class BadIdentifier(ValueError):
    """An identifier we cannot match (unknown level, malformed UID list or date range), or
    one too broad to answer (a universal match over the hospital)."""


class AuditLog(Protocol):
    def append(self, event: AuditEvent) -> None: ...


_NARROWING_KEYS = ("StudyDate", "AccessionNumber", "StudyInstanceUID")


def _is_universal(value: str) -> bool:
    """True for '' and values of wildcards only ('*', '**?')."""
    return not value.replace("*", "").replace("?", "").strip()


def check_find_scope(ds: Dataset, level: str) -> None:
    """Refuse a PATIENT or STUDY level C-FIND that names nothing to narrow it down."""
    if level not in ("PATIENT", "STUDY"):
        return  # SERIES and IMAGE need their parent's UID (find_matches checks)
    if any(not _is_universal(text_value(ds, kw)) for kw in ("PatientID", "PatientName")):
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
    elif not _uids(ds, "StudyInstanceUID"):
        raise BadIdentifier(f"universal match refused: {level} level needs StudyInstanceUID")


def audited_keys(ds: Dataset) -> str:
    """The keys of an identifier for the audit log: names only, plus the study UIDs asked for
    (never patient names or IDs)."""
    names = sorted({e.keyword for e in ds if e.keyword} - {"QueryRetrieveLevel"})
    out = "keys=" + ",".join(names)
    try:
        studies = _uids(ds, "StudyInstanceUID")
    except BadIdentifier:
        studies = ()
    if studies:
        out += "&studies=" + ",".join(studies[:20])
    return out


@dataclass(frozen=True, slots=True)
class QrSettings:
    ae_title: str
    hospitals: frozenset[str]
    """Hospitals whose studies workstations behind this gateway may find and retrieve."""
    move_destinations: dict[str, tuple[str, int]] = field(default_factory=dict)
    hospital: str = ""
    """This gateway's hospital: other hospitals' studies are served when the patient has given
    it consent (a grant to the hospital as a whole, not to one clinician)."""
    consents_path: Path | None = None
    """C-MOVE destination AE title -> (host, port)."""


def _uids(ds: Dataset, keyword: str) -> tuple[str, ...]:
    text = text_value(ds, keyword)
    if not text:
        return ()
    uids = tuple(u.strip() for u in text.split("\\"))
    if not all(is_valid_uid(u) for u in uids):
        raise BadIdentifier(f"{keyword} holds an invalid UID list")
    return uids


def _dates(ds: Dataset) -> tuple[str, str]:
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


def study_query(ds: Dataset, hospitals: frozenset[str]) -> StudyQuery:
    lo, hi = _dates(ds)
    modalities = tuple(m for m in text_value(ds, "ModalitiesInStudy").split("\\") if m)
    return StudyQuery(
        hospitals=hospitals,
        patient_id=text_value(ds, "PatientID"),
        patient_name=text_value(ds, "PatientName"),
        study_date_from=lo,
        study_date_to=hi,
        modalities=modalities,
        accession_number=text_value(ds, "AccessionNumber"),
        study_uids=_uids(ds, "StudyInstanceUID"),
        study_description=text_value(ds, "StudyDescription"),
    )


def _set(out: Dataset, identifier: Dataset, values: dict[str, object]) -> None:
    """Fill the return keys the identifier asked for (and the unique keys)."""
    for elem in identifier:
        kw = elem.keyword
        if kw in values and values[kw] not in (None, ""):
            setattr(out, kw, values[kw])
        elif kw and kw not in ("QueryRetrieveLevel", "SpecificCharacterSet"):
            setattr(out, kw, elem.value if elem.value not in (None, "") else None)


def _study_values(s: StudyRecord) -> dict[str, object]:
    p = s.patient
    return {
        "PatientID": p.patient_id,
        "IssuerOfPatientID": p.issuer,
        "PatientName": p.name,
        "PatientBirthDate": p.birth_date,
        "PatientSex": p.sex,
        "StudyInstanceUID": s.study_uid,
        "StudyDate": s.study_date,
        "StudyTime": s.study_time,
        "AccessionNumber": s.accession_number,
        "StudyDescription": s.study_description,
        "ReferringPhysicianName": s.referring_physician,
        "StudyID": s.study_id,
        "ModalitiesInStudy": list(s.modalities),
        "NumberOfStudyRelatedSeries": s.number_of_series,
        "NumberOfStudyRelatedInstances": s.number_of_instances,
        "InstitutionName": s.hospital,
    }


def _series_values(s: SeriesRecord) -> dict[str, object]:
    return {
        "StudyInstanceUID": s.study_uid,
        "SeriesInstanceUID": s.series_uid,
        "Modality": s.modality,
        "SeriesNumber": s.series_number,
        "SeriesDescription": s.series_description,
        "BodyPartExamined": s.body_part,
        "NumberOfSeriesRelatedInstances": s.number_of_instances,
    }


def _instance_values(i: InstanceSummary) -> dict[str, object]:
    return {
        "StudyInstanceUID": i.study_uid,
        "SeriesInstanceUID": i.series_uid,
        "SOPInstanceUID": i.sop_uid,
        "SOPClassUID": i.sop_class_uid,
        "InstanceNumber": i.instance_number,
        "Rows": i.rows,
        "Columns": i.columns,
        "NumberOfFrames": i.number_of_frames,
    }


@functools.lru_cache(maxsize=4)
def _consent_store(path: Path) -> SqliteConsents:
    return SqliteConsents(path)


def _trusted_link(index: Index, ref: PatientRef) -> PersonLink | None:
    """The patient's person link if a trusted source (a gateway, an administrator) made it;
    an untrusted link (e.g. from a STOW-RS upload) opens nothing."""
    link = index.person_link(ref)
    return link if link is not None and link.trusted else None


def _consented(study: StudyRecord | None, index: Index, settings: QrSettings) -> bool:
    """True when this gateway's hospital may serve ``study``: an allowed hospital's, or covered
    by the patient's consent to this hospital."""
    if study is None:
        return False
    if study.hospital in settings.hospitals:
        return True
    if settings.consents_path is None or not settings.hospital:
        return False
    ref = PatientRef(study.hospital, study.patient.patient_id, study.patient.issuer)
    link = _trusted_link(index, ref)
    if link is None:
        return False
    grant = _consent_store(settings.consents_path).covering(
        link.person_key, settings.hospital, "", study.study_uid
    )
    return grant is not None


def _consented_studies(ds: Dataset, index: Index, settings: QrSettings) -> list[StudyRecord]:
    """Other hospitals' studies of the person behind the identifier's PatientID at this
    hospital, that the patient's consent lets this hospital see (a workstation's priors)."""
    patient_id = text_value(ds, "PatientID")
    if settings.consents_path is None or not settings.hospital or not patient_id:
        return []
    if any(c in patient_id for c in "*?"):
        return []
    own = index.find_studies(
        StudyQuery(hospitals=frozenset({settings.hospital}), patient_id=patient_id), limit=100
    )
    keys = set()
    for ref in {PatientRef(s.hospital, patient_id, s.patient.issuer) for s in own}:
        link = _trusted_link(index, ref)
        if link is not None:
            keys.add(link.person_key)
    found: list[StudyRecord] = []
    base = study_query(ds, frozenset())
    for key in sorted(keys):
        q = dataclasses.replace(base, hospitals=None, patient_id="", person_key=key)
        found += [
            s
            for s in index.find_studies(q, limit=MAX_MATCHES)
            if s.hospital not in settings.hospitals and _consented(s, index, settings)
        ]
    return found


def find_matches(ds: Dataset, index: Index, settings: QrSettings) -> Iterator[Dataset]:
    """Responses for a C-FIND identifier (pure over the Index: easy to test)."""
    level = level_of(ds)
    check_find_scope(ds, level)
    hospitals = settings.hospitals
    rows: list[dict[str, object]] = []
    if level in ("PATIENT", "STUDY"):
        studies = index.find_studies(study_query(ds, hospitals), limit=MAX_MATCHES)
        studies += _consented_studies(ds, index, settings)
        if level == "STUDY":
            rows = [_study_values(s) for s in studies]
        else:
            seen: dict[tuple[str, str, str], dict[str, object]] = {}
            counts: dict[tuple[str, str, str], int] = {}
            for s in studies:
                key = (s.hospital, s.patient.issuer, s.patient.patient_id)
                seen.setdefault(key, _study_values(s))
                counts[key] = counts.get(key, 0) + 1
            for key, entry in seen.items():
                entry["NumberOfPatientRelatedStudies"] = counts[key]
            rows = list(seen.values())
    elif level == "SERIES":
        study_uids = _uids(ds, "StudyInstanceUID")
        if len(study_uids) != 1:
            raise BadIdentifier("a SERIES query needs one StudyInstanceUID")
        q = SeriesQuery(
            hospitals=None
            if _consented(index.get_study(study_uids[0]), index, settings)
            else hospitals,
            study_uid=study_uids[0],
            series_uids=_uids(ds, "SeriesInstanceUID"),
            modality=text_value(ds, "Modality"),
        )
        rows = [_series_values(s) for s in index.find_series(q, limit=MAX_MATCHES)]
    else:
        series_uids = _uids(ds, "SeriesInstanceUID")
        if len(series_uids) != 1:
            raise BadIdentifier("an IMAGE query needs one SeriesInstanceUID")
        study_uid = (_uids(ds, "StudyInstanceUID") or ("",))[0]
        q2 = InstanceQuery(
            hospitals=None
            if study_uid and _consented(index.get_study(study_uid), index, settings)
            else hospitals,
            study_uid=study_uid,
            series_uid=series_uids[0],
            sop_uids=_uids(ds, "SOPInstanceUID"),
        )
        rows = [_instance_values(i) for i in index.find_instances(q2, limit=MAX_MATCHES)]
    for values in rows:
        out = Dataset()
        out.SpecificCharacterSet = "ISO_IR 192"
        out.QueryRetrieveLevel = level
        _set(out, ds, values)
        out.RetrieveAETitle = settings.ae_title
        yield out


def retrieve_matches(ds: Dataset, index: Index, settings: QrSettings) -> list[InstanceSummary]:
    """The instances a C-GET/C-MOVE identifier names (study, series or image level)."""
    level = level_of(ds)
    check_retrieve_scope(ds, level)
    hospitals = settings.hospitals
    if level == "PATIENT":
        patient_id = text_value(ds, "PatientID")
        studies = index.find_studies(
            StudyQuery(hospitals=hospitals, patient_id=patient_id), limit=MAX_MATCHES
        )
        studies += _consented_studies(ds, index, settings)
        out: list[InstanceSummary] = []
        for s in studies:
            out += index.find_instances(InstanceQuery(study_uid=s.study_uid), limit=MAX_MATCHES)
        return out
    study_uids = _uids(ds, "StudyInstanceUID")
    series_uids = _uids(ds, "SeriesInstanceUID") if level in ("SERIES", "IMAGE") else ()
    sop_uids = _uids(ds, "SOPInstanceUID") if level == "IMAGE" else ()
    found: list[InstanceSummary] = []
    for study in study_uids:
        allowed = None if _consented(index.get_study(study), index, settings) else hospitals
        for series in series_uids or ("",):
            q = InstanceQuery(
                hospitals=allowed, study_uid=study, series_uid=series, sop_uids=sop_uids
            )
            found += index.find_instances(q, limit=MAX_MATCHES)
    return found


Accepted = frozenset[tuple[str, str]]
"""(SOP Class UID, transfer syntax UID) pairs a peer accepted for storage."""


def send_syntax(inst: InstanceSummary, accepted: Accepted | None) -> str:
    """The transfer syntax to send an instance in: as stored if the peer takes it, else the
    first the peer takes of the arrival syntax and those we transcode into; without knowing
    what the peer took (C-MOVE), the syntax the instance arrived in."""
    stored = inst.transfer_syntax_uid
    arrival = inst.original_transfer_syntax_uid or stored
    if accepted is None:
        return arrival
    for syntax in (stored, arrival, *TARGETS):
        if (inst.sop_class_uid, syntax) in accepted and (
            syntax == stored or choose_syntax(stored, (syntax,)) == syntax
        ):
            return syntax
    return stored


def _load(store: ObjectStore, inst: InstanceSummary, accepted: Accepted | None) -> Dataset:
    data = read_verified(store, inst.object_key, inst.sha256)  # never send damaged bytes
    syntax = send_syntax(inst, accepted)
    if syntax != inst.transfer_syntax_uid:
        data = transcode(data, syntax)
    return pydicom.dcmread(io.BytesIO(data))


def _accepted(event: Any) -> Accepted:
    return frozenset(
        (str(cx.abstract_syntax), str(cx.transfer_syntax[0]))
        for cx in event.assoc.accepted_contexts
    )


# -- pynetdicom event handlers (the edge: errors become statuses here) -------------------------


def _failure(status: int, comment: str) -> Dataset:
    """A failure status with its Error Comment (0000,0902: at most 64 characters)."""
    out = Dataset()
    out.Status = status
    out.ErrorComment = comment[:64]
    return out


@dataclass(slots=True)
class _Audit:
    """One Q/R operation's audit record, appended once its outcome is known."""

    log: AuditLog | None
    event: Any
    settings: QrSettings
    action: str
    level: str = ""
    keys: str = ""
    matched: int = 0
    studies: tuple[str, ...] = ()
    via: str = ""
    done: bool = False

    @classmethod
    def begin(cls, log: AuditLog | None, event: Any, settings: QrSettings, action: str) -> _Audit:
        audit = cls(log, event, settings, action)
        try:
            ds = event.identifier
            audit.keys = audited_keys(ds)
            audit.level = text_value(ds, "QueryRetrieveLevel").upper()[:8]
        except Exception:  # an identifier pydicom cannot decode: still audited
            audit.keys = "keys=?"
        return audit

    def finish(self, status: int) -> None:
        if self.done:
            return
        self.done = True
        if self.log is None:
            return
        assoc = self.event.assoc
        resource = f"/dicom/{self.action}?level={self.level}&{self.keys}&matched={self.matched}"
        events = [resource]
        if self.studies:  # one record per study read: the patient's access history lists them
            events = [
                f"/dicom/{self.action}/studies/{uid}?level={self.level}&matched={self.matched}"
                for uid in self.studies
            ]
        try:
            for resource in events:
                self.log.append(
                    AuditEvent(
                        ts=time.time(),
                        actor=str(assoc.requestor.ae_title).strip(),
                        hospital=self.settings.hospital,
                        role="dicom",
                        action=self.action,
                        resource=resource,
                        status=status,
                        remote=str(assoc.requestor.address),
                        via=self.via,
                    )
                )
        except Exception:
            logger.exception("cannot append the %s to the audit log", self.action)


def _audited(audit: _Audit, responses: Iterator[Any]) -> Iterator[Any]:
    """``responses``, with the audit record appended even when the association ends before
    the last of them (as cancelled)."""
    try:
        yield from responses
    finally:
        audit.finish(STATUS_CANCEL)  # a no-op once the handler recorded its outcome


def handle_find(
    event: Any, index: Index, settings: QrSettings, audit_log: AuditLog | None = None
) -> Iterator[tuple[int | Dataset, Dataset | None]]:
    audit = _Audit.begin(audit_log, event, settings, "C-FIND")
    return _audited(audit, _find(event, index, settings, audit))


def _find(
    event: Any, index: Index, settings: QrSettings, audit: _Audit
) -> Iterator[tuple[int | Dataset, Dataset | None]]:
    try:
        matches = list(find_matches(event.identifier, index, settings))
    except BadIdentifier as exc:
        logger.warning("C-FIND refused: %s", exc)
        audit.finish(STATUS_IDENTIFIER_MISMATCH)
        yield _failure(STATUS_IDENTIFIER_MISMATCH, str(exc)), None
        return
    except Exception:
        logger.exception("C-FIND failed")
        audit.finish(STATUS_FIND_FAILED)
        yield STATUS_FIND_FAILED, None
        return
    audit.matched = len(matches)
    for match in matches:
        if event.is_cancelled:
            audit.finish(STATUS_CANCEL)
            yield STATUS_CANCEL, None
            return
        yield STATUS_PENDING, match
    audit.finish(STATUS_SUCCESS)


def _sub_operations(
    event: Any,
    store: ObjectStore,
    matches: list[InstanceSummary],
    accepted: Accepted | None,
    audit: _Audit,
) -> Iterator[tuple[int, Dataset | None]]:
    for inst in matches:
        if event.is_cancelled:
            audit.finish(STATUS_CANCEL)
            yield STATUS_CANCEL, None
            return
        try:
            ds = _load(store, inst, accepted)
        except (ImageStoreError, CodecError, OSError, ValueError):
            logger.exception("cannot read instance %s for retrieve", inst.sop_uid)
            audit.finish(STATUS_RETRIEVE_FAILED)
            yield STATUS_RETRIEVE_FAILED, None
            return
        yield STATUS_PENDING, ds
    audit.finish(STATUS_SUCCESS)


def _retrieve(
    event: Any, index: Index, settings: QrSettings, audit: _Audit
) -> list[InstanceSummary]:
    """The matches of a C-GET/C-MOVE, noted in its audit record (BadIdentifier passes)."""
    matches = retrieve_matches(event.identifier, index, settings)
    audit.matched = len(matches)
    audit.studies = tuple(dict.fromkeys(m.study_uid for m in matches))
    if any(m.hospital not in settings.hospitals for m in matches):
        audit.via = "consent"
    return matches


def handle_get(
    event: Any,
    index: Index,
    store: ObjectStore,
    settings: QrSettings,
    audit_log: AuditLog | None = None,
) -> Iterator[Any]:
    audit = _Audit.begin(audit_log, event, settings, "C-GET")
    return _audited(audit, _get(event, index, store, settings, audit))


def _get(
    event: Any, index: Index, store: ObjectStore, settings: QrSettings, audit: _Audit
) -> Iterator[Any]:
    try:
        matches = _retrieve(event, index, settings, audit)
    except BadIdentifier as exc:
        logger.warning("C-GET refused: %s", exc)
        audit.finish(STATUS_IDENTIFIER_MISMATCH)
        yield 1  # pynetdicom answers a count of 0 with Success: one, which fails
        yield _failure(STATUS_IDENTIFIER_MISMATCH, str(exc)), None
        return
    yield len(matches)
    yield from _sub_operations(event, store, matches, _accepted(event), audit)


def handle_move(
    event: Any,
    index: Index,
    store: ObjectStore,
    settings: QrSettings,
    audit_log: AuditLog | None = None,
) -> Iterator[Any]:
    audit = _Audit.begin(audit_log, event, settings, "C-MOVE")
    return _audited(audit, _move(event, index, store, settings, audit))


def _move(
    event: Any, index: Index, store: ObjectStore, settings: QrSettings, audit: _Audit
) -> Iterator[Any]:
    destination = settings.move_destinations.get(str(event.move_destination).strip())
    if destination is None:
        logger.warning("C-MOVE refused: unknown destination %r", event.move_destination)
        audit.finish(STATUS_MOVE_UNKNOWN_DESTINATION)
        yield None, None
        return
    try:
        matches = _retrieve(event, index, settings, audit)
    except BadIdentifier as exc:
        logger.warning("C-MOVE refused: %s", exc)
        audit.finish(STATUS_IDENTIFIER_MISMATCH)
        # pynetdicom opens the sub-association before it takes a status: a few common
        # contexts, so that it is accepted and the failure reaches the requestor
        yield destination[0], destination[1], {"contexts": _ANY_DESTINATION}
        yield 1  # pynetdicom answers a count of 0 with Success: one, which fails
        yield _failure(STATUS_IDENTIFIER_MISMATCH, str(exc)), None
        return
    # the sub-association is pynetdicom's: we cannot see what the destination accepted, so
    # instances go in the syntax they arrived in (uncompressed ones convert between VRs)
    contexts = sorted({(m.sop_class_uid, send_syntax(m, None)) for m in matches})
    requested = [
        build_context(c, list(dict.fromkeys([ts, ExplicitVRLittleEndian, ImplicitVRLittleEndian])))
        for c, ts in contexts
    ]
    yield destination[0], destination[1], {"contexts": requested[:128]}
    yield len(matches)
    yield from _sub_operations(event, store, matches, None, audit)

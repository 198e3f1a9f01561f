"""Priors for a hospital's gateway: which studies it may read, and the index reads under that
rule.

A gateway reads its own hospital's studies (plus any hospitals it is configured to read in the
embedded stack), and another hospital's study only when the study's patient is linked to a
person by a trusted source (a gateway delivery, an administrator) and that person has granted
consent to the gateway's hospital as a whole (a grant to one clinician does not open a study
to every workstation). That is image_store.access_rules.decide_access for a ``gateway`` reader;
:class:`IndexPriors` applies it over an Index, a consent store and an ObjectStore. The
gateway's Q/R SCP uses it directly when it runs beside the index, and the cloud's priors
endpoints (viewer_api.priors_api) use it for a gateway calling over HTTP.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Protocol

from image_store.access_rules import Reader, decide_access, needs_consent
from image_store.ports import Index, ObjectStore
from image_store.records import (
    InstanceQuery,
    InstanceSummary,
    PatientInfo,
    PatientRef,
    SeriesQuery,
    SeriesRecord,
    StudyQuery,
    StudyRecord,
)
from image_store.verified import read_verified

MAX_MATCHES = 10_000
_PERSON_LOOKUP_STUDIES = 100
"""The gateway hospital's own studies of one Patient ID looked at to find the person."""


class Grant(Protocol):
    @property
    def id(self) -> str: ...


class ConsentLookup(Protocol):
    """The one consent question priors ask: an active grant covering this read, if any."""

    def covering(
        self, person_key: str, hospital: str, subject: str, study_uid: str
    ) -> Grant | None: ...


class IndexPriors:
    """Priors for the gateway of ``hospital`` read from an Index and an ObjectStore (blocking).

    ``readable``: hospitals whose studies it reads without consent (its own by default).
    Without ``consents`` no other hospital's study is readable."""

    def __init__(
        self,
        index: Index,
        store: ObjectStore,
        hospital: str,
        *,
        readable: frozenset[str] | None = None,
        consents: ConsentLookup | None = None,
    ) -> None:
        self.index = index
        self.store = store
        self.hospital = hospital
        self.readable = readable if readable is not None else frozenset({hospital})
        self.consents = consents

    def access(self, study: StudyRecord | None) -> str | None:
        """``"own"``, ``"consent:<id>"`` or None (denied, or no such study) for ``study``,
        as image_store.access_rules.decide_access rules for this gateway's hospital; a grant
        is looked up only through a trusted person link of the study's patient."""
        if study is None:
            return None
        reader = Reader(self.hospital, "gateway", readable=self.readable)
        consent_id = None
        if needs_consent(reader, study.hospital) and self.consents is not None and self.hospital:
            ref = PatientRef(study.hospital, study.patient.patient_id, study.patient.issuer)
            link = self.index.person_link(ref)
            if link is not None and link.trusted:
                grant = self.consents.covering(link.person_key, self.hospital, "", study.study_uid)
                consent_id = grant.id if grant is not None else None
        decision = decide_access(reader, study.hospital, consent_id=consent_id)
        return None if decision is None else str(decision)

    def find_studies(self, q: StudyQuery, *, limit: int = MAX_MATCHES) -> list[StudyRecord]:
        """Studies matching ``q`` (its ``hospitals`` and ``person_key`` are ignored) in the
        readable hospitals, then other hospitals' studies of the person behind ``q``'s
        Patient ID at this hospital that the person's consent opens."""
        own = self.index.find_studies(
            dataclasses.replace(q, hospitals=self.readable, person_key=""), limit=limit
        )
        return own + self._consented_priors(q, limit)

    def _consented_priors(self, q: StudyQuery, limit: int) -> list[StudyRecord]:
        patient_id = q.patient_id
        if self.consents is None or not self.hospital or not patient_id:
            return []
        if any(c in patient_id for c in "*?"):
            return []
        own = self.index.find_studies(
            StudyQuery(hospitals=frozenset({self.hospital}), patient_id=patient_id),
            limit=_PERSON_LOOKUP_STUDIES,
        )
        keys: set[str] = set()
        for ref in {PatientRef(s.hospital, patient_id, s.patient.issuer) for s in own}:
            link = self.index.person_link(ref)
            if link is not None and link.trusted:
                keys.add(link.person_key)
        found: list[StudyRecord] = []
        for key in sorted(keys):
            by_person = dataclasses.replace(q, hospitals=None, patient_id="", person_key=key)
            found += [
                s
                for s in self.index.find_studies(by_person, limit=limit)
                if s.hospital not in self.readable and self.access(s) is not None
            ]
        return found

    def _hospitals_for(self, study_uid: str) -> frozenset[str] | None:
        """No hospital filter for a study this gateway may read, the readable ones otherwise
        (which finds nothing of another hospital's study)."""
        if study_uid and self.access(self.index.get_study(study_uid)) is not None:
            return None
        return self.readable

    def find_series(
        self,
        study_uid: str,
        *,
        series_uids: Sequence[str] = (),
        modality: str = "",
        limit: int = MAX_MATCHES,
    ) -> list[SeriesRecord]:
        q = SeriesQuery(
            hospitals=self._hospitals_for(study_uid),
            study_uid=study_uid,
            series_uids=tuple(series_uids),
            modality=modality,
        )
        return self.index.find_series(q, limit=limit)

    def find_instances(
        self,
        study_uid: str,
        series_uid: str = "",
        *,
        sop_uids: Sequence[str] = (),
        limit: int = MAX_MATCHES,
    ) -> list[InstanceSummary]:
        q = InstanceQuery(
            hospitals=self._hospitals_for(study_uid),
            study_uid=study_uid,
            series_uid=series_uid,
            sop_uids=tuple(sop_uids),
        )
        return self.index.find_instances(q, limit=limit)

    def read(self, inst: InstanceSummary) -> bytes:
        """The instance's bytes as stored, checked against the sha256 the index recorded."""
        return read_verified(self.store, inst.object_key, inst.sha256)


# -- the records on the wire (the cloud's priors endpoints and the gateway's HTTP source) ------


def record_json(
    record: StudyRecord | SeriesRecord | InstanceSummary,
) -> dict[str, object]:
    """A study, series or instance record as a JSON object (its dataclass fields)."""
    return dataclasses.asdict(record)


def _fields(cls: type, obj: object) -> dict[str, object]:
    if not isinstance(obj, dict):
        raise ValueError(f"a {cls.__name__} must be a JSON object")
    names = [f.name for f in dataclasses.fields(cls)]
    missing = [n for n in names if n not in obj and n != "original_transfer_syntax_uid"]
    if missing:
        raise ValueError(f"a {cls.__name__} lacks {', '.join(missing)}")
    return {n: obj[n] for n in names if n in obj}


def study_from_json(obj: object) -> StudyRecord:
    """The StudyRecord of :func:`record_json`'s object; ValueError for anything else."""
    values = _fields(StudyRecord, obj)
    values["patient"] = PatientInfo(**_fields(PatientInfo, values["patient"]))  # type: ignore[arg-type]
    modalities = values["modalities"]
    if not isinstance(modalities, list) or not all(isinstance(m, str) for m in modalities):
        raise ValueError("a StudyRecord's modalities must be a list of strings")
    values["modalities"] = tuple(modalities)
    try:
        return StudyRecord(**values)  # type: ignore[arg-type]
    except TypeError as exc:
        raise ValueError(f"not a study record: {exc}") from exc


def series_from_json(obj: object) -> SeriesRecord:
    """The SeriesRecord of :func:`record_json`'s object; ValueError for anything else."""
    try:
        return SeriesRecord(**_fields(SeriesRecord, obj))  # type: ignore[arg-type]
    except TypeError as exc:
        raise ValueError(f"not a series record: {exc}") from exc


def instance_from_json(obj: object) -> InstanceSummary:
    """The InstanceSummary of :func:`record_json`'s object; ValueError for anything else."""
    try:
        return InstanceSummary(**_fields(InstanceSummary, obj))  # type: ignore[arg-type]
    except TypeError as exc:
        raise ValueError(f"not an instance record: {exc}") from exc

"""C-FIND responses and C-GET/C-MOVE instance lists for an identifier, from a PriorsSource.

The source decides what the gateway's hospital may read (its own studies, and other
hospitals' under the patient's consent); this module turns identifiers into source queries and
records into response datasets. A C-FIND at PATIENT or STUDY level by PatientID also lists the
person's consented priors at other hospitals (the source finds them).
"""

from __future__ import annotations

from collections.abc import Iterator

from pydicom.dataset import Dataset

from image_store.metadata import text_value
from image_store.records import InstanceSummary, SeriesRecord, StudyQuery, StudyRecord
from pacs_gateway.priors import PriorsSource
from pacs_gateway.qr_identifiers import (
    BadIdentifier,
    check_find_scope,
    check_retrieve_scope,
    level_of,
    study_query,
    uids,
)

MAX_MATCHES = 10_000


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


def _patient_rows(studies: list[StudyRecord]) -> list[dict[str, object]]:
    """One row per (hospital, issuer, Patient ID), with its number of studies."""
    seen: dict[tuple[str, str, str], dict[str, object]] = {}
    counts: dict[tuple[str, str, str], int] = {}
    for s in studies:
        key = (s.hospital, s.patient.issuer, s.patient.patient_id)
        seen.setdefault(key, _study_values(s))
        counts[key] = counts.get(key, 0) + 1
    for key, entry in seen.items():
        entry["NumberOfPatientRelatedStudies"] = counts[key]
    return list(seen.values())


def find_matches(ds: Dataset, source: PriorsSource, ae_title: str) -> Iterator[Dataset]:
    """Responses for a C-FIND identifier (``ae_title`` is their RetrieveAETitle); each level
    is one source query. BadIdentifier for an identifier we cannot or will not match."""
    level = level_of(ds)
    check_find_scope(ds, level)
    rows: list[dict[str, object]]
    if level in ("PATIENT", "STUDY"):
        studies = source.find_studies(study_query(ds), limit=MAX_MATCHES)
        rows = _patient_rows(studies) if level == "PATIENT" else [_study_values(s) for s in studies]
    elif level == "SERIES":
        study_uids = uids(ds, "StudyInstanceUID")
        if len(study_uids) != 1:
            raise BadIdentifier("a SERIES query needs one StudyInstanceUID")
        series = source.find_series(
            study_uids[0],
            series_uids=uids(ds, "SeriesInstanceUID"),
            modality=text_value(ds, "Modality"),
            limit=MAX_MATCHES,
        )
        rows = [_series_values(s) for s in series]
    else:
        series_uids = uids(ds, "SeriesInstanceUID")
        if len(series_uids) != 1:
            raise BadIdentifier("an IMAGE query needs one SeriesInstanceUID")
        study_uid = (uids(ds, "StudyInstanceUID") or ("",))[0]
        instances = source.find_instances(
            study_uid, series_uids[0], sop_uids=uids(ds, "SOPInstanceUID"), limit=MAX_MATCHES
        )
        rows = [_instance_values(i) for i in instances]
    for values in rows:
        out = Dataset()
        out.SpecificCharacterSet = "ISO_IR 192"
        out.QueryRetrieveLevel = level
        _set(out, ds, values)
        out.RetrieveAETitle = ae_title
        yield out


def retrieve_matches(ds: Dataset, source: PriorsSource) -> list[InstanceSummary]:
    """The instances a C-GET/C-MOVE identifier names (patient, study, series or image level).
    BadIdentifier for one we cannot or will not match."""
    level = level_of(ds)
    check_retrieve_scope(ds, level)
    if level == "PATIENT":
        patient_id = text_value(ds, "PatientID")
        studies = source.find_studies(StudyQuery(patient_id=patient_id), limit=MAX_MATCHES)
        out: list[InstanceSummary] = []
        for s in studies:
            out += source.find_instances(s.study_uid, limit=MAX_MATCHES)
        return out
    study_uids = uids(ds, "StudyInstanceUID")
    series_uids = uids(ds, "SeriesInstanceUID") if level in ("SERIES", "IMAGE") else ()
    sop_uids = uids(ds, "SOPInstanceUID") if level == "IMAGE" else ()
    found: list[InstanceSummary] = []
    for study in study_uids:
        for series in series_uids or ("",):
            found += source.find_instances(study, series, sop_uids=sop_uids, limit=MAX_MATCHES)
    return found

"""Index records as DICOM JSON (PS3.18 F.2) for QIDO-RS responses."""

from __future__ import annotations

from typing import Any

from image_store.records import InstanceSummary, SeriesRecord, StudyRecord

JsonObject = dict[str, Any]


def attr(vr: str, *values: object) -> JsonObject:
    present = [v for v in values if v not in (None, "")]
    return {"vr": vr, "Value": present} if present else {"vr": vr}


def person_name(value: str) -> JsonObject:
    if not value:
        return {"vr": "PN"}
    groups = value.split("=")
    name: dict[str, str] = {}
    for key, group in zip(("Alphabetic", "Ideographic", "Phonetic"), groups, strict=False):
        if group:
            name[key] = group
    return {"vr": "PN", "Value": [name]} if name else {"vr": "PN"}


def study_url(base: str, study_uid: str) -> str:
    return f"{base}/dicom-web/studies/{study_uid}"


def study_json(rec: StudyRecord, base: str) -> JsonObject:
    p = rec.patient
    return {
        "00080005": attr("CS", "ISO_IR 192"),
        "00080020": attr("DA", rec.study_date),
        "00080030": attr("TM", rec.study_time),
        "00080050": attr("SH", rec.accession_number),
        "00080061": attr("CS", *rec.modalities),
        "00080090": person_name(rec.referring_physician),
        "00081030": attr("LO", rec.study_description),
        "00081190": attr("UR", study_url(base, rec.study_uid)),
        "00100010": person_name(p.name),
        "00100020": attr("LO", p.patient_id),
        "00100021": attr("LO", p.issuer),
        "00100030": attr("DA", p.birth_date),
        "00100040": attr("CS", p.sex),
        "0020000D": attr("UI", rec.study_uid),
        "00200010": attr("SH", rec.study_id),
        "00201206": attr("IS", rec.number_of_series),
        "00201208": attr("IS", rec.number_of_instances),
    }


def series_json(rec: SeriesRecord, base: str) -> JsonObject:
    return {
        "00080005": attr("CS", "ISO_IR 192"),
        "00080060": attr("CS", rec.modality),
        "0008103E": attr("LO", rec.series_description),
        "00081190": attr("UR", f"{study_url(base, rec.study_uid)}/series/{rec.series_uid}"),
        "00180015": attr("CS", rec.body_part),
        "0020000D": attr("UI", rec.study_uid),
        "0020000E": attr("UI", rec.series_uid),
        "00200011": attr("IS", rec.series_number),
        "00201209": attr("IS", rec.number_of_instances),
    }


def instance_json(rec: InstanceSummary, base: str) -> JsonObject:
    url = f"{study_url(base, rec.study_uid)}/series/{rec.series_uid}/instances/{rec.sop_uid}"
    return {
        "00080016": attr("UI", rec.sop_class_uid),
        "00080018": attr("UI", rec.sop_uid),
        "00081190": attr("UR", url),
        "00083002": attr("UI", rec.transfer_syntax_uid),
        "0020000D": attr("UI", rec.study_uid),
        "0020000E": attr("UI", rec.series_uid),
        "00200013": attr("IS", rec.instance_number),
        "00280008": attr("IS", rec.number_of_frames),
        "00280010": attr("US", rec.rows),
        "00280011": attr("US", rec.columns),
    }

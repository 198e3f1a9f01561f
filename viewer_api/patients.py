"""The master patient index over HTTP: one click for all of a person's studies in the region,
person links (admin), consent grants, and who opened a patient's studies.

    GET    /patients/{id}/studies[?hospital=H&issuer=I]   all linked studies, newest first
    POST   /api/patients/links        {"hospital", "patient_id", "issuer", "id_issuer", "id"}
    DELETE /api/patients/links        {"hospital", "patient_id", "issuer"}
    POST   /api/patients/merge        {"from": {...patient}, "into": {...patient}}
    POST   /api/consents              {"patient": {...}, "grantee_hospital", ...}
    DELETE /api/consents/{id}
    GET    /api/patients/{id}/consents[?hospital=H&issuer=I]
    GET    /api/patients/{id}/access-history[?hospital=H&issuer=I]

A patient is named by their Patient ID at a hospital (the caller's own by default) and its
issuer; regional identifiers (resident ID, health card) arrive only in POST bodies and are
turned into keyed hashes at once.
"""

from __future__ import annotations

import json
import re
from typing import Any

from aiohttp import web

from image_store.audit import study_reads
from image_store.consents import Consent
from image_store.keys import check_hospital
from image_store.persons import InvalidPersonId
from image_store.records import PatientRef, PersonLink, SeriesQuery, StudyQuery, StudyRecord
from viewer_api.auth import Principal
from viewer_api.context import blocking, hospital_names, json_object, principal, services
from viewer_api.dicomweb.access import BREAK_GLASS
from viewer_api.errors import BadRequest, Forbidden, NotFound
from viewer_api.report_store import report_status

_TEXT = re.compile(r"[\w\-. ^]{1,64}")
MAX_CONSENT_HOURS = 24 * 366


def _text(value: object, name: str, *, required: bool = True) -> str:
    if value is None or value == "":
        if required:
            raise BadRequest(f"{name} is required")
        return ""
    if not isinstance(value, str) or not _TEXT.fullmatch(value):
        raise BadRequest(f"{name} must be 1-64 letters, digits, spaces or - . ^ _")
    return value


def _hospital(value: object, name: str = "hospital") -> str:
    text = _text(value, name)
    try:
        check_hospital(text)
    except ValueError as exc:
        raise BadRequest(f"{name}: {exc}") from exc
    return text


async def _body(request: web.Request) -> dict[str, Any]:
    return await json_object(request, 16_384)


def _patient_from(obj: object, who: Principal) -> PatientRef:
    if not isinstance(obj, dict):
        raise BadRequest("patient must be an object with hospital, patient_id and issuer")
    hospital = _hospital(obj.get("hospital") or who.hospital)
    return PatientRef(
        hospital,
        _text(obj.get("patient_id"), "patient_id"),
        _text(obj.get("issuer"), "issuer", required=False),
    )


async def _patient_in_path(request: web.Request) -> PatientRef:
    """The patient of /patients/{id}: at ?hospital= (default the caller's), with ?issuer= or,
    when absent, the one issuer under which that hospital holds the ID."""
    who = principal(request)
    pid = _text(request.match_info["id"], "patient id")
    hospital = _hospital(request.query.get("hospital") or who.hospital)
    if not who.may_see(hospital):
        raise Forbidden("patients of another hospital are looked up at their own hospital")
    if "issuer" in request.query:
        return PatientRef(hospital, pid, _text(request.query["issuer"], "issuer", required=False))
    found = await blocking(
        services(request).index.find_studies,
        StudyQuery(hospitals=frozenset({hospital}), patient_id=pid),
        limit=1000,
    )
    issuers = sorted({s.patient.issuer for s in found if s.patient.patient_id == pid})
    if len(issuers) > 1:
        raise BadRequest(f"patient id {pid} has several issuers here; add ?issuer=")
    return PatientRef(hospital, pid, issuers[0] if issuers else "")


def _staff_of(who: Principal, patient: PatientRef) -> None:
    """Only the region's admins and the staff of the patient's own hospital manage consents."""
    if who.role == "auditor" or not who.may_see(patient.hospital):
        raise Forbidden("only the patient's hospital (or an administrator) may do this")


# -- one click -----------------------------------------------------------------------------


async def patient_studies(request: web.Request) -> web.Response:
    """All studies of the person behind a hospital's patient, from every hospital, newest first;
    other hospitals' studies only under a consent grant or break-glass (else counted)."""
    who = principal(request)
    if who.role == "auditor":
        raise Forbidden("auditors do not read patient records")
    svc = services(request)
    patient = await _patient_in_path(request)
    link = await blocking(svc.index.person_link, patient)
    studies = await blocking(svc.index.find_studies, _studies_query(patient, link), limit=1000)
    if link is None:
        studies = [s for s in studies if s.patient.issuer == patient.issuer]
    reason = request.headers.get(BREAK_GLASS, "").strip()
    if reason and len(reason) < 10:
        raise BadRequest(f"{BREAK_GLASS} must say why (at least 10 characters)")
    out, withheld = [], 0
    names = await hospital_names(request)
    for study in studies:
        access = await _access(request, who, study, link.person_key if link else "", reason)
        if access is None:
            withheld += 1
            continue
        out.append(await _study_entry(request, study, access, names))
    body = {
        "patient": {"hospital": patient.hospital, "patient_id": patient.patient_id},
        "linked": link is not None,
        "studies": out,
        "withheld": withheld,
    }
    return web.json_response(body, dumps=lambda o: json.dumps(o, ensure_ascii=False))


async def _access(
    request: web.Request, who: Principal, study: StudyRecord, person_key: str, reason: str
) -> str | None:
    if who.role == "admin":
        return "admin"
    if who.may_see(study.hospital):
        return "own"
    consents = services(request).consents
    if person_key and consents is not None:
        grant = await blocking(
            consents.covering, person_key, who.hospital, who.subject, study.study_uid
        )
        if grant is not None:
            return f"consent:{grant.id}"
    return "break-glass" if reason else None


async def _study_entry(
    request: web.Request, study: StudyRecord, access: str, names: dict[str, str]
) -> dict[str, Any]:
    svc = services(request)
    series = await blocking(
        svc.index.find_series, SeriesQuery(study_uid=study.study_uid), limit=1000
    )
    base = f"{svc.settings.public_base_url}/dicom-web/studies/{study.study_uid}"
    found = [] if svc.reports is None else await blocking(svc.reports.of_study, study.study_uid)
    status, mutual = report_status(found)
    return {
        "study_uid": study.study_uid,
        "hospital": study.hospital,
        "hospital_name": names.get(study.hospital, study.hospital),
        "study_date": study.study_date,
        "study_time": study.study_time,
        "description": study.study_description,
        "accession_number": study.accession_number,
        "modalities": list(study.modalities),
        "body_parts": sorted({s.body_part for s in series if s.body_part}),
        "number_of_series": study.number_of_series,
        "number_of_instances": study.number_of_instances,
        "thumbnail_url": f"{base}/thumbnail",
        "retrieve_url": base,
        "report_status": status,
        "mutual_recognition": mutual,
        "reports_url": f"{svc.settings.public_base_url}/api/studies/{study.study_uid}/reports",
        "access": access.split(":", 1)[0],
    }


# -- person links (admin) -------------------------------------------------------------------


def _admin(request: web.Request) -> Principal:
    who = principal(request)
    if who.role != "admin":
        raise Forbidden("person links are managed by the region's administrators")
    return who


async def link_patient(request: web.Request) -> web.Response:
    who = _admin(request)
    body = await _body(request)
    patient = _patient_from(body, who)
    svc = services(request)
    if svc.persons is None:
        raise BadRequest("the master patient index is not configured")
    try:
        key = svc.persons.key(_text(body.get("id_issuer"), "id_issuer"), str(body.get("id") or ""))
    except InvalidPersonId as exc:
        raise BadRequest(str(exc)) from exc
    await blocking(svc.index.link_patient, patient, key, f"admin:{who.actor}")
    return web.json_response({"linked": True, "hospital": patient.hospital}, status=201)


async def unlink_patient(request: web.Request) -> web.Response:
    who = _admin(request)
    patient = _patient_from(await _body(request), who)
    if not await blocking(services(request).index.unlink_patient, patient):
        raise NotFound("that patient is not linked")
    return web.json_response({"linked": False})


async def merge_persons(request: web.Request) -> web.Response:
    """Two patients found to be one person: every link of the first's person moves to the
    second's."""
    who = _admin(request)
    body = await _body(request)
    source, target = _patient_from(body.get("from"), who), _patient_from(body.get("into"), who)
    index = services(request).index
    a = await blocking(index.person_link, source)
    b = await blocking(index.person_link, target)
    if a is None or b is None:
        raise NotFound("both patients must be linked to a person before a merge")
    moved = await blocking(index.merge_persons, a.person_key, b.person_key)
    return web.json_response({"moved": moved})


# -- consent ---------------------------------------------------------------------------------


async def grant_consent(request: web.Request) -> web.Response:
    who = principal(request)
    body = await _body(request)
    patient = _patient_from(body.get("patient"), who)
    _staff_of(who, patient)
    svc = services(request)
    if svc.consents is None:
        raise BadRequest("consent grants are not configured")
    link = await blocking(svc.index.person_link, patient)
    if link is None:
        raise BadRequest("the patient is not linked to a regional person yet")
    ttl = body.get("ttl_hours", 720)
    if not isinstance(ttl, int) or isinstance(ttl, bool) or not 1 <= ttl <= MAX_CONSENT_HOURS:
        raise BadRequest(f"ttl_hours must be a whole number 1..{MAX_CONSENT_HOURS}")
    study_uid = body.get("study_uid") or ""
    if study_uid:
        from image_store.keys import is_valid_uid

        if not isinstance(study_uid, str) or not is_valid_uid(study_uid):
            raise BadRequest("study_uid must be a UID")
    consent = await blocking(
        svc.consents.grant,
        link.person_key,
        _hospital(body.get("grantee_hospital"), "grantee_hospital"),
        grantee_subject=_text(body.get("grantee_subject"), "grantee_subject", required=False),
        study_uid=study_uid,
        created_by=who.actor,
        ttl_s=ttl * 3600,
    )
    return web.json_response(consent.as_json(), status=201)


async def _consent_for_staff(request: web.Request) -> Consent:
    svc = services(request)
    if svc.consents is None:
        raise NotFound("no consent grants here")
    consent_id = request.match_info["id"]
    if not re.fullmatch(r"[A-Za-z0-9_-]{16,64}", consent_id):
        raise BadRequest("malformed consent id")
    consent = await blocking(svc.consents.get, consent_id)
    if consent is None:
        raise NotFound("no such consent")
    who = principal(request)
    if who.role != "admin":
        links = await blocking(svc.index.linked_patients, consent.person_key)
        if who.role == "auditor" or not any(who.may_see(x.patient.hospital) for x in links):
            raise Forbidden("only a hospital holding the patient may revoke this consent")
    return consent


async def revoke_consent(request: web.Request) -> web.Response:
    consent = await _consent_for_staff(request)
    await blocking(services(request).consents.revoke, consent.id)  # type: ignore[union-attr]
    return web.json_response({"id": consent.id, "revoked": True})


async def _managed_patient(request: web.Request) -> tuple[PatientRef, PersonLink | None]:
    """The patient of the path, for the staff of its hospital, and its person link."""
    patient = await _patient_in_path(request)
    _staff_of(principal(request), patient)
    return patient, await blocking(services(request).index.person_link, patient)


def _studies_query(patient: PatientRef, link: PersonLink | None) -> StudyQuery:
    """The person's studies at every hospital; unlinked, the patient's at its hospital."""
    if link is not None:
        return StudyQuery(person_key=link.person_key)
    return StudyQuery(hospitals=frozenset({patient.hospital}), patient_id=patient.patient_id)


async def patient_consents(request: web.Request) -> web.Response:
    svc = services(request)
    _, link = await _managed_patient(request)
    grants = (
        []
        if link is None or svc.consents is None
        else await blocking(svc.consents.of_person, link.person_key)
    )
    return web.json_response([g.as_json() for g in grants])


async def access_history(request: web.Request) -> web.Response:
    """Who opened this person's studies, from the audit log (newest first)."""
    svc = services(request)
    patient, link = await _managed_patient(request)
    query = _studies_query(patient, link)
    studies = {s.study_uid for s in await blocking(svc.index.find_studies, query, limit=1000)}

    def scan() -> list[dict[str, Any]]:
        return study_reads(svc.audit.iter_events(), studies)

    return web.json_response(await blocking(scan))

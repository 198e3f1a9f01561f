"""The master patient index over HTTP: one click for all of a person's studies in the region,
person links (admin) and their reviews, consent (the patient's), who opened a patient's
studies (break-glass reads are reviewed in viewer_api.audit_review).

    GET    /patients/{id}/studies[?hospital=H&issuer=I]   all linked studies, newest first
    POST   /api/patients/links        {"hospital", "patient_id", "issuer", "id_issuer", "id"}
    DELETE /api/patients/links        {"hospital", "patient_id", "issuer"}
    POST   /api/patients/merge        {"from": {...patient}, "into": {...patient}}
    GET    /api/admin/identity-reviews[?all=1]          person links held for review
    POST   /api/admin/identity-reviews/{id}/approve|reject
    POST   /api/consents              {"patient": {...}, "code": "12345678"} (the patient's code)
    POST   /api/consent-requests      {"patient": {...}, "study_uid", "only_me", "ttl_hours"}
    GET    /api/patients/{id}/consent-requests[?hospital=H&issuer=I]
    DELETE /api/consents/{id}
    GET    /api/patients/{id}/consents[?hospital=H&issuer=I]
    GET    /api/patients/{id}/access-history[?hospital=H&issuer=I]

A patient is named by their Patient ID at a hospital (the caller's own by default) and its
issuer; regional identifiers (resident ID, health card) arrive only in POST bodies and are
turned into keyed hashes at once.

Who may do what with a person (see :func:`_holds_person`): only links from trusted sources
count (the hospital's gateway, an administrator). Staff of a hospital holding such a link of
the person request consent, enter the patient's consent code, list and revoke the consents
granted to their own hospital, and see the person's access history; a hospital without one
sees its own records only. Staff never grant consent themselves: the patient grants it on their
own cloud-film link (viewer_api.film_patient) or by a one-time code. Administrators see and
revoke every consent.
"""

from __future__ import annotations

import json
import re
import time
from typing import Any

from aiohttp import web

from image_store.access_rules import decide_access
from image_store.audit import AuditEvent
from image_store.consents import Consent
from image_store.keys import check_hospital, is_valid_uid
from image_store.persons import InvalidPersonId
from image_store.records import PatientRef, PersonLink, SeriesQuery, StudyQuery, StudyRecord
from viewer_api.auth import Principal
from viewer_api.context import VIA, blocking, hospital_names, json_object, principal, services
from viewer_api.dicomweb.access import break_glass_reason, consent_for, reader_of, trusted_link
from viewer_api.errors import BadRequest, Forbidden, NotFound, ViewerError
from viewer_api.report_store import report_status

_TEXT = re.compile(r"[\w\-. ^]{1,64}")
MAX_CONSENT_HOURS = 24 * 366
STAFF = ("radiologist", "clinician")
HOW_TO_GET_CONSENT = (
    "consent comes from the patient: ask them to grant it on their cloud-film page, or to show "
    'you a consent code there and send it here as {"patient": ..., "code": ...}, or send '
    "them a request (POST /api/consent-requests)"
)


class TooManyTries(ViewerError):
    status = 429


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


async def _holds_person(request: web.Request, who: Principal, person_key: str) -> bool:
    """True when ``who`` is an admin, or works at a hospital whose record of the person was
    linked by a trusted source (the person's own hospital)."""
    if who.role == "admin":
        return True
    if who.role not in STAFF:
        return False
    links = await blocking(services(request).index.linked_patients, person_key)
    return any(x.trusted and x.patient.hospital == who.hospital for x in links)


async def _own_person(request: web.Request, body: dict[str, Any]) -> tuple[Principal, str]:
    """(caller, person key) for a clinician or radiologist naming a patient of their own
    hospital that a trusted source linked to a person; Forbidden/BadRequest otherwise."""
    who = principal(request)
    if who.role not in STAFF:
        raise Forbidden("consent is requested and entered by a hospital's clinicians")
    patient = _patient_from(body.get("patient"), who)
    if patient.hospital != who.hospital:
        raise Forbidden("name the patient by your own hospital's Patient ID")
    link = await trusted_link(request, patient)
    if link is None:
        raise BadRequest("the patient is not linked to a regional person by a trusted source")
    return who, link.person_key


# -- one click -----------------------------------------------------------------------------


async def patient_studies(request: web.Request) -> web.Response:
    """All studies of the person behind a hospital's patient, from every hospital, newest first;
    other hospitals' studies only under a consent grant or break-glass (else counted, when a
    trusted source linked the patient; an untrusted link counts as none). Every study shown by
    break-glass is audited as a read of that study, flagged with the reason."""
    who = principal(request)
    if who.role == "auditor":
        raise Forbidden("auditors do not read patient records")
    reason = break_glass_reason(request)
    svc = services(request)
    patient = await _patient_in_path(request)
    link = await trusted_link(request, patient)
    studies = await blocking(svc.index.find_studies, _studies_query(patient, link), limit=1000)
    if link is None:
        studies = [s for s in studies if s.patient.issuer == patient.issuer]
    out, withheld, glass = [], 0, []
    names = await hospital_names(request)
    for study in studies:
        access = await _access(request, who, study, link.person_key if link else "", reason)
        if access is None:
            withheld += 1
            continue
        if access == "break-glass":
            glass.append(study.study_uid)
        out.append(await _study_entry(request, study, access, names))
    if glass:
        request[VIA] = f"break-glass:{reason}"
        await _audit_break_glass(request, who, glass, reason)
    body = {
        "patient": {"hospital": patient.hospital, "patient_id": patient.patient_id},
        "linked": link is not None,
        "studies": out,
        "withheld": withheld,
    }
    return web.json_response(body, dumps=lambda o: json.dumps(o, ensure_ascii=False))


async def _audit_break_glass(
    request: web.Request, who: Principal, study_uids: list[str], reason: str
) -> None:
    """One audit event per study a one-click call showed by break-glass (resource
    ``/patients/-/studies/<uid>``), so the person's history and the auditors' review list it."""
    audit = services(request).audit
    now = time.time()
    for uid in study_uids:
        event = AuditEvent(
            ts=now,
            actor=who.actor,
            hospital=who.hospital,
            role=who.role,
            action="ONE-CLICK",
            resource=f"/patients/-/studies/{uid}",
            status=200,
            remote=request.remote or "",
            via=f"break-glass:{reason}",
        )
        await blocking(audit.append, event)


async def _access(
    request: web.Request, who: Principal, study: StudyRecord, person_key: str, reason: str
) -> str | None:
    """'admin', 'own', 'consent:<id>' or 'break-glass' for ``study`` (None: withheld)."""
    reader = reader_of(request)
    consent_id = await consent_for(request, reader, study, person_key)
    access = decide_access(reader, study.hospital, consent_id=consent_id, break_glass_reason=reason)
    if access is None:
        return None
    return "break-glass" if access.kind == "break-glass" else str(access)


async def _study_entry(
    request: web.Request, study: StudyRecord, access: str, names: dict[str, str]
) -> dict[str, Any]:
    svc = services(request)
    series = await blocking(
        svc.index.find_series, SeriesQuery(study_uid=study.study_uid), limit=1000
    )
    base = f"{svc.settings.public_base_url}/dicom-web/studies/{study.study_uid}"
    found = await blocking(svc.reports.of_study, study.study_uid)
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


async def identity_reviews(request: web.Request) -> web.Response:
    """Person links held for review (pending; every one with ``?all=1``), oldest first."""
    _admin(request)
    pending_only = request.query.get("all", "") not in ("1", "true")
    found = await blocking(services(request).index.link_reviews, pending_only=pending_only)
    return web.json_response(
        [
            {
                "id": r.id,
                "hospital": r.patient.hospital,
                "patient_id": r.patient.patient_id,
                "issuer": r.patient.issuer,
                "linked_now": bool(r.current_key),
                "same_person_as": [
                    {"hospital": x.patient.hospital, "patient_id": x.patient.patient_id}
                    for x in await blocking(services(request).index.linked_patients, r.person_key)
                ],
                "source": r.source,
                "reason": r.reason,
                "created_at": r.created_at,
                "state": r.state,
                "decided_by": r.decided_by,
            }
            for r in found
        ]
    )


async def decide_identity_review(request: web.Request) -> web.Response:
    """Approve (the held link is applied) or reject one held link; audited with the decision."""
    who = _admin(request)
    raw = request.match_info["id"]
    if not raw.isdigit() or len(raw) > 18:
        raise NotFound("no such pending review")
    approve = request.match_info["action"] == "approve"
    review = await blocking(
        services(request).index.decide_link_review, int(raw), approve=approve, by=who.actor
    )
    if review is None:
        raise NotFound("no such pending review")
    return web.json_response({"id": review.id, "state": review.state})


# -- consent ---------------------------------------------------------------------------------


def _ttl_hours(body: dict[str, Any], default: int = 720) -> int:
    ttl = body.get("ttl_hours", default)
    if not isinstance(ttl, int) or isinstance(ttl, bool) or not 1 <= ttl <= MAX_CONSENT_HOURS:
        raise BadRequest(f"ttl_hours must be a whole number 1..{MAX_CONSENT_HOURS}")
    return ttl


def _study_uid(body: dict[str, Any]) -> str:
    study_uid = body.get("study_uid") or ""
    if study_uid and (not isinstance(study_uid, str) or not is_valid_uid(study_uid)):
        raise BadRequest("study_uid must be a UID")
    return str(study_uid)


async def grant_consent(request: web.Request) -> web.Response:
    """Record the patient's consent from the one-time code their page showed: a grant to the
    caller's hospital (and to the caller alone if the patient chose so). Without a code:
    403, staff do not grant consent."""
    body = await _body(request)
    code = body.get("code")
    if code is None:
        raise Forbidden(HOW_TO_GET_CONSENT)
    if not isinstance(code, str) or not re.fullmatch(r"[0-9]{8}", code):
        raise BadRequest("code must be the 8 digits the patient's page shows")
    who, person_key = await _own_person(request, body)
    svc = services(request)
    outcome = await blocking(
        svc.consents.redeem_code,
        person_key,
        code,
        hospital=who.hospital,
        subject=who.subject,
        by=who.actor,
    )
    if outcome.reason == "burnt":
        raise TooManyTries("too many wrong codes: ask the patient to show a new one")
    if outcome.consent is None:
        raise Forbidden(
            f"wrong or expired consent code ({outcome.tries_left} tries left); "
            "ask the patient to show the code again"
        )
    return web.json_response(outcome.consent.as_json(), status=201)


async def request_consent(request: web.Request) -> web.Response:
    """A clinician asks the patient for consent for their hospital (``only_me``: for the
    caller alone; ``study_uid``: one study); the request waits on the patient's page."""
    body = await _body(request)
    who, person_key = await _own_person(request, body)
    svc = services(request)
    only_me = body.get("only_me", False)
    if not isinstance(only_me, bool):
        raise BadRequest("only_me must be true or false")
    req = await blocking(
        svc.consents.request,
        person_key,
        who.hospital,
        subject=who.subject if only_me else "",
        study_uid=_study_uid(body),
        requested_by=who.actor,
        ttl_s=_ttl_hours(body) * 3600,
    )
    return web.json_response(req.as_json(), status=201)


async def consent_requests(request: web.Request) -> web.Response:
    """The requests the caller's hospital sent for this patient (admins: all), newest first."""
    svc = services(request)
    who = principal(request)
    _, link = await _managed_patient(request)
    if link is None:
        return web.json_response([])
    found = await blocking(svc.consents.requests_of, link.person_key)
    mine = [r for r in found if who.role == "admin" or r.hospital == who.hospital]
    return web.json_response([r.as_json() for r in mine])


async def _consent_for_staff(request: web.Request) -> Consent:
    """The consent of the path if the caller may manage it: admins any; staff only one granted
    to their own hospital, for a person their hospital holds a trusted link of. Anything else
    is the same 404 as an unknown id."""
    svc = services(request)
    consent_id = request.match_info["id"]
    if not re.fullmatch(r"[A-Za-z0-9_-]{16,64}", consent_id):
        raise BadRequest("malformed consent id")
    consent = await blocking(svc.consents.get, consent_id)
    who = principal(request)
    if consent is None or not (
        who.role == "admin"
        or (
            consent.grantee_hospital == who.hospital
            and await _holds_person(request, who, consent.person_key)
        )
    ):
        raise NotFound("no such consent of your hospital")
    return consent


async def revoke_consent(request: web.Request) -> web.Response:
    consent = await _consent_for_staff(request)
    await blocking(services(request).consents.revoke, consent.id)
    return web.json_response({"id": consent.id, "revoked": True})


async def _managed_patient(request: web.Request) -> tuple[PatientRef, PersonLink | None]:
    """The patient of the path, for the staff of its hospital, and its trusted person link."""
    patient = await _patient_in_path(request)
    _staff_of(principal(request), patient)
    return patient, await trusted_link(request, patient)


def _studies_query(patient: PatientRef, link: PersonLink | None) -> StudyQuery:
    """The person's studies at every hospital; unlinked, the patient's at its hospital."""
    if link is not None:
        return StudyQuery(person_key=link.person_key)
    return StudyQuery(hospitals=frozenset({patient.hospital}), patient_id=patient.patient_id)


async def patient_consents(request: web.Request) -> web.Response:
    """The person's consents granted to the caller's hospital (admins: all of them)."""
    svc = services(request)
    who = principal(request)
    _, link = await _managed_patient(request)
    grants = [] if link is None else await blocking(svc.consents.of_person, link.person_key)
    mine = [g for g in grants if who.role == "admin" or g.grantee_hospital == who.hospital]
    return web.json_response([g.as_json() for g in mine])


async def access_history(request: web.Request) -> web.Response:
    """Who opened this person's studies, from the audit log (newest first): every hospital's
    studies of the person for its own hospital (a trusted link), the hospital's own studies of
    the patient otherwise."""
    svc = services(request)
    patient, link = await _managed_patient(request)
    query = _studies_query(patient, link)
    studies = {s.study_uid for s in await blocking(svc.index.find_studies, query, limit=1000)}

    def scan() -> list[dict[str, Any]]:
        return svc.audit.study_reads(studies)

    return web.json_response(await blocking(scan))

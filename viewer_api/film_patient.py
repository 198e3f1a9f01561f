"""What the patient does with their own cloud-film link (a link with ``audience='patient'``):
pass the studies on to a doctor with a link of their own, see who opened their studies, and
give, refuse and revoke consent. A doctor's link (made here) can do none of this.

``GET    /film/{token}/api/links``              the links the patient made, newest first
``POST   /film/{token}/api/links``              a new doctor's link (``study_uid`` or all of
                                                the link's studies, ``ttl_hours``, ``code``,
                                                ``allow_download``); never more than the
                                                patient's own link allows or outliving it
``DELETE /film/{token}/api/links/{id}``         revoke one of them
``GET    /film/{token}/api/links/{id}/qr.svg``  its QR code (also ``qr.png``)
``GET    /film/{token}/api/history``            who opened the patient's studies (audit log;
                                                break-glass reads flagged, with the reason)
``GET    /film/{token}/api/consents``           the patient's consent grants
``POST   /film/{token}/api/consents/{id}/revoke``  revoke one
``GET    /film/{token}/api/me``                 whether this link gives consent, requests waiting
``GET    /film/{token}/api/hospitals``          the region's registered hospitals
``POST   /film/{token}/api/consents``           grant: ``hospital`` (registered), optional
                                                ``subject`` (one clinician), ``study_uid``,
                                                ``ttl_hours``
``GET    /film/{token}/api/consent-requests``   staff's requests, newest first
``POST   /film/{token}/api/consent-requests/{id}/approve|decline``
``POST   /film/{token}/api/consent-code``       a one-time code for a clinician to enter
                                                (``only_that_clinician``, ``study_uid``,
                                                ``ttl_hours`` of the grant it makes)

Granting, approving and codes need the patient's own link of patient scope (not a one-study
link, not a link shared with a doctor) whose patient a trusted source linked to a person.
"""

from __future__ import annotations

import json
import math
import re
import time
from collections.abc import Iterable
from typing import Any

from aiohttp import web

from image_store.consents import CODE_TTL_S
from image_store.keys import is_valid_uid
from image_store.records import PatientRef, StudyQuery
from image_store.state.records import ShareLink
from viewer_api.context import ACTOR, blocking, hospital_names, json_object, services
from viewer_api.errors import BadRequest, Forbidden, NotFound
from viewer_api.film import (
    code_of,
    flag_of,
    link_id_param,
    link_json,
    qr_response,
    ttl_hours_of,
)
from viewer_api.film_link import link_studies, open_link_or_error
from viewer_api.registry import check_subject

MAX_GRANT_HOURS = 24 * 366


async def _patient_link(request: web.Request) -> ShareLink:
    link = await open_link_or_error(request)
    if link.audience != "patient":
        raise Forbidden("only the patient's own link can do this")
    return link


async def _child(request: web.Request, link: ShareLink) -> ShareLink:
    child = await blocking(services(request).shares.get, link_id_param(request))
    if child is None or child.parent_id != link.id:
        raise NotFound("no such link of yours")
    return child


def _public(request: web.Request, link: ShareLink, code: str | None = None) -> dict[str, Any]:
    out = link_json(request, link, code)
    token = request.match_info["token"]
    # the staff QR URLs need a bearer token; the patient gets theirs under their own link
    out["qr_svg"] = f"/film/{token}/api/links/{link.id}/qr.svg"
    out["qr_png"] = f"/film/{token}/api/links/{link.id}/qr.png"
    return out


async def list_links(request: web.Request) -> web.Response:
    link = await _patient_link(request)
    children = await blocking(services(request).shares.children, link.id)
    return web.json_response([_public(request, c) for c in children])


async def create_link(request: web.Request) -> web.Response:
    link = await _patient_link(request)
    body = await json_object(request, 4096)
    left_h = max(1, math.floor((link.expires_at - time.time()) / 3600))
    ttl_hours = ttl_hours_of(body, min(72, left_h), most=left_h)
    allow_download = flag_of(body, "allow_download")
    if allow_download and not link.allow_download:
        raise Forbidden("your link does not allow downloads, so a link made from it cannot")
    code, generated = code_of(body)
    study_uid = body.get("study_uid", "")
    scope = link.scope
    if study_uid:
        if not isinstance(study_uid, str) or not is_valid_uid(study_uid):
            raise BadRequest("study_uid must be a UID (1-64 digits and dots)")
        if study_uid not in {s.study_uid for s in await link_studies(request, link)}:
            raise NotFound("that study is not in your link")
        scope = "study"
    else:
        study_uid = link.study_uid
    child = await blocking(
        services(request).shares.create,
        study_uid,
        link.hospital,
        f"patient:share:{link.id}",
        min(link.expires_at, time.time() + ttl_hours * 3600),
        scope=scope,
        patient_id=link.patient_id,
        issuer=link.issuer,
        allow_download=allow_download,
        code=code,
        audience="doctor",
        parent_id=link.id,
    )
    request[ACTOR] = f"share:{link.id} share:{child.id}"
    return web.json_response(_public(request, child, code if generated else None), status=201)


async def revoke_link(request: web.Request) -> web.Response:
    link = await _patient_link(request)
    child = await _child(request, link)
    await blocking(services(request).shares.revoke, child.id)
    return web.Response(status=204)


async def link_qr(request: web.Request) -> web.Response:
    link = await _patient_link(request)
    return await qr_response(request, await _child(request, link))


def summarise(
    reads: Iterable[dict[str, Any]], own: dict[str, str], names: dict[str, str] | None = None
) -> list[dict[str, Any]]:
    """Reads grouped per reader, study and day (a scroll through a series is one visit), newest
    first; ``own`` names the patient's links ('share:<id>' -> 'you' | 'doctor link'), ``names``
    the hospitals. A group with any break-glass read is flagged, with its reason."""
    names = names or {}
    groups: dict[tuple[str, str, str], dict[str, Any]] = {}
    for r in reads:
        day = time.strftime("%Y-%m-%d", time.localtime(r["ts"]))
        key = (r["actor"], r["study_uid"], day)
        g = groups.get(key)
        if g is None:
            actor = str(r["actor"]).split(" ")[0]
            g = groups[key] = {
                "day": day,
                "first": r["ts"],
                "last": r["ts"],
                "study_uid": r["study_uid"],
                "hospital": r["hospital"],
                "hospital_name": names.get(r["hospital"], r["hospital"]),
                "role": r["role"],
                "who": own.get(actor, "link" if actor.startswith("share:") else "staff"),
                "break_glass": False,
                "reason": "",
                "requests": 0,
            }
        via = str(r.get("via", ""))
        if via.startswith("break-glass"):
            g["break_glass"] = True
            g["reason"] = via.partition(":")[2]
        g["first"] = min(g["first"], r["ts"])
        g["last"] = max(g["last"], r["ts"])
        g["requests"] += 1
    return sorted(groups.values(), key=lambda g: g["last"], reverse=True)


async def history(request: web.Request) -> web.Response:
    """Who opened the patient's studies: the link's studies and, for a patient link whose
    patient a trusted source linked, the person's studies at every hospital (break-glass reads
    of studies the link cannot open included)."""
    link = await _patient_link(request)
    svc = services(request)
    studies = {s.study_uid for s in await link_studies(request, link)}
    key = await _person_key(request, link) if link.scope == "patient" else None
    if key is not None:
        found = await blocking(svc.index.find_studies, StudyQuery(person_key=key), limit=1000)
        studies |= {s.study_uid for s in found}
    children = await blocking(svc.shares.children, link.id)
    own = {f"share:{link.id}": "you", **{f"share:{c.id}": "doctor link" for c in children}}
    names = await hospital_names(request)

    def scan() -> list[dict[str, Any]]:
        return summarise(svc.audit.study_reads(studies), own, names)

    return web.json_response(
        await blocking(scan), dumps=lambda o: json.dumps(o, ensure_ascii=False)
    )


async def _person_key(request: web.Request, link: ShareLink) -> str | None:
    svc = services(request)
    if link.scope == "patient":
        ref = PatientRef(link.hospital, link.patient_id, link.issuer)
    else:
        study = await blocking(svc.index.get_study, link.study_uid)
        if study is None:
            return None
        ref = PatientRef(study.hospital, study.patient.patient_id, study.patient.issuer)
    person = await blocking(svc.index.person_link, ref)
    return None if person is None or not person.trusted else person.person_key


async def consents(request: web.Request) -> web.Response:
    """Every consent the patient gave (to any hospital), with the hospitals' names."""
    link = await _patient_link(request)
    svc = services(request)
    key = await _person_key(request, link)
    grants = []
    if key is not None:
        grants = await blocking(svc.consents.of_person, key)
    names = await hospital_names(request)
    out = [
        {**g.as_json(), "hospital_name": names.get(g.grantee_hospital, g.grantee_hospital)}
        for g in grants
    ]
    return web.json_response(out, dumps=lambda o: json.dumps(o, ensure_ascii=False))


async def revoke_consent(request: web.Request) -> web.Response:
    link = await _patient_link(request)
    svc = services(request)
    consent_id = request.match_info["id"]
    if not re.fullmatch(r"[A-Za-z0-9_-]{1,64}", consent_id):
        raise NotFound("no such consent")
    grant = await blocking(svc.consents.get, consent_id)
    key = await _person_key(request, link)
    if grant is None or key is None or grant.person_key != key:
        raise NotFound("no such consent of yours")
    await blocking(svc.consents.revoke, grant.id)
    return web.json_response({"id": grant.id, "revoked": True})


# -- the patient gives consent -----------------------------------------------------------------


async def _owner(request: web.Request) -> tuple[ShareLink, str]:
    """(link, person key) for the patient's own link of patient scope whose patient a trusted
    source linked to a person; Forbidden for any other link."""
    link = await _patient_link(request)
    if link.parent_id is not None or link.scope != "patient":
        raise Forbidden("consent is given from the patient's own link to all their studies")
    key = await _person_key(request, link)
    if key is None:
        raise Forbidden("this link's patient is not in the region's patient index yet")
    return link, key


async def me(request: web.Request) -> web.Response:
    """What the patient's page may offer on this link: whether it gives consent (the patient's
    own link to all their studies, linked by a trusted source) and how many staff requests
    wait for an answer."""
    link = await _patient_link(request)
    may, pending = False, 0
    if link.parent_id is None and link.scope == "patient":
        key = await _person_key(request, link)
        if key is not None:
            may = True
            found = await blocking(services(request).consents.requests_of, key)
            pending = sum(1 for r in found if r.state == "pending")
    return web.json_response({"may_give_consent": may, "pending_requests": pending})


async def hospitals(request: web.Request) -> web.Response:
    """The region's registered hospitals (id and name), to choose whom to give consent."""
    await _patient_link(request)
    found = await blocking(services(request).registry.hospitals)
    return web.json_response(
        [{"id": h.id, "name": h.name} for h in found],
        dumps=lambda o: json.dumps(o, ensure_ascii=False),
    )


async def _person_study(request: web.Request, key: str, body: dict[str, Any]) -> str:
    """``study_uid`` of the body ('' for all studies); it must be one of the person's."""
    study_uid = body.get("study_uid") or ""
    if not study_uid:
        return ""
    if not isinstance(study_uid, str) or not is_valid_uid(study_uid):
        raise BadRequest("study_uid must be a UID (1-64 digits and dots)")
    found = await blocking(
        services(request).index.find_studies, StudyQuery(person_key=key), limit=1000
    )
    if study_uid not in {s.study_uid for s in found}:
        raise NotFound("that study is not one of yours")
    return study_uid


async def grant(request: web.Request) -> web.Response:
    """The patient lets a registered hospital (or one clinician there) read their studies
    (all, or one) for ``ttl_hours``."""
    link, key = await _owner(request)
    body = await json_object(request, 4096)
    hospital = body.get("hospital")
    names = await hospital_names(request)
    if not isinstance(hospital, str) or hospital not in names:
        raise BadRequest("hospital must be one of the region's registered hospitals")
    subject = body.get("subject") or ""
    if subject:
        if not isinstance(subject, str):
            raise BadRequest("subject must be a user name")
        try:
            check_subject(subject)
        except ValueError as exc:
            raise BadRequest(str(exc)) from exc
    ttl = ttl_hours_of(body, 720, most=MAX_GRANT_HOURS)
    study_uid = await _person_study(request, key, body)
    consent = await blocking(
        services(request).consents.grant,
        key,
        hospital,
        grantee_subject=subject,
        study_uid=study_uid,
        created_by=f"patient:share:{link.id}",
        ttl_s=ttl * 3600,
    )
    out = {**consent.as_json(), "hospital_name": names[hospital]}
    return web.json_response(out, status=201, dumps=lambda o: json.dumps(o, ensure_ascii=False))


async def consent_requests(request: web.Request) -> web.Response:
    """Staff's requests for the patient's consent, newest first, with the hospitals' names."""
    _, key = await _owner(request)
    found = await blocking(services(request).consents.requests_of, key)
    names = await hospital_names(request)
    out = [{**r.as_json(), "hospital_name": names.get(r.hospital, r.hospital)} for r in found]
    return web.json_response(out, dumps=lambda o: json.dumps(o, ensure_ascii=False))


async def decide_request(request: web.Request) -> web.Response:
    """Approve (the requested grant is made) or decline one of the patient's pending requests."""
    link, key = await _owner(request)
    consents = services(request).consents
    request_id = request.match_info["id"]
    if not re.fullmatch(r"[A-Za-z0-9_-]{16,64}", request_id):
        raise NotFound("no such request of yours")
    found = await blocking(consents.get_request, request_id)
    if found is None or found.person_key != key:
        raise NotFound("no such request of yours")
    decided = await blocking(
        consents.decide,
        request_id,
        approve=request.match_info["action"] == "approve",
        by=f"patient:share:{link.id}",
    )
    if decided is None:
        raise NotFound("that request is no longer pending")
    return web.json_response(decided.as_json())


async def consent_code(request: web.Request) -> web.Response:
    """A one-time code (8 digits, 10 minutes, single use) the patient shows a clinician; the
    clinician's entry makes a grant to their hospital (``only_that_clinician``: to them
    alone) for ``study_uid`` or all studies, for ``ttl_hours``."""
    link, key = await _owner(request)
    body = await json_object(request, 4096)
    only = flag_of(body, "only_that_clinician")
    ttl = ttl_hours_of(body, 720, most=MAX_GRANT_HOURS)
    study_uid = await _person_study(request, key, body)
    code, expires_at = await blocking(
        services(request).consents.issue_code,
        key,
        bind_subject=only,
        study_uid=study_uid,
        ttl_s=ttl * 3600,
        created_by=f"patient:share:{link.id}",
    )
    return web.json_response(
        {"code": code, "expires_at": expires_at, "valid_s": CODE_TTL_S}, status=201
    )

"""What the patient does with their own cloud-film link (a link with ``audience='patient'``):
pass the studies on to a doctor with a link of their own, see who opened their studies, and
revoke a consent they gave. A doctor's link (made here) can do none of this.

``GET    /film/{token}/api/links``              the links the patient made, newest first
``POST   /film/{token}/api/links``              a new doctor's link (``study_uid`` or all of
                                                the link's studies, ``ttl_hours``, ``code``,
                                                ``allow_download``); never more than the
                                                patient's own link allows or outliving it
``DELETE /film/{token}/api/links/{id}``         revoke one of them
``GET    /film/{token}/api/links/{id}/qr.svg``  its QR code (also ``qr.png``)
``GET    /film/{token}/api/history``            who opened the link's studies (audit log)
``GET    /film/{token}/api/consents``           the patient's consent grants
``POST   /film/{token}/api/consents/{id}/revoke``  revoke one
"""

from __future__ import annotations

import math
import re
import time
from collections.abc import Iterable
from typing import Any

from aiohttp import web

from image_store.audit import study_reads
from image_store.keys import is_valid_uid
from image_store.records import PatientRef
from viewer_api.context import ACTOR, blocking, json_object, services
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
from viewer_api.share import ShareLink


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


def summarise(reads: Iterable[dict[str, Any]], own: dict[str, str]) -> list[dict[str, Any]]:
    """Reads grouped per reader, study and day (a scroll through a series is one visit), newest
    first; ``own`` names the patient's links ('share:<id>' -> 'you' | 'doctor link')."""
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
                "role": r["role"],
                "who": own.get(actor, "link" if actor.startswith("share:") else "staff"),
                "break_glass": str(r.get("via", "")).startswith("break-glass"),
                "requests": 0,
            }
        g["first"] = min(g["first"], r["ts"])
        g["last"] = max(g["last"], r["ts"])
        g["requests"] += 1
    return sorted(groups.values(), key=lambda g: g["last"], reverse=True)


async def history(request: web.Request) -> web.Response:
    link = await _patient_link(request)
    svc = services(request)
    studies = {s.study_uid for s in await link_studies(request, link)}
    children = await blocking(svc.shares.children, link.id)
    own = {f"share:{link.id}": "you", **{f"share:{c.id}": "doctor link" for c in children}}

    def scan() -> list[dict[str, Any]]:
        return summarise(study_reads(svc.audit.iter_events(), studies), own)

    return web.json_response(await blocking(scan))


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
    return None if person is None else person.person_key


async def consents(request: web.Request) -> web.Response:
    link = await _patient_link(request)
    svc = services(request)
    key = await _person_key(request, link)
    grants = []
    if key is not None and svc.consents is not None:
        grants = await blocking(svc.consents.of_person, key)
    return web.json_response([g.as_json() for g in grants])


async def revoke_consent(request: web.Request) -> web.Response:
    link = await _patient_link(request)
    svc = services(request)
    consent_id = request.match_info["id"]
    if not re.fullmatch(r"[A-Za-z0-9_-]{1,64}", consent_id) or svc.consents is None:
        raise NotFound("no such consent")
    grant = await blocking(svc.consents.get, consent_id)
    key = await _person_key(request, link)
    if grant is None or key is None or grant.person_key != key:
        raise NotFound("no such consent of yours")
    await blocking(svc.consents.revoke, grant.id)
    return web.json_response({"id": grant.id, "revoked": True})

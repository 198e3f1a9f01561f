"""Share links, the staff side: create a link for a study or for all of a patient's studies,
print its QR code, look at it, clear its lockout, revoke it. (The pages a link opens are in
``film_viewer``; what the patient does with their link is in ``film_patient``.)
"""

from __future__ import annotations

import datetime as dt
import io
import re
import secrets
import time
from typing import Any

import segno
from aiohttp import web

from image_store.keys import is_valid_uid
from image_store.records import StudyQuery
from image_store.state.records import ShareLink
from viewer_api.auth import Principal
from viewer_api.context import ACTOR, blocking, json_object, principal, services
from viewer_api.dicomweb.access import visible_study
from viewer_api.errors import BadRequest, Forbidden, NotFound
from viewer_api.share import CODE_RE

MAX_TTL_HOURS = 8760
_PATIENT_TEXT = re.compile(r"[A-Za-z0-9 ._^-]{1,64}")


def ttl_hours_of(body: dict[str, Any], default: int, most: int = MAX_TTL_HOURS) -> int:
    ttl = body.get("ttl_hours", default)
    if not isinstance(ttl, int) or isinstance(ttl, bool) or not (1 <= ttl <= most):
        raise BadRequest(f"ttl_hours must be an integer from 1 to {most}")
    return ttl


def code_of(body: dict[str, Any]) -> tuple[str | None, bool]:
    """(the extraction code, generated here) from ``"code": "1234"`` (4-6 digits) or
    ``"code": "auto"`` (6 random digits, returned once in the response)."""
    code = body.get("code")
    if code is None:
        return None, False
    if code == "auto":
        return f"{secrets.randbelow(10**6):06d}", True
    if not isinstance(code, str) or not CODE_RE.fullmatch(code):
        raise BadRequest('code must be 4 to 6 digits, or "auto"')
    return code, False


def flag_of(body: dict[str, Any], name: str) -> bool:
    value = body.get(name, False)
    if not isinstance(value, bool):
        raise BadRequest(f"{name} must be true or false")
    return value


def link_url(request: web.Request, link: ShareLink) -> str:
    """What the patient opens (and the QR code holds): /film/<signed token>, absolute."""
    svc = services(request)
    return f"{svc.settings.public_base_url}/film/{svc.signer.share_token(link.id)}"


def link_json(request: web.Request, link: ShareLink, code: str | None = None) -> dict[str, Any]:
    svc = services(request)
    base = svc.settings.public_base_url
    out = link.as_json()
    out.update(
        token=svc.signer.share_token(link.id),
        url=link_url(request, link),
        qr_png=f"{base}/api/shares/{link.id}/qr.png",
        qr_svg=f"{base}/api/shares/{link.id}/qr.svg",
        expires_at=dt.datetime.fromtimestamp(link.expires_at, dt.UTC).isoformat(),
        created_at=dt.datetime.fromtimestamp(link.created_at, dt.UTC).isoformat(),
    )
    if code is not None:
        out["code"] = code
    return out


async def create_share(request: web.Request) -> web.Response:
    """POST /api/shares: ``{"study_uid"}`` or ``{"scope": "patient", "patient_id"}`` (with
    ``issuer`` when the hospital holds that patient ID under several issuers), with optional
    ``ttl_hours``, ``allow_download``, ``code`` and ``audience``."""
    body = await json_object(request, 16_384)
    svc = services(request)
    who = principal(request)
    scope = body.get("scope", "study")
    if scope not in ("study", "patient"):
        raise BadRequest('scope must be "study" or "patient"')
    audience = body.get("audience", "patient")
    if audience not in ("patient", "doctor"):
        raise BadRequest('audience must be "patient" or "doctor"')
    ttl_hours = ttl_hours_of(body, svc.settings.share_ttl_s // 3600)
    allow_download = flag_of(body, "allow_download")
    code, generated = code_of(body)
    if who.role == "auditor":
        raise Forbidden("auditors do not share patient records")
    if scope == "study":
        study_uid = body.get("study_uid")
        if not isinstance(study_uid, str) or not is_valid_uid(study_uid):
            raise BadRequest("study_uid must be a UID (1-64 digits and dots)")
        study = await visible_study(request, study_uid)
        if not who.may_see(study.hospital):
            raise Forbidden("a link is made by the study's own hospital")
        hospital, patient_id, issuer = study.hospital, "", ""
    else:
        study_uid = ""
        hospital, patient_id, issuer = await _patient_of(request, who, body)
    link = await blocking(
        svc.shares.create,
        study_uid,
        hospital,
        who.actor,
        time.time() + ttl_hours * 3600,
        scope=scope,
        patient_id=patient_id,
        issuer=issuer,
        allow_download=allow_download,
        code=code,
        audience=audience,
    )
    request[ACTOR] = f"{who.actor} share:{link.id}"
    return web.json_response(link_json(request, link, code if generated else None), status=201)


async def _patient_of(
    request: web.Request, who: Principal, body: dict[str, Any]
) -> tuple[str, str, str]:
    """(hospital, patient_id, issuer) of a patient link: a patient of the caller's hospital
    (an admin names the hospital) who has at least one study there. Without ``issuer``, the
    one issuer under which that hospital holds the patient ID (BadRequest naming them when
    there are several); NotFound names the issuers the ID is held under when ``issuer`` is
    none of them."""
    hospital = body.get("hospital") or who.hospital
    values = (hospital, body.get("patient_id"))
    for name, value in zip(("hospital", "patient_id"), values, strict=True):
        if not isinstance(value, str) or not _PATIENT_TEXT.fullmatch(value):
            raise BadRequest(f"{name} must be 1-64 letters, digits, spaces or - . ^ _")
    issuer = body.get("issuer")
    if issuer is not None and (
        not isinstance(issuer, str) or (issuer and not _PATIENT_TEXT.fullmatch(issuer))
    ):
        raise BadRequest("issuer must be up to 64 letters, digits, spaces or - . ^ _")
    if not who.may_see(hospital):
        raise Forbidden("a patient link is made by the patient's own hospital")
    patient_id = str(values[1])
    studies = await blocking(
        services(request).index.find_studies,
        StudyQuery(hospitals=frozenset({hospital}), patient_id=patient_id),
        limit=1000,
    )
    issuers = sorted({s.patient.issuer for s in studies if s.patient.patient_id == patient_id})
    return hospital, patient_id, patient_issuer(hospital, patient_id, issuer, issuers)


def patient_issuer(hospital: str, patient_id: str, issuer: str | None, held: list[str]) -> str:
    """The issuer a patient link is made for: ``issuer`` when the hospital holds the patient ID
    under it (``held``: the issuers it does hold it under), or the only one when ``issuer`` is
    not given."""
    named = ", ".join(repr(i) for i in held)
    if issuer is None:
        if len(held) == 1:
            return held[0]
        if held:
            raise BadRequest(
                f"hospital {hospital} holds patient {patient_id} under several issuers "
                f"({named}): give issuer"
            )
    elif issuer in held:
        return issuer
    elif held:
        raise NotFound(
            f"hospital {hospital} holds no study of patient {patient_id} under issuer "
            f"{issuer!r}; it holds that patient ID under issuer {named}"
        )
    raise NotFound(f"hospital {hospital} holds no study of patient {patient_id}")


def link_id_param(request: web.Request) -> str:
    """The ``{id}`` of a link in the path, validated before any lookup."""
    link_id = request.match_info["id"]
    if not re.fullmatch(r"[A-Za-z0-9_-]{1,64}", link_id):
        raise BadRequest("share id has an invalid form")
    return link_id


async def _own_link(request: web.Request, *, manage: bool) -> ShareLink:
    """The link of /api/shares/{id}, for the staff of its hospital (revoking and unlocking:
    not auditors)."""
    link = await blocking(services(request).shares.get, link_id_param(request))
    if link is None:
        raise NotFound(f"no share link {request.match_info['id']}")
    who = principal(request)
    if not who.may_see(link.hospital):
        raise Forbidden("this link belongs to another hospital")
    if manage and who.role == "auditor":
        raise Forbidden("auditors do not manage links")
    return link


async def get_share(request: web.Request) -> web.Response:
    link = await _own_link(request, manage=False)
    return web.json_response(link_json(request, link))


async def share_qr(request: web.Request) -> web.Response:
    """The link as a QR code to print on the report: /api/shares/{id}/qr.png or qr.svg."""
    link = await _own_link(request, manage=False)
    return await qr_response(request, link)


async def qr_response(request: web.Request, link: ShareLink) -> web.Response:
    kind = request.match_info["kind"]
    body = await blocking(render_qr, link_url(request, link), kind)
    ctype = "image/png" if kind == "png" else "image/svg+xml"
    return web.Response(body=body, content_type=ctype, headers={"Cache-Control": "no-store"})


def render_qr(url: str, kind: str) -> bytes:
    qr = segno.make(url, error="m")
    out = io.BytesIO()
    if kind == "png":
        qr.save(out, kind="png", scale=6, border=4)
    else:
        qr.save(out, kind="svg", scale=6, border=4, xmldecl=False)
    return out.getvalue()


async def revoke_share(request: web.Request) -> web.Response:
    link = await _own_link(request, manage=True)
    await blocking(services(request).shares.revoke, link.id)
    return web.Response(status=204)


async def unlock_share(request: web.Request) -> web.Response:
    """POST /api/shares/{id}/unlock: clear a lockout after wrong extraction codes."""
    link = await _own_link(request, manage=True)
    await blocking(services(request).shares.unlock, link.id)
    return web.Response(status=204)

"""Share links: the staff API that creates and revokes them, and the page a link opens."""

from __future__ import annotations

import datetime as dt
import io
import time
from typing import Any

import segno
from aiohttp import web

from image_store.keys import is_valid_uid
from image_store.records import SeriesQuery, StudyRecord
from viewer_api.context import ACTOR, blocking, principal, services, uid_param
from viewer_api.dicomweb.access import visible_study
from viewer_api.errors import BadRequest, Forbidden, NotFound
from viewer_api.pages import PAGE_HEADERS, film_page, message_page
from viewer_api.share import ShareLink
from viewer_api.thumbnails import series_jpeg

MAX_TTL_HOURS = 8760


async def _json_body(request: web.Request) -> dict[str, Any]:
    if request.content_length is not None and request.content_length > 64 * 1024:
        raise BadRequest("request body too large")
    try:
        body = await request.json()
    except ValueError as exc:
        raise BadRequest("the body must be a JSON object") from exc
    if not isinstance(body, dict):
        raise BadRequest("the body must be a JSON object")
    return body


async def create_share(request: web.Request) -> web.Response:
    body = await _json_body(request)
    svc = services(request)
    study_uid = body.get("study_uid")
    if not isinstance(study_uid, str) or not is_valid_uid(study_uid):
        raise BadRequest("study_uid must be a UID (1-64 digits and dots)")
    ttl_hours = body.get("ttl_hours", svc.settings.share_ttl_s // 3600)
    if (
        not isinstance(ttl_hours, int)
        or isinstance(ttl_hours, bool)
        or not (1 <= ttl_hours <= MAX_TTL_HOURS)
    ):
        raise BadRequest(f"ttl_hours must be an integer from 1 to {MAX_TTL_HOURS}")
    study = await visible_study(request, study_uid)
    who = principal(request)
    expires = time.time() + ttl_hours * 3600
    link = await blocking(svc.shares.create, study_uid, study.hospital, who.actor, expires)
    token = svc.signer.share_token(link.id)
    request[ACTOR] = f"{who.actor} share:{link.id}"
    return web.json_response(
        {
            "id": link.id,
            "token": token,
            "url": f"{svc.settings.public_base_url}/film/{token}",
            "qr_png": f"{svc.settings.public_base_url}/api/shares/{link.id}/qr.png",
            "qr_svg": f"{svc.settings.public_base_url}/api/shares/{link.id}/qr.svg",
            "expires_at": dt.datetime.fromtimestamp(expires, dt.UTC).isoformat(),
        },
        status=201,
    )


def _link_id(request: web.Request) -> str:
    link_id = request.match_info["id"]
    if not 1 <= len(link_id) <= 64 or not link_id.replace("-", "").replace("_", "").isalnum():
        raise BadRequest("share id has an invalid form")
    return link_id


async def share_qr(request: web.Request) -> web.Response:
    """The link as a QR code to print on the report: /api/shares/{id}/qr.png or qr.svg."""
    svc = services(request)
    link_id = _link_id(request)
    kind = request.match_info["kind"]
    link = await blocking(svc.shares.get, link_id)
    if link is None:
        raise NotFound(f"no share link {link_id}")
    who = principal(request)
    if not who.may_see(link.hospital):
        raise Forbidden("this link belongs to another hospital")
    url = f"{svc.settings.public_base_url}/film/{svc.signer.share_token(link.id)}"
    body = await blocking(render_qr, url, kind)
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
    svc = services(request)
    link_id = _link_id(request)
    link = await blocking(svc.shares.get, link_id)
    if link is None:
        raise NotFound(f"no share link {link_id}")
    who = principal(request)
    if who.role != "admin" and who.hospital != link.hospital:
        raise Forbidden("only the hospital that created a link may revoke it")
    await blocking(svc.shares.revoke, link_id)
    return web.Response(status=204)


class _PageError(Exception):
    def __init__(self, kind: str, status: int) -> None:
        super().__init__(kind)
        self.kind, self.status = kind, status


async def _open_link(request: web.Request) -> tuple[ShareLink, StudyRecord]:
    svc = services(request)
    token = request.match_info["token"]
    link_id = svc.signer.share_id(token)
    if link_id is None:
        raise _PageError("invalid", 403)
    request[ACTOR] = f"share:{link_id}"
    link = await blocking(svc.shares.get, link_id)
    if link is None:
        raise _PageError("invalid", 403)
    state = link.state()
    if state != "active":
        raise _PageError(state, 403)
    study = await blocking(svc.index.get_study, link.study_uid)
    if study is None:
        raise _PageError("missing", 404)
    return link, study


def _page(text: str, status: int = 200) -> web.Response:
    return web.Response(
        text=text, status=status, content_type="text/html", charset="utf-8", headers=PAGE_HEADERS
    )


async def film(request: web.Request) -> web.Response:
    try:
        link, study = await _open_link(request)
    except _PageError as err:
        return _page(message_page(err.kind), err.status)
    svc = services(request)
    series = await blocking(
        svc.index.find_series, SeriesQuery(study_uid=study.study_uid), limit=1000
    )
    await blocking(svc.shares.count_view, link.id)
    return _page(film_page(request.match_info["token"], study, series))


async def film_thumbnail(request: web.Request) -> web.Response:
    series_uid = uid_param(request, "series")
    try:
        _, study = await _open_link(request)
    except _PageError as err:
        if err.status == 403:
            raise Forbidden(f"this link is {err.kind}") from None
        raise NotFound("the study of this link is gone") from None
    svc = services(request)
    found = await blocking(
        svc.index.find_series,
        SeriesQuery(study_uid=study.study_uid, series_uids=(series_uid,)),
        limit=1,
    )
    if not found:
        raise NotFound(f"no series {series_uid} in the shared study")
    jpeg = await series_jpeg(svc.store, svc.index, series_uid)
    return web.Response(body=jpeg, content_type="image/jpeg", headers={"Cache-Control": "no-store"})

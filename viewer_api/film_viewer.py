"""The pages and images a cloud-film link opens, with nothing but the link (no login).

``GET  /film/{token}``                     the viewer page (or the code page, or a clear page
                                           for an expired, revoked, blocked or invalid link)
``POST /film/{token}/code``                the extraction code (a form): sets the unlock cookie
``GET  /static/{name}``                    the page's script, style and icon

What the page loads lives beside it, one module per concern: the study manifest
(viewer_api/film_manifest.py), slices, values and thumbnails (film_images.py), reports
(film_reports.py) and the ZIP with its DICOMDIR (film_zip.py); their handlers are named here too
so the route table can take them all from this module.

Each request is audited by the middleware under the link's id (never the token); the image and
download paths name the study, so the patient's access history shows them.
"""

from __future__ import annotations

import re
import time

from aiohttp import web

from image_store.records import SeriesQuery, StudyRecord
from viewer_api.context import blocking, hospital_names, services
from viewer_api.errors import NotFound
from viewer_api.film_images import rendered, thumbnail, values
from viewer_api.film_link import (
    UNLOCK_COOKIE,
    LinkClosed,
    film_base,
    link_studies,
    open_link,
    unlocked,
)
from viewer_api.film_manifest import manifest, study_manifest
from viewer_api.film_reports import report
from viewer_api.film_zip import download_zip
from viewer_api.pages import (
    FILM_HEADERS,
    PAGE_HEADERS,
    code_page,
    film_page,
    message_page,
    static_file,
    study_header,
)

__all__ = [
    "download_zip",
    "enter_code",
    "film",
    "manifest",
    "rendered",
    "report",
    "static",
    "thumbnail",
    "values",
]

_STATIC_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,99}")
"""What a file of viewer_api/static may be called: anything else (a NUL, a control character,
a path) is answered 404 before the file system is asked."""


def _page(text: str, status: int = 200, headers: dict[str, str] | None = None) -> web.Response:
    return web.Response(
        text=text,
        status=status,
        content_type="text/html",
        charset="utf-8",
        headers=headers or PAGE_HEADERS,
    )


def _closed_page(err: LinkClosed) -> web.Response:
    return _page(message_page(err.kind), err.status)


async def static(request: web.Request) -> web.Response:
    """GET /static/{name}: the viewer's script and style (versioned URLs, cached a year)."""
    name = request.match_info["name"]
    found = static_file(name) if _STATIC_NAME.fullmatch(name) else None
    if found is None:
        raise NotFound("no such file")
    data, media, _ = found
    return web.Response(
        body=data,
        content_type=media,
        charset="utf-8",
        headers={"Cache-Control": "public, max-age=31536000, immutable"},
    )


async def _study_thumbs(request: web.Request, studies: list[StudyRecord]) -> dict[str, str]:
    """Study UID -> the series whose thumbnail its card shows (the one with the most images),
    for a link with more than one study (the first 50)."""
    if len(studies) < 2:
        return {}
    svc = services(request)
    out: dict[str, str] = {}
    for study in studies[:50]:
        series = await blocking(
            svc.index.find_series, SeriesQuery(study_uid=study.study_uid), limit=1000
        )
        if series:
            out[study.study_uid] = max(series, key=lambda s: s.number_of_instances).series_uid
    return out


# -- the page -------------------------------------------------------------------------------


async def film(request: web.Request) -> web.Response:
    """GET /film/{token}: the viewer with the first study's manifest in the page (or the code
    page, or the page saying why the link is closed)."""
    token = request.match_info["token"]
    try:
        link = await open_link(request, need_code=False)
    except LinkClosed as err:
        return _closed_page(err)
    svc = services(request)
    if link.has_code and not unlocked(request, link):
        return _page(code_page(film_base(token), link.locked()))
    studies = await link_studies(request, link)
    if not studies:
        return _page(message_page("missing"), 404)
    names = await hospital_names(request)
    first = await study_manifest(request, studies[0], names)
    await blocking(svc.shares.count_view, link.id)
    data = {
        "base": film_base(token),
        "download": link.allow_download,
        "self_service": link.audience == "patient",
        "studies": [study_header(s, names) for s in studies],
        "thumbs": await _study_thumbs(request, studies),
        "study": first,
    }
    return _page(film_page(studies[0], names, data), headers=FILM_HEADERS)


async def enter_code(request: web.Request) -> web.Response:
    """POST /film/{token}/code (form field ``code``): right → the unlock cookie and back to
    the page; wrong → the code page with the tries left; locked or blocked → their pages."""
    token = request.match_info["token"]
    try:
        link = await open_link(request, need_code=False)
    except LinkClosed as err:
        return _closed_page(err)
    if not link.has_code:
        raise web.HTTPSeeOther(film_base(token))
    if request.content_length is not None and request.content_length > 1024:
        return _page(code_page(film_base(token), False, error="bad"), 400)
    form = await request.post()
    code = form.get("code", "")
    code = code.strip() if isinstance(code, str) else ""
    svc = services(request)
    check = await blocking(svc.shares.try_code, link.id, code[:16])
    if check.outcome == "ok":
        resp = web.HTTPSeeOther(film_base(token))
        resp.set_cookie(
            UNLOCK_COOKIE,
            svc.signer.unlock_pass(link.id),
            path=film_base(token),
            max_age=12 * 3600,
            httponly=True,
            secure=request.secure,
            samesite="Strict",
        )
        raise resp
    if check.outcome == "blocked":
        return _page(message_page("blocked"), 403)
    if check.outcome == "locked":
        until = check.locked_until or time.time()
        return _page(code_page(film_base(token), True, until=until), 429)
    return _page(code_page(film_base(token), False, tries_left=check.tries_left), 403)

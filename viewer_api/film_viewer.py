"""The pages and images a cloud-film link opens, with nothing but the link (no login).

``GET  /film/{token}``                     the viewer page (or the code page, or a clear page
                                           for an expired, revoked, blocked or invalid link)
``POST /film/{token}/code``                the extraction code (a form): sets the unlock cookie
``GET  /film/{token}/studies/{study}/manifest.json``  a study's series and images for the viewer
``GET  /film/{token}/studies/{study}/series/{series}/instances/{sop}/frames/{n}/rendered``
                                           one slice as JPEG (window, viewport, quality; and
                                           ``download=1`` when the link allows downloads)
``GET  /film/{token}/studies/{study}/download.zip``   the study's DICOM files (when allowed)
``GET  /film/{token}/series/{series}/thumbnail``      a series thumbnail
``GET  /film/{token}/reports/{id}``        a report attached to a study of the link

Each request is audited by the middleware under the link's id (never the token); the image and
download paths name the study, so the patient's access history shows them.
"""

from __future__ import annotations

import datetime as dt
import json
import re
import time
import zipfile
from typing import Any

from aiohttp import web

from image_store.errors import IntegrityError
from image_store.records import InstanceQuery, InstanceSummary, SeriesQuery, StudyRecord
from image_store.verified import read_verified
from viewer_api.context import blocking, hospital_names, services, uid_param
from viewer_api.dicomweb.params import viewport
from viewer_api.dicomweb.rendered import (
    RenderRequest,
    frame_number,
    parse_render_request,
    picture_type,
    render_picture,
)
from viewer_api.errors import BadRequest, Forbidden, NotFound
from viewer_api.film_link import (
    UNLOCK_COOKIE,
    LinkClosed,
    as_http_error,
    film_base,
    link_studies,
    open_link,
    open_link_or_error,
    study_of_link,
    unlocked,
)
from viewer_api.pages import (
    FILM_HEADERS,
    PAGE_HEADERS,
    code_page,
    film_page,
    message_page,
    static_file,
    study_header,
)
from viewer_api.share import ShareLink
from viewer_api.thumbnails import series_jpeg

MAX_SIDE = 1024
"""Slices are rendered at most this many pixels on their longer side unless a viewport asks
otherwise (a phone screen is about 400 CSS px at 3x); downloads come at full size."""


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


async def _study_in_link(request: web.Request, link: ShareLink, study_uid: str) -> StudyRecord:
    try:
        return await study_of_link(request, link, study_uid)
    except LinkClosed as err:
        raise as_http_error(err) from None


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


# -- the page -------------------------------------------------------------------------------


async def film(request: web.Request) -> web.Response:
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
    manifest = {
        "base": film_base(token),
        "download": link.allow_download,
        "self_service": link.audience == "patient",
        "studies": [study_header(s, names) for s in studies],
        "study": first,
    }
    return _page(film_page(studies[0], names, manifest), headers=FILM_HEADERS)


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


# -- what the viewer loads --------------------------------------------------------------------


async def study_manifest(
    request: web.Request, study: StudyRecord, names: dict[str, str]
) -> dict[str, Any]:
    """A study's series (in series-number order) with their images (instance order, one entry
    per frame), default windows and reports: everything the viewer needs in one object."""
    svc = services(request)
    series = await blocking(
        svc.index.find_series, SeriesQuery(study_uid=study.study_uid), limit=1000
    )
    series.sort(key=lambda s: (s.series_number is None, s.series_number or 0, s.series_uid))
    instances = await blocking(
        svc.index.find_instances, InstanceQuery(study_uid=study.study_uid), limit=100_000
    )
    by_series: dict[str, list[InstanceSummary]] = {}
    for inst in instances:
        if inst.rows and inst.columns:  # an image; SRs, PDFs and the like have no slices
            by_series.setdefault(inst.series_uid, []).append(inst)
    firsts = tuple(v[0].sop_uid for v in by_series.values())
    windows = await blocking(_default_windows, svc.index, study.study_uid, firsts)
    out = []
    for s in series:
        insts = by_series.get(s.series_uid)
        if not insts:
            continue
        insts.sort(key=lambda i: (i.instance_number is None, i.instance_number or 0, i.sop_uid))
        out.append(
            {
                "uid": s.series_uid,
                "modality": s.modality,
                "number": s.series_number,
                "description": s.series_description,
                "body_part": s.body_part,
                "window": windows.get(insts[0].sop_uid),
                "images": [
                    [i.sop_uid, f] for i in insts for f in range(1, (i.number_of_frames or 1) + 1)
                ],
            }
        )
    return {
        **study_header(study, names),
        "series": out,
        "reports": await _reports(request, study),
    }


def _default_windows(index: Any, study_uid: str, sop_uids: tuple[str, ...]) -> dict[str, Any]:
    """The first Window Center/Width of each instance named (its DICOM JSON in the index)."""
    if not sop_uids:
        return {}
    out: dict[str, Any] = {}
    for text in index.instance_metadata(InstanceQuery(study_uid=study_uid, sop_uids=sop_uids)):
        obj = json.loads(text)
        sop = (obj.get("00080018", {}).get("Value") or [""])[0]
        center = (obj.get("00281050", {}).get("Value") or [None])[0]
        width = (obj.get("00281051", {}).get("Value") or [None])[0]
        if isinstance(center, int | float) and isinstance(width, int | float) and width > 0:
            out[sop] = [center, width]
    return out


async def _reports(request: web.Request, study: StudyRecord) -> list[dict[str, Any]]:
    svc = services(request)
    if svc.reports is None:
        return []
    base = film_base(request.match_info["token"])
    out = []
    for report in await blocking(svc.reports.of_study, study.study_uid):
        text = None
        if report.media_type == "text/plain" and report.size <= 256 * 1024:
            try:
                data = await blocking(read_verified, svc.store, report.object_key, report.sha256)
                text = data.decode("utf-8", "replace")
            except IntegrityError:
                pass  # a damaged report is not shown beside the images
        out.append(
            {
                "title": report.title,
                "status": report.status,
                "mutual_recognition": report.mutual_recognition,
                "media_type": report.media_type,
                "text": text,
                "url": f"{base}/reports/{report.id}",
            }
        )
    return out


async def manifest(request: web.Request) -> web.Response:
    link = await open_link_or_error(request)
    study_uid = uid_param(request, "study")
    study = await _study_in_link(request, link, study_uid)
    body = await study_manifest(request, study, await hospital_names(request))
    return web.json_response(body, dumps=lambda o: json.dumps(o, ensure_ascii=False))


async def _instance_of_link(request: web.Request) -> tuple[ShareLink, InstanceSummary]:
    link = await open_link_or_error(request)
    study_uid = uid_param(request, "study")
    series_uid = uid_param(request, "series")
    sop_uid = uid_param(request, "instance")
    await _study_in_link(request, link, study_uid)
    found = await blocking(
        services(request).index.find_instances,
        InstanceQuery(study_uid=study_uid, series_uid=series_uid, sop_uids=(sop_uid,)),
        limit=1,
    )
    if not found:
        raise NotFound("no such image in this link")
    return link, found[0]


async def rendered(request: web.Request) -> web.Response:
    want = parse_render_request(request, extra=frozenset({"download"}))
    download = request.query.get("download", "") == "1"
    if "download" in request.query and not download:
        raise BadRequest("download must be 1")
    frame = frame_number(request)
    link, inst = await _instance_of_link(request)
    if download and not link.allow_download:
        raise Forbidden("this link does not allow downloads")
    if "viewport" in request.query:  # at most MAX_VIEWPORT, or the image's own size
        viewport(request.query["viewport"], (inst.columns or 1, inst.rows or 1))
    if want.viewport is None and not download:
        side = max(inst.rows or 1, inst.columns or 1)
        if side > MAX_SIDE:
            want = RenderRequest(want.image_format, want.quality, (MAX_SIDE, MAX_SIDE), want.window)
    body = await render_picture(request, inst, want, frame - 1)
    headers = {"Cache-Control": "private, no-store"}
    if download:
        ext = "png" if want.image_format == "PNG" else "jpg"
        name = f"image-{inst.instance_number or 0}-{frame}.{ext}"
        headers["Content-Disposition"] = f'attachment; filename="{name}"'
    return web.Response(body=body, content_type=picture_type(want), headers=headers)


async def thumbnail(request: web.Request) -> web.Response:
    series_uid = uid_param(request, "series")
    link = await open_link_or_error(request)
    svc = services(request)
    found = await blocking(svc.index.find_series, SeriesQuery(series_uids=(series_uid,)), limit=1)
    if not found:
        raise NotFound(f"no series {series_uid} in this link")
    try:
        await study_of_link(request, link, found[0].study_uid)
    except LinkClosed:
        raise NotFound(f"no series {series_uid} in this link") from None
    jpeg = await series_jpeg(svc.store, svc.index, series_uid)
    return web.Response(body=jpeg, content_type="image/jpeg", headers={"Cache-Control": "no-store"})


async def report(request: web.Request) -> web.Response:
    link = await open_link_or_error(request)
    report_id = request.match_info["id"]
    svc = services(request)
    if not re.fullmatch(r"[A-Za-z0-9_-]{16,64}", report_id) or svc.reports is None:
        raise NotFound("no such report")
    found = await blocking(svc.reports.get, report_id)
    if found is None:
        raise NotFound("no such report")
    try:
        await study_of_link(request, link, found.study_uid)
    except LinkClosed:
        raise NotFound("no such report") from None
    data = await blocking(read_verified, svc.store, found.object_key, found.sha256)
    charset = "utf-8" if found.media_type == "text/plain" else None
    return web.Response(body=data, content_type=found.media_type, charset=charset)


# -- the study as a ZIP of DICOM files ----------------------------------------------------------


class _Chunks:
    """A write-only file for zipfile: what it writes is taken out between entries."""

    def __init__(self) -> None:
        self.parts: list[bytes] = []
        self.written = 0

    def write(self, data: bytes) -> int:
        self.parts.append(bytes(data))
        self.written += len(data)
        return len(data)

    def tell(self) -> int:
        return self.written

    def flush(self) -> None:
        pass

    def close(self) -> None:
        pass

    def take(self) -> bytes:
        out = b"".join(self.parts)
        self.parts.clear()
        return out


def _zip_name(inst: InstanceSummary, series_number: int | None) -> str:
    return f"SER{series_number or 0:04d}/IMG{inst.instance_number or 0:05d}_{inst.sop_uid}.dcm"


async def download_zip(request: web.Request) -> web.StreamResponse:
    """The study's DICOM files as they are stored, streamed as a ZIP (stored, not deflated:
    the pixel data is mostly compressed already), one object in memory at a time."""
    link = await open_link_or_error(request)
    if not link.allow_download:
        raise Forbidden("this link does not allow downloads")
    study_uid = uid_param(request, "study")
    study = await _study_in_link(request, link, study_uid)
    svc = services(request)
    series = await blocking(svc.index.find_series, SeriesQuery(study_uid=study_uid), limit=1000)
    numbers = {s.series_uid: s.series_number for s in series}
    instances = await blocking(
        svc.index.find_instances, InstanceQuery(study_uid=study_uid), limit=100_000
    )
    if not instances:
        raise NotFound("the study has no instances")
    date = study.study_date or "study"
    resp = web.StreamResponse(
        headers={
            "Content-Type": "application/zip",
            "Content-Disposition": f'attachment; filename="cloudfilm-{date}.zip"',
            "Cache-Control": "no-store",
        }
    )
    await resp.prepare(request)
    sink = _Chunks()
    stamp = dt.datetime.now().timetuple()[:6]
    with zipfile.ZipFile(sink, "w", zipfile.ZIP_STORED) as zf:
        for inst in instances:
            data = await blocking(read_verified, svc.store, inst.object_key, inst.sha256)
            info = zipfile.ZipInfo(_zip_name(inst, numbers.get(inst.series_uid)), stamp)
            zf.writestr(info, data)
            await resp.write(sink.take())
    await resp.write(sink.take())
    await resp.write_eof()
    return resp

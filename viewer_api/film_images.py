"""The images a cloud-film link opens: a slice rendered as JPEG (the first paint), a slice's
stored values for the browser to window itself, and series thumbnails.

``GET /film/{token}/studies/{study}/series/{series}/instances/{sop}/frames/{n}/rendered``
    one slice as JPEG (window, viewport, quality; ``download=1`` when the link allows downloads)
``GET /film/{token}/studies/{study}/series/{series}/instances/{sop}/frames/{n}/values``
    one grey slice's stored values, packed losslessly (viewer_api/film_pixels.py), gzipped:
    as gzip content coding, or with ``form=gzip`` as a gzip body (application/gzip) that the
    page keeps compressed and inflates itself when the slice comes near the one shown
``GET /film/{token}/series/{series}/thumbnail``
    a series thumbnail
"""

from __future__ import annotations

import gzip

from aiohttp import web

from image_store.ports import ObjectStore
from image_store.records import InstanceQuery, InstanceSummary, SeriesQuery
from image_store.state.records import ShareLink
from image_store.verified import read_verified
from viewer_api.context import blocking, services, uid_param
from viewer_api.dicomweb.params import viewport
from viewer_api.dicomweb.rendered import (
    RenderRequest,
    frame_number,
    parse_render_request,
    picture_type,
    render_picture,
)
from viewer_api.errors import BadRequest, Forbidden, NotFound
from viewer_api.film_link import LinkClosed, open_link_or_error, study_of_link
from viewer_api.film_manifest import study_in_link
from viewer_api.film_pixels import MAX_PIXELS, NotGreyPixels, pack_frame
from viewer_api.thumbnails import series_jpeg

MAX_SIDE = 1024
"""Slices are rendered at most this many pixels on their longer side unless a viewport asks
otherwise (a phone screen is about 400 CSS px at 3x); downloads come at full size."""


async def instance_of_link(request: web.Request) -> tuple[ShareLink, InstanceSummary]:
    """The link and the instance the path names, if the link opens its study (404 otherwise,
    the same for an instance that does not exist)."""
    link = await open_link_or_error(request)
    study_uid = uid_param(request, "study")
    series_uid = uid_param(request, "series")
    sop_uid = uid_param(request, "instance")
    await study_in_link(request, link, study_uid)
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
    link, inst = await instance_of_link(request)
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


def _packed(store: ObjectStore, inst: InstanceSummary, frame: int) -> bytes:
    data = read_verified(store, inst.object_key, inst.sha256)
    return gzip.compress(pack_frame(data, frame), compresslevel=6, mtime=0)


VALUES_FORMS = ("gzip",)
"""The ``form`` a slice's values may be asked in besides gzip content coding."""


async def values(request: web.Request) -> web.Response:
    """One grey frame's stored values (the packed form, gzipped: content coding, or the body
    itself with ``form=gzip``); 400 for a colour or oversized image (the page keeps the JPEG),
    404 past the last frame."""
    form = request.query.get("form")
    if set(request.query) - {"form"} or len(request.query.getall("form", ())) > 1:
        raise BadRequest("values take one query parameter: form")
    if form is not None and form not in VALUES_FORMS:
        raise BadRequest(f"form must be one of {', '.join(VALUES_FORMS)}, got {form[:20]!r}")
    frame = frame_number(request)
    _, inst = await instance_of_link(request)
    if (inst.rows or 0) * (inst.columns or 0) > MAX_PIXELS:
        raise BadRequest(f"image of {inst.columns}x{inst.rows} is too large for values")
    try:
        body = await blocking(_packed, services(request).store, inst, frame - 1)
    except NotGreyPixels as exc:
        raise BadRequest(f"no values for instance {inst.sop_uid}: {exc}") from exc
    except IndexError as exc:
        raise NotFound(str(exc)) from exc
    if form == "gzip":
        return web.Response(
            body=body,
            content_type="application/gzip",
            headers={"Cache-Control": "private, no-store"},
        )
    return web.Response(
        body=body,
        content_type="application/octet-stream",
        headers={"Content-Encoding": "gzip", "Cache-Control": "private, no-store"},
    )


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

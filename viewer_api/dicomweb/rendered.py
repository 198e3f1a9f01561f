"""WADO-RS rendered resources (PS3.18 8.3.5, 10.4.1.1.3): an instance or one of its frames as
JPEG or PNG, with the viewport, window and quality query parameters; thumbnails of a study and
of an instance.

Grey images go through the fused Numba kernel of ``dicom_codecs.render`` (rescale + window +
downsampling in one pass); the picture is rendered in a worker thread.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from aiohttp import web

from dicom_codecs.errors import RenderError
from image_store.frame_layout import frame_instance
from image_store.ports import ObjectStore
from image_store.records import FrameLayout, InstanceSummary, SeriesQuery
from image_store.verified import read_verified
from viewer_api.context import blocking, services, uid_param
from viewer_api.dicomweb.access import instances_of, series_of, visible_study
from viewer_api.dicomweb.multipart import closing, content_type, new_boundary, part_header
from viewer_api.dicomweb.negotiation import Resource, choose, parse_accept
from viewer_api.dicomweb.params import viewport as parse_viewport
from viewer_api.errors import BadRequest, NotFound
from viewer_api.thumbnails import series_jpeg

_NUMBER = r"-?\d{1,9}(?:\.\d{1,6})?"
_FUNCTIONS = {"linear": "LINEAR", "linear-exact": "LINEAR_EXACT", "sigmoid": "SIGMOID"}
_MEDIA = {"image/jpeg": "JPEG", "image/png": "PNG"}
_ALLOWED = frozenset({"viewport", "window", "quality", "accept"})


@dataclass(frozen=True, slots=True)
class RenderRequest:
    """The rendering asked for, validated: nothing here reaches the renderer unchecked."""

    image_format: str = "JPEG"
    quality: int = 85
    viewport: tuple[int, int] | None = None
    window: tuple[float, float, str] | None = None


def _media(accept: str | None, query_accept: str) -> str:
    """JPEG unless the client prefers PNG (``negotiation``); 406 when it takes neither."""
    ranges = parse_accept(accept, [query_accept] if query_accept else [])
    choice = choose(ranges, Resource.RENDERED, "", lambda _stored, _syntax: True)
    return _MEDIA[choice.media_type]


def parse_render_request(query: web.Request, extra: frozenset[str] = frozenset()) -> RenderRequest:
    """Query parameters of a rendered request (400 with the reason for any bad one); ``extra``
    names parameters the caller checks itself."""
    params = query.query
    for key in params:
        if key not in _ALLOWED and key not in extra:
            raise BadRequest(f"unsupported query parameter {key[:64]!r} for rendered resources")
        if len(params.getall(key)) > 1:
            raise BadRequest(f"parameter {key} may be given once")
    quality = 85
    if "quality" in params:
        text = params["quality"].strip()
        if not re.fullmatch(r"\d{1,3}", text) or not 1 <= int(text) <= 100:
            raise BadRequest(f"quality must be 1..100, got {text[:20]!r}")
        quality = int(text)
    viewport = None
    if "viewport" in params:
        viewport = parse_viewport(params["viewport"])
    window = None
    if "window" in params:
        m = re.fullmatch(
            rf"({_NUMBER}),({_NUMBER})(?:,(linear|linear-exact|sigmoid))?",
            params["window"].strip().lower(),
        )
        if not m:
            raise BadRequest("window must be CENTER,WIDTH[,linear|linear-exact|sigmoid]")
        window = (float(m[1]), float(m[2]), _FUNCTIONS[m[3] or "linear"])
    image_format = _media(query.headers.get("Accept"), params.get("accept", ""))
    return RenderRequest(image_format, quality, viewport, window)


def _render(
    store: ObjectStore,
    inst: InstanceSummary,
    want: RenderRequest,
    frame: int | None,
    layout: FrameLayout | None = None,
) -> bytes:
    """``layout``: a frame of a multi-frame is rendered from its byte range (and the header's)
    instead of the whole object."""
    from dicom_codecs.render import RenderOptions, Window, render_thumbnail

    if frame is not None and layout is not None:
        count = inst.number_of_frames or 1
        if not 0 <= frame < count:
            raise RenderError(f"frame must be 1..{count}, got {frame + 1}")
        data = frame_instance(store, inst.object_key, layout, frame + 1)
        frame = 0
    else:
        data = read_verified(store, inst.object_key, inst.sha256)  # never render damaged bytes
    options = RenderOptions(
        size=max(inst.rows or 1, inst.columns or 1, 1),
        quality=want.quality,
        frame=frame,
        window=None if want.window is None else Window(*want.window),
        viewport=want.viewport,
        image_format=want.image_format,
    )
    return render_thumbnail(data, options)


async def _instance(request: web.Request) -> InstanceSummary:
    study_uid = uid_param(request, "study")
    series_uid = uid_param(request, "series")
    sop_uid = uid_param(request, "instance")
    await visible_study(request, study_uid)
    await series_of(request, study_uid, series_uid)
    (inst,) = await instances_of(request, study_uid, series_uid, sop_uid)
    return inst


def frame_number(request: web.Request) -> int:
    """The 1-based ``{frame}`` of the path, validated."""
    text = request.match_info["frame"]
    if not re.fullmatch(r"\d{1,6}", text) or int(text) < 1:
        raise BadRequest(f"frame number must be a whole number from 1, got {text[:20]!r}")
    return int(text)


async def render_picture(
    request: web.Request, inst: InstanceSummary, want: RenderRequest, frame: int | None
) -> bytes:
    """The rendering, made in a worker thread: 404 for a frame past the end (the client's
    mistake), 400 for an image that cannot be rendered."""
    svc = services(request)
    layout = None
    if frame is not None and (inst.number_of_frames or 1) > 1:
        layout = await blocking(svc.index.frame_layout, inst.sop_uid, inst.sha256)
    try:
        return await blocking(_render, svc.store, inst, want, frame, layout)
    except RenderError as exc:
        if "frame must be" in str(exc):
            raise NotFound(str(exc)) from exc
        raise BadRequest(f"cannot render instance {inst.sop_uid}: {exc}") from exc


def picture_type(want: RenderRequest) -> str:
    return "image/png" if want.image_format == "PNG" else "image/jpeg"


async def _respond(
    request: web.Request, inst: InstanceSummary, want: RenderRequest, frame: int | None
) -> web.Response:
    body = await render_picture(request, inst, want, frame)
    return web.Response(
        body=body, content_type=picture_type(want), headers={"Cache-Control": "private"}
    )


async def instance_rendered(request: web.Request) -> web.Response:
    want = parse_render_request(request)
    inst = await _instance(request)
    return await _respond(request, inst, want, None)


async def frame_rendered(request: web.Request) -> web.Response:
    want = parse_render_request(request)
    frame = frame_number(request)
    inst = await _instance(request)
    return await _respond(request, inst, want, frame - 1)


async def many_rendered(request: web.Request) -> web.StreamResponse:
    """A study's or a series' instances rendered (PS3.18 10.4.1.1.3): multipart/related, one
    picture per instance in instance order, rendered one at a time while streaming."""
    want = parse_render_request(request)
    study_uid = uid_param(request, "study")
    series_uid = uid_param(request, "series") if "series" in request.match_info else ""
    await visible_study(request, study_uid)
    if series_uid:
        await series_of(request, study_uid, series_uid)
    instances = await instances_of(request, study_uid, series_uid)
    if not instances:
        raise NotFound("no instances to render")
    instances.sort(key=lambda i: (i.series_uid, i.instance_number or 0, i.sop_uid))
    media = "image/png" if want.image_format == "PNG" else "image/jpeg"
    boundary = new_boundary()
    store = services(request).store
    resp = web.StreamResponse(headers={"Content-Type": content_type(boundary, media)})
    first = True
    for inst in instances:
        try:
            body = await blocking(_render, store, inst, want, None)
        except RenderError:
            continue  # an instance without a picture (an SR, say) has no rendering
        if first:
            await resp.prepare(request)
        await resp.write(part_header(boundary, media, first=first))
        await resp.write(body)
        first = False
    if first:
        raise NotFound("none of these instances has a picture")
    await resp.write(closing(boundary))
    await resp.write_eof()
    return resp


async def instance_thumbnail(request: web.Request) -> web.Response:
    """A small rendering of the instance (its middle frame), 256 px on the longest side."""
    inst = await _instance(request)
    want = RenderRequest(image_format=_media(request.headers.get("Accept"), ""), quality=80)
    body = await blocking(_thumbnail, services(request).store, inst, want)
    media = "image/png" if want.image_format == "PNG" else "image/jpeg"
    return web.Response(body=body, content_type=media, headers={"Cache-Control": "private"})


def _thumbnail(store: ObjectStore, inst: InstanceSummary, want: RenderRequest) -> bytes:
    from dicom_codecs.render import RenderOptions, render_thumbnail

    data = read_verified(store, inst.object_key, inst.sha256)
    options = RenderOptions(quality=want.quality, image_format=want.image_format)
    try:
        return render_thumbnail(data, options)
    except RenderError as exc:
        raise NotFound(f"instance {inst.sop_uid} has no picture: {exc}") from exc


async def study_thumbnail(request: web.Request) -> web.Response:
    """The thumbnail of the study's first series with a picture (series number order)."""
    study_uid = uid_param(request, "study")
    await visible_study(request, study_uid)
    svc = services(request)
    series = await blocking(
        svc.index.find_series, SeriesQuery(study_uid=study_uid), limit=1000, offset=0
    )
    series.sort(key=lambda s: (s.series_number is None, s.series_number or 0, s.series_uid))
    for s in series:
        try:
            jpeg = await series_jpeg(svc.store, svc.index, s.series_uid)
        except (NotFound, RenderError):
            continue
        return web.Response(body=jpeg, content_type="image/jpeg")
    raise NotFound(f"study {study_uid} has no series with a picture")

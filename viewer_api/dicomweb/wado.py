"""WADO-RS: instances as stored (multipart/related), their metadata, and series thumbnails."""

from __future__ import annotations

import asyncio
import collections
import re

from aiohttp import web

from dicom_codecs.frames import FrameError, frame_bytes
from dicom_codecs.transcode import TARGETS, choose_syntax, transcode
from image_store.errors import IntegrityError
from image_store.metadata import bulk_value
from image_store.ports import ObjectStore
from image_store.records import InstanceQuery, InstanceSummary
from image_store.verified import read_verified
from viewer_api.context import blocking, services, uid_param
from viewer_api.dicomweb.access import instances_of, series_of, visible_study
from viewer_api.dicomweb.multipart import (
    DicomAccept,
    closing,
    content_type,
    negotiate_dicom,
    new_boundary,
    part_header,
)
from viewer_api.errors import BadRequest, NotAcceptable, NotFound
from viewer_api.thumbnails import series_jpeg

READ_AHEAD = 8
READ_AHEAD_BYTES = 64 << 20


async def _targets(request: web.Request) -> tuple[str, str, str]:
    """Validate every UID of the path first, then check existence and access."""
    study_uid = uid_param(request, "study")
    series_uid = uid_param(request, "series") if "series" in request.match_info else ""
    sop_uid = uid_param(request, "instance") if "instance" in request.match_info else ""
    await visible_study(request, study_uid)
    if series_uid:
        await series_of(request, study_uid, series_uid)
    return study_uid, series_uid, sop_uid


async def retrieve(request: web.Request) -> web.StreamResponse:
    """A study, a series or an instance as multipart/related; type="application/dicom"."""
    wanted = negotiate_dicom(request.headers.get("Accept"))
    study_uid, series_uid, sop_uid = await _targets(request)
    instances = await instances_of(request, study_uid, series_uid, sop_uid)
    if not instances:
        raise NotFound("no instances to retrieve")
    _check_syntax(instances, wanted)
    store = services(request).store
    boundary = new_boundary()
    # The first object is read before the headers go out, so a store that fails at once still
    # gets a JSON error; a failure later drops the connection (the middleware re-raises).
    data = await blocking(_read, store, instances[0], wanted)
    resp = web.StreamResponse(headers={"Content-Type": content_type(boundary)})
    if all(_as_stored(i, wanted) for i in instances):
        # the stored bytes (sizes in the index, checked by sha256): the length is known, so the
        # body goes without chunked framing and clients can show progress
        resp.content_length = _multipart_length(boundary, [i.size for i in instances])
    await resp.prepare(request)
    # The next objects are read (and their hashes checked) in worker threads while this one is
    # written to the socket, a few at once (an S3 GET waits on the network): at most
    # READ_AHEAD objects and READ_AHEAD_BYTES in flight, at least one.
    ahead: collections.deque[tuple[asyncio.Future[bytes], int]] = collections.deque()
    queued = 1
    try:
        for n in range(len(instances)):
            if n:
                future, _ = ahead.popleft()
                data = await future
            in_flight = sum(size for _, size in ahead)
            while queued < len(instances) and len(ahead) < READ_AHEAD:
                size = instances[queued].size
                if ahead and in_flight + size > READ_AHEAD_BYTES:
                    break
                task = asyncio.ensure_future(blocking(_read, store, instances[queued], wanted))
                ahead.append((task, size))
                in_flight += size
                queued += 1
            if resp.content_length is not None and len(data) != instances[n].size:
                raise IntegrityError(f"object of {instances[n].sop_uid} is not its indexed size")
            await resp.write(part_header(boundary, first=n == 0))
            await resp.write(data)
            del data
    finally:
        for future, _ in ahead:
            if future.done() and not future.cancelled():
                future.exception()  # retrieved: a failure after the client left is not news
            else:
                future.cancel()
    await resp.write(closing(boundary))
    await resp.write_eof()
    return resp


def _as_stored(inst: InstanceSummary, wanted: DicomAccept) -> bool:
    syntax = choose_syntax(inst.transfer_syntax_uid, wanted.transfer_syntaxes)
    return syntax is None or syntax == inst.transfer_syntax_uid


def _multipart_length(boundary: str, sizes: list[int]) -> int:
    heads = len(part_header(boundary, first=True)) + (len(sizes) - 1) * len(
        part_header(boundary, first=False)
    )
    return heads + sum(sizes) + len(closing(boundary))


def _read(store: ObjectStore, inst: InstanceSummary, wanted: DicomAccept) -> bytes:
    """The stored bytes, or the instance transcoded into the first syntax the client accepts
    that we can produce (checked by ``_check_syntax`` before the response started)."""
    data = read_verified(store, inst.object_key, inst.sha256)  # never serve damaged bytes
    syntax = choose_syntax(inst.transfer_syntax_uid, wanted.transfer_syntaxes)
    if syntax is None or syntax == inst.transfer_syntax_uid:
        return data
    return transcode(data, syntax)


def _check_syntax(instances: list[InstanceSummary], wanted: DicomAccept) -> None:
    """406 unless every instance can be sent in a syntax the client accepts."""
    stored = {i.transfer_syntax_uid for i in instances}
    refused = sorted(ts for ts in stored if choose_syntax(ts, wanted.transfer_syntaxes) is None)
    if refused:
        asked = ", ".join(wanted.transfer_syntaxes)
        raise NotAcceptable(
            f"transfer syntax {asked} is not available (stored: {', '.join(sorted(stored))}); "
            f"ask for transfer-syntax=* (as stored) or one of {', '.join(TARGETS)}"
        )


async def metadata(request: web.Request) -> web.Response:
    study_uid, series_uid, sop_uid = await _targets(request)
    q = InstanceQuery(
        study_uid=study_uid, series_uid=series_uid, sop_uids=(sop_uid,) if sop_uid else ()
    )
    docs = await blocking(services(request).index.instance_metadata, q)
    if sop_uid and not docs:
        raise NotFound(f"no instance {sop_uid} in series {series_uid}")
    # stored with paths; clients get absolute BulkDataURIs (PS3.18 F.2.6)
    base = services(request).settings.public_base_url
    text = "[" + ",".join(docs) + "]"
    body = text.replace('"BulkDataURI":"/dicom-web/', f'"BulkDataURI":"{base}/dicom-web/').encode()
    return web.Response(body=body, content_type="application/dicom+json", charset="utf-8")


async def bulkdata(request: web.Request) -> web.Response:
    """The value of a top-level attribute named by a BulkDataURI, as multipart/related;
    type="application/octet-stream" (pixel data: the whole value as stored)."""
    text = request.match_info["tag"]
    if not re.fullmatch(r"[0-9A-Fa-f]{8}", text):
        raise BadRequest("bulk data is named by an 8-digit hexadecimal tag")
    study_uid, series_uid, sop_uid = await _targets(request)
    (inst,) = await instances_of(request, study_uid, series_uid, sop_uid)
    data = await blocking(_read, services(request).store, inst, DicomAccept(("*",)))
    value = await blocking(bulk_value, data, int(text, 16))
    if value is None:
        raise NotFound(f"instance {sop_uid} has no bulk data {text.upper()}")
    boundary = new_boundary()
    part = "application/octet-stream"
    if int(text, 16) == 0x7FE00010:
        part += f"; transfer-syntax={inst.transfer_syntax_uid}"
    body = part_header(boundary, part, first=True) + value + closing(boundary)
    return web.Response(
        body=body, headers={"Content-Type": content_type(boundary, "application/octet-stream")}
    )


async def thumbnail(request: web.Request) -> web.Response:
    _, series_uid, _ = await _targets(request)
    svc = services(request)
    jpeg = await series_jpeg(svc.store, svc.index, series_uid)
    return web.Response(body=jpeg, content_type="image/jpeg")


async def frames(request: web.Request) -> web.StreamResponse:
    """WADO-RS frames: the pixel data of frames (1-based, comma-separated) as
    multipart/related; type="application/octet-stream", not decoded (transfer-syntax=*)."""
    text = request.match_info["frames"]
    try:
        numbers = [int(n) for n in text.split(",")]
    except ValueError as exc:
        raise BadRequest(
            f"frame list must be numbers separated by commas, got {text[:40]!r}"
        ) from exc
    if not numbers or len(numbers) > 10_000 or min(numbers) < 1:
        raise BadRequest("frame numbers start at 1")
    study_uid, series_uid, sop_uid = await _targets(request)
    (inst,) = await instances_of(request, study_uid, series_uid, sop_uid)
    data = await blocking(_read, services(request).store, inst, DicomAccept(("*",)))
    try:
        syntax, chunks = await blocking(frame_bytes, data, numbers)
    except FrameError as exc:
        raise NotFound(str(exc)) from exc
    part_type = f"application/octet-stream; transfer-syntax={syntax}"
    boundary = new_boundary()
    body = b"".join(
        part_header(boundary, part_type, first=n == 0) + chunk for n, chunk in enumerate(chunks)
    ) + closing(boundary)
    return web.Response(
        body=body,
        headers={"Content-Type": content_type(boundary, "application/octet-stream")},
    )

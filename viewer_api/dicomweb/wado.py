"""WADO-RS: instances (multipart/related, in the syntax negotiated by ``negotiation``: the
PS3.18 default Explicit VR Little Endian, as stored for ``transfer-syntax=*``, or a syntax we
encode), their metadata, frames, bulk data and series thumbnails. Each part's Content-Type
names the transfer syntax actually sent."""

from __future__ import annotations

import asyncio
import collections
import hashlib
import re

from aiohttp import web

from dicom_codecs.frames import NATIVE, FrameError, all_frames, frames_in
from dicom_codecs.transcode import TranscodeError, can_transcode, transcode
from image_store.errors import IntegrityError
from image_store.frame_layout import frame_instance
from image_store.metadata import bulk_value
from image_store.ports import ObjectStore
from image_store.records import ByteRange, FrameLayout, InstanceQuery, InstanceSummary
from image_store.verified import read_verified
from viewer_api.context import blocking, services, uid_param
from viewer_api.dicomweb import params
from viewer_api.dicomweb.access import instances_of, series_of, visible_study
from viewer_api.dicomweb.multipart import closing, content_type, new_boundary, part_header
from viewer_api.dicomweb.negotiation import (
    EXPLICIT_LE,
    OCTETS,
    Choice,
    MediaRange,
    Resource,
    choose,
    parse_accept,
)
from viewer_api.errors import BadRequest, NotAcceptable, NotFound
from viewer_api.thumbnails import series_jpeg

READ_AHEAD = 8
"""Objects read (and, when asked, decoded) in worker threads ahead of the one being sent:
decoding releases the GIL, so they decode on every core while parts go out in order."""
READ_AHEAD_BYTES = 64 << 20
"""Bound on the bytes those objects hold (decoded sizes estimated from rows and columns)."""
STREAM_BYTES = 16 << 20
"""An instance sent as stored and larger than this is streamed from the store in ranged reads
of STREAM_CHUNK (its sha256 computed on the way; a mismatch ends the response before its
closing boundary, so a client never takes damaged bytes for an instance) instead of read
whole: a 2 GB multi-frame costs a few chunks of memory."""
STREAM_CHUNK = 8 << 20


def accepted(request: web.Request) -> list[MediaRange]:
    """The request's acceptable media ranges (the ``accept`` query parameter wins)."""
    return parse_accept(request.headers.get("Accept"), request.query.getall("accept", []))


async def _targets(request: web.Request) -> tuple[str, str, str]:
    """Validate every UID of the path first, then check existence and access."""
    study_uid = uid_param(request, "study")
    series_uid = uid_param(request, "series") if "series" in request.match_info else ""
    sop_uid = uid_param(request, "instance") if "instance" in request.match_info else ""
    await visible_study(request, study_uid)
    if series_uid:
        await series_of(request, study_uid, series_uid)
    return study_uid, series_uid, sop_uid


def _estimate(inst: InstanceSummary, choice: Choice) -> int:
    """Bytes an object holds while in flight: its stored size, or its decoded size."""
    if choice.transfer_syntax == inst.transfer_syntax_uid:
        return inst.size
    pixels = (inst.rows or 0) * (inst.columns or 0) * (inst.number_of_frames or 1) * 2
    return inst.size + pixels


async def retrieve(request: web.Request) -> web.StreamResponse:
    """A study, a series or an instance as multipart/related; type="application/dicom", each
    instance in the syntax negotiated for the syntax it is stored in."""
    ranges = accepted(request)
    study_uid, series_uid, sop_uid = await _targets(request)
    instances = await instances_of(request, study_uid, series_uid, sop_uid)
    if not instances:
        raise NotFound("no instances to retrieve")
    choices = {
        ts: choose(ranges, Resource.INSTANCES, ts, can_transcode)
        for ts in sorted({i.transfer_syntax_uid for i in instances})
    }
    store = services(request).store
    boundary = new_boundary()
    ctype = content_type(boundary)
    # The first object is read before the headers go out, so a store that fails at once still
    # gets a JSON error; a failure later drops the connection (the middleware re-raises).
    first = choices[instances[0].transfer_syntax_uid]
    data = await blocking(_read, store, instances[0], first.transfer_syntax)
    resp = web.StreamResponse(headers={"Content-Type": ctype})
    as_stored = all(ts == c.transfer_syntax for ts, c in choices.items())
    if as_stored:
        # the stored bytes (sizes in the index, checked by sha256): the length is known, so the
        # body goes without chunked framing and clients can show progress
        heads = [part_header(boundary, first.part_type(), first=True)] + [
            part_header(boundary, choices[i.transfer_syntax_uid].part_type(), first=False)
            for i in instances[1:]
        ]
        resp.content_length = (
            sum(map(len, heads)) + sum(i.size for i in instances) + len(closing(boundary))
        )
    await resp.prepare(request)
    # The next objects are read (hashes checked, decoded if asked) in worker threads while
    # this one is written to the socket: at most READ_AHEAD objects and READ_AHEAD_BYTES in
    # flight, at least one, sent in order as each is ready.
    ahead: collections.deque[tuple[asyncio.Future[bytes | None], int]] = collections.deque()
    queued = 1
    try:
        for n, inst in enumerate(instances):
            if n:
                future, _ = ahead.popleft()
                data = await future
            in_flight = sum(size for _, size in ahead)
            while queued < len(instances) and len(ahead) < READ_AHEAD:
                nxt = instances[queued]
                choice = choices[nxt.transfer_syntax_uid]
                size = 0 if _streamed(nxt, choice.transfer_syntax) else _estimate(nxt, choice)
                if ahead and in_flight + size > READ_AHEAD_BYTES:
                    break
                task = asyncio.ensure_future(blocking(_read, store, nxt, choice.transfer_syntax))
                ahead.append((task, size))
                in_flight += size
                queued += 1
            if data is not None and as_stored and len(data) != inst.size:
                raise IntegrityError(f"object of {inst.sop_uid} is not its indexed size")
            part = choices[inst.transfer_syntax_uid].part_type()
            await resp.write(part_header(boundary, part, first=n == 0))
            if data is None:
                await _stream_stored(resp, store, inst)
            else:
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


async def _stream_stored(
    resp: web.StreamResponse, store: ObjectStore, inst: InstanceSummary
) -> None:
    """Write the stored object in ranged reads (the next read while this chunk is written),
    then check its size and sha256 against the index (IntegrityError: the response is cut
    short)."""
    digest = hashlib.sha256()
    key = inst.object_key

    def read(start: int) -> bytes:
        chunk = store.get(key, ByteRange(start, min(start + STREAM_CHUNK, inst.size)))
        digest.update(chunk)
        return chunk

    pos = 0
    pending = asyncio.ensure_future(blocking(read, 0))
    try:
        while True:
            chunk = await pending
            if not chunk:
                raise IntegrityError(f"object of {inst.sop_uid} is shorter than indexed")
            pos += len(chunk)
            if pos < inst.size:
                pending = asyncio.ensure_future(blocking(read, pos))
            await resp.write(chunk)
            if pos >= inst.size:
                break
    finally:
        if not pending.done():
            pending.cancel()
    if pos != inst.size or digest.hexdigest() != inst.sha256:
        raise IntegrityError(f"object of {inst.sop_uid} does not match its sha256")


def _streamed(inst: InstanceSummary, syntax: str) -> bool:
    return syntax == inst.transfer_syntax_uid and inst.size > STREAM_BYTES


def _read(store: ObjectStore, inst: InstanceSummary, syntax: str) -> bytes | None:
    """The stored bytes, or the instance transcoded into ``syntax`` (negotiated before the
    response started, so producible); None for an instance to stream (:func:`_streamed`)."""
    if _streamed(inst, syntax):
        return None
    data = read_verified(store, inst.object_key, inst.sha256)  # never serve damaged bytes
    if syntax == inst.transfer_syntax_uid:
        return data
    return transcode(data, syntax)


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
    """The value of a top-level attribute named by a BulkDataURI as multipart/related. Pixel
    Data is negotiated like frames: application/octet-stream uncompressed by default (every
    frame, one part), as stored for transfer-syntax=*, or one part per frame under the image
    type of a compressed syntax; any other attribute is its value as stored."""
    text = request.match_info["tag"]
    if not re.fullmatch(r"[0-9A-Fa-f]{8}", text):
        raise BadRequest("bulk data is named by an 8-digit hexadecimal tag")
    tag = int(text, 16)
    ranges = accepted(request)
    study_uid, series_uid, sop_uid = await _targets(request)
    (inst,) = await instances_of(request, study_uid, series_uid, sop_uid)
    stored = inst.transfer_syntax_uid
    resource = Resource.PIXELS if tag == 0x7FE00010 else Resource.BULK
    choice = choose(ranges, resource, stored, can_transcode)
    data = await blocking(read_verified, services(request).store, inst.object_key, inst.sha256)
    if choice.media_type != OCTETS:
        parts = await _frames_or_404(data, stored, choice.transfer_syntax, None)
    else:
        if resource is Resource.PIXELS and not _same_pixels(stored, choice.transfer_syntax):
            data = await blocking(_transcoded, data, choice.transfer_syntax)
        value = await blocking(bulk_value, data, tag)
        if value is None:
            raise NotFound(f"instance {sop_uid} has no bulk data {text.upper()}")
        parts = [value]
    return _multipart(parts, choice)


def _same_pixels(stored: str, syntax: str) -> bool:
    return syntax == stored or (syntax == EXPLICIT_LE and stored in NATIVE)


def _transcoded(data: bytes, syntax: str) -> bytes:
    try:
        return transcode(data, syntax)
    except TranscodeError as exc:
        raise NotAcceptable(str(exc)) from exc


async def _frames_or_404(
    data: bytes, stored: str, syntax: str, numbers: list[int] | None
) -> list[bytes]:
    """Frames in ``syntax`` (all of them for None): 404 for a frame past the end or no pixel
    data, 406 when the instance cannot be decoded after all."""
    try:
        if numbers is None:
            if not _same_pixels(stored, syntax):
                data = await blocking(_transcoded, data, syntax)
            return await blocking(all_frames, data)
        return await blocking(frames_in, data, stored, syntax, numbers)
    except FrameError as exc:
        raise NotFound(str(exc)) from exc
    except TranscodeError as exc:
        raise NotAcceptable(str(exc)) from exc


def _multipart(parts: list[bytes], choice: Choice) -> web.Response:
    boundary = new_boundary()
    part = choice.part_type()
    body = b"".join(
        part_header(boundary, part, first=n == 0) + chunk for n, chunk in enumerate(parts)
    ) + closing(boundary)
    return web.Response(
        body=body, headers={"Content-Type": content_type(boundary, choice.media_type)}
    )


async def thumbnail(request: web.Request) -> web.Response:
    _, series_uid, _ = await _targets(request)
    svc = services(request)
    jpeg = await series_jpeg(svc.store, svc.index, series_uid)
    return web.Response(body=jpeg, content_type="image/jpeg")


async def frames(request: web.Request) -> web.Response:
    """WADO-RS frames (1-based, comma-separated) as multipart/related: uncompressed
    (application/octet-stream) by default, as stored for transfer-syntax=*, or under the image
    type of a compressed syntax (image/jls, image/jp2, ...), decoded or re-encoded if needed."""
    text = request.match_info["frames"]
    params.frame_list(text)  # the list's form, before any file or index access
    ranges = accepted(request)
    study_uid, series_uid, sop_uid = await _targets(request)
    (inst,) = await instances_of(request, study_uid, series_uid, sop_uid)
    numbers = list(params.frame_list(text, inst.number_of_frames))
    choice = choose(ranges, Resource.PIXELS, inst.transfer_syntax_uid, can_transcode)
    svc = services(request)
    if (inst.number_of_frames or 1) > 1:
        layout = await blocking(svc.index.frame_layout, inst.sop_uid, inst.sha256)
        if layout is not None and _same_pixels(inst.transfer_syntax_uid, choice.transfer_syntax):
            # read by byte range: the object is neither fetched nor parsed
            chunks = await blocking(_ranged_frames, svc.store, inst.object_key, layout, numbers)
            return _multipart(chunks, choice)
        if layout is not None:  # each frame out of a one-frame instance of its byte range
            chunks = await _frames_or_404_each(svc.store, inst, layout, choice, numbers)
            return _multipart(chunks, choice)
    data = await blocking(read_verified, svc.store, inst.object_key, inst.sha256)
    chunks = await _frames_or_404(data, inst.transfer_syntax_uid, choice.transfer_syntax, numbers)
    return _multipart(chunks, choice)


async def _frames_or_404_each(
    store: ObjectStore,
    inst: InstanceSummary,
    layout: FrameLayout,
    choice: Choice,
    numbers: list[int],
) -> list[bytes]:
    """Frames in another syntax than stored, each transcoded from a one-frame instance made
    of the header's and the frame's byte ranges (one frame in memory at a time)."""
    out = []
    for n in numbers:
        if layout.fragments and n > len(layout.fragments):
            raise NotFound(f"frame {n} is past the end of the instance")
        single = await blocking(frame_instance, store, inst.object_key, layout, n)
        out.extend(
            await _frames_or_404(single, inst.transfer_syntax_uid, choice.transfer_syntax, [1])
        )
    return out


def _ranged_frames(
    store: ObjectStore, key: str, layout: FrameLayout, numbers: list[int]
) -> list[bytes]:
    """The frames' bytes by their ranges in the stored object (numbers checked against the
    instance's frame count already). The whole object's sha256 is not checked on this path;
    an object shorter than its layout says is an IntegrityError (a 500, never a cut frame)."""
    out = []
    for n in numbers:
        if layout.fragments and n > len(layout.fragments):
            raise NotFound(f"frame {n} is past the end of the instance")
        wanted = layout.frame_range(n)
        chunk = store.get(key, wanted)
        if wanted.end is not None and len(chunk) != wanted.end - wanted.start:
            raise IntegrityError(f"object {key!r} is shorter than its frame layout")
        out.append(chunk)
    return out

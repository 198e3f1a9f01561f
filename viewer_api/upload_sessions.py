"""Resumable upload sessions for large instances: how a hospital gateway delivers one instance
in chunks, resuming after a crash or an outage where the cloud's bytes end.

``POST /gateway/uploads`` with ``{"size", "sha256", "sop_uid"}`` opens a session (201, or 200
with the open session of the same instance and hash) and answers ``{"session", "offset",
"size", "expires_at"}``; a declared size above ``UploadSettings.max_bytes`` is 413, more than
``max_open`` open sessions for one hospital 429. ``PATCH /gateway/uploads/{session}`` with
``Upload-Offset: N`` appends its body at N: N must be the offset the cloud has (else 409 with
the current ``offset``), and N plus the body may not pass the declared size (413, nothing of
the body kept). The body waits in memory (or this process's scratch space), is stored as one
object of the region's store (under ``uploads.staging/<hospital>/<session>/``), and only then
recorded in the region's state as received and answered (204, ``Upload-Offset``); a body cut
short keeps what arrived, so the gateway resumes from there. ``HEAD``/``GET
/gateway/uploads/{session}`` answer the offset (``Upload-Offset``, ``Upload-Length``; GET also
as JSON). ``POST /gateway/uploads/{session}/finalize`` joins the chunks, checks their size and
sha256 (a mismatch is 400 and the session is dropped, nothing stored), commits the instance
exactly like a part of a batch (viewer_api.ingest_api: the same per-instance outcome
``stored``/``duplicate``/``refused``, the hospital of the credential, the same counters) and
deletes the chunks; finalizing the same session again answers its outcome as ``duplicate``.

The caller is a gateway with a live token (viewer_api.ingest_api.gateway_principal: 401 without
one, 403 for a revoked credential or a staff token). A session belongs to the caller's
hospital: another hospital's token finds none (404, like one that never existed). Its state is
in the region's database (image_store.state.uploads) and its bytes in the region's store, so a
restarted cloud, or any other API process of the region behind the same load balancer, resumes
it. One request at a time writes to a session (a lease in the database; a second writer meanwhile
gets 409, and a lease a dead process held runs out after ``lease_s``). A full disk is 507 (what
was acknowledged stays). Sessions older than ``ttl_s`` are removed with their chunks (checked
whenever a session is opened, and on each request for an expired one). Opening and finalizing
are audited.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import os
import re
import secrets
import shutil
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO, Protocol, cast

from aiohttp import web

from image_store.audit import AuditEvent
from image_store.errors import ImageStoreError
from image_store.keys import check_hospital, is_valid_uid
from image_store.metadata import check_instance
from image_store.ports import ObjectStore
from image_store.state.ports import UploadSessions as UploadSessionStates
from image_store.state.uploads import UploadSession
from viewer_api import openapi_schemas as s
from viewer_api.context import ACTOR, json_object
from viewer_api.errors import (
    BadRequest,
    NotFound,
    PayloadTooLarge,
    ViewerError,
    full_disk_is_507,
)
from viewer_api.ingest_api import (
    INGEST,
    IngestService,
    Part,
    commit_parts,
    gateway_principal,
    refused_entry,
)
from viewer_api.route_table import Auth, Route, add_routes

logger = logging.getLogger(__name__)

UPLOADS_PATH = "/gateway/uploads"
SESSION_PATH = UPLOADS_PATH + "/{session}"
FINALIZE_PATH = SESSION_PATH + "/finalize"
OFFSET_HEADER = "Upload-Offset"
LENGTH_HEADER = "Upload-Length"
_BODY_IN_MEMORY = 8 << 20
"""A request body up to this size waits for the store in memory (a gateway's default chunk)."""
_PREFIX = "uploads.staging"
"""Object keys of staged chunks (the dot keeps them apart from every hospital's keys)."""
_SESSION_ID = re.compile(r"[A-Za-z0-9_-]{32}")
_HEX64 = re.compile(r"[0-9a-f]{64}")
_WRITE = 1 << 20


@dataclass(frozen=True, slots=True)
class UploadSettings:
    root: Path
    """This process's scratch space for chunks on their way to the store and instances being
    checked (the cloud's ``DATA/uploads``)."""
    max_bytes: int = 4 * 1024**3
    """Largest instance a session may declare (413 beyond)."""
    ttl_s: float = 24 * 3600.0
    """A session (and its staged bytes) is removed this long after it was opened."""
    max_open: int = 64
    """Open sessions one hospital may have at once (429 beyond)."""
    lease_s: float = 900.0
    """How long one request may hold a session's writer lease (a process that died holding
    it leaves the session to others after this)."""
    clock: Callable[[], float] = field(default=time.time)


def parse_declaration(body: dict[str, Any]) -> tuple[int, str, str]:
    """``(size, sha256, sop_uid)`` of a session request; BadRequest naming the bad field."""
    size = body.get("size")
    if not isinstance(size, int) or isinstance(size, bool) or size <= 0:
        raise BadRequest(f"size must be a positive integer, got {str(size)[:40]!r}")
    sha = body.get("sha256")
    if not isinstance(sha, str) or not _HEX64.fullmatch(sha.lower()):
        raise BadRequest("sha256 must be 64 hex digits")
    sop_uid = body.get("sop_uid")
    if not isinstance(sop_uid, str) or not is_valid_uid(sop_uid):
        raise BadRequest(f"sop_uid must be 1-64 digits and dots, got {str(sop_uid)[:80]!r}")
    return size, sha.lower(), sop_uid


class SessionBusy(BlockingIOError):
    """Another request is writing to the session right now."""


class UploadSessions:
    """Sessions in the region's state (declaration, bytes received, writer's lease, outcome)
    with their bytes as objects in the region's store, one per acknowledged chunk (blocking
    calls: run them off the event loop). ``settings.root`` is this process's scratch space."""

    def __init__(
        self, settings: UploadSettings, states: UploadSessionStates, objects: ObjectStore
    ) -> None:
        self.settings = settings
        self.states = states
        self.objects = objects
        self.root = Path(settings.root)

    def _expired(self, meta: UploadSession) -> bool:
        return meta.created + self.settings.ttl_s <= self.settings.clock()

    def meta(self, hospital: str, session: str) -> UploadSession:
        """The session of ``hospital`` (NotFound if it is another's, expired or unknown)."""
        check_hospital(hospital)
        if not _SESSION_ID.fullmatch(session):
            raise NotFound("no such upload session")
        meta = self.states.get(hospital, session)
        if meta is None:
            raise NotFound("no such upload session")
        if self._expired(meta):
            self.drop(meta)
            raise NotFound("no such upload session")
        return meta

    def sweep(self) -> int:
        """Remove expired sessions with their objects, and scratch files older than the TTL
        (a process that died mid-request left them); returns how many sessions were removed."""
        before = self.settings.clock() - self.settings.ttl_s
        expired = self.states.opened_before(before)
        for meta in expired:
            self.drop(meta)
            logger.info("upload session %s/%s expired and removed", meta.hospital, meta.session)
        stale = time.time() - self.settings.ttl_s  # files carry the real time
        with contextlib.suppress(FileNotFoundError):
            for entry in os.scandir(self.root):
                with contextlib.suppress(FileNotFoundError):
                    if entry.stat(follow_symlinks=False).st_mtime <= stale:
                        if entry.is_dir(follow_symlinks=False):
                            shutil.rmtree(entry.path, ignore_errors=True)
                        else:
                            os.unlink(entry.path)
        return len(expired)

    def open(
        self, hospital: str, sop_uid: str, size: int, sha256: str
    ) -> tuple[UploadSession, bool]:
        """A session for the instance: the open one with the same UID, size and hash, or a new
        one (True); PayloadTooLarge over ``max_bytes``, TooManySessions over ``max_open``."""
        check_hospital(hospital)
        if size > self.settings.max_bytes:
            raise PayloadTooLarge(
                f"an upload session takes at most {self.settings.max_bytes} bytes ({size} declared)"
            )
        self.sweep()
        open_now = 0
        for meta in self.states.of_hospital(hospital):
            if meta.result is not None:
                continue
            if (meta.sop_uid, meta.size, meta.sha256) == (sop_uid, size, sha256):
                return meta, False
            open_now += 1
        if open_now >= self.settings.max_open:
            raise TooManySessions(
                f"hospital {hospital} has {open_now} open upload sessions (at most "
                f"{self.settings.max_open})"
            )
        meta = UploadSession(
            secrets.token_urlsafe(24), hospital, sop_uid, size, sha256, self.settings.clock()
        )
        self.states.add(meta)
        logger.info(
            "upload session %s/%s opened for %s (%d bytes)", hospital, meta.session, sop_uid, size
        )
        return meta, True

    @contextlib.contextmanager
    def writing(self, meta: UploadSession) -> Iterator[str]:
        """This request's writer id, holding the session's lease (SessionBusy while another
        request's runs)."""
        writer = secrets.token_hex(8)
        now = self.settings.clock()
        if not self.states.lease(meta.session, writer, now, now + self.settings.lease_s):
            raise SessionBusy("another upload to this session is in progress")
        try:
            yield writer
        finally:
            self.states.release(meta.session, writer)

    def scratch(self, meta: UploadSession, writer: str) -> Path:
        """A file of this process's scratch space for one request on the session."""
        self.root.mkdir(mode=0o700, parents=True, exist_ok=True)
        return self.root / f"{meta.hospital}.{meta.session}.{writer}"

    def body(self) -> BinaryIO:
        """Where one request's body waits for the store: memory up to a gateway's usual chunk,
        an unnamed file of the scratch space beyond."""
        self.root.mkdir(mode=0o700, parents=True, exist_ok=True)
        return cast(
            BinaryIO,
            tempfile.SpooledTemporaryFile(max_size=_BODY_IN_MEMORY, dir=str(self.root)),
        )

    def acknowledge(self, meta: UploadSession, writer: str, start: int, body: BinaryIO) -> int:
        """Store the bytes ``writer`` received from offset ``start`` (``body``, written to its
        end) as the session's next chunk, then record them as held; the session's offset
        after."""
        size = body.tell()
        body.seek(0)
        key = f"{_PREFIX}/{meta.hospital}/{meta.session}/{start:015d}-{writer}"
        self.objects.put(key, body)
        if not self.states.advance(meta.session, writer, start, start + size, key):
            self.objects.delete(key)
            raise SessionBusy("the session moved on while this chunk was written")
        return start + size

    def assemble(self, meta: UploadSession, into: Path) -> str:
        """Write the session's chunks in order to ``into``; their sha256."""
        h = hashlib.sha256()
        with open(into, "wb") as out:
            for key in meta.chunks:
                data = self.objects.get(key)
                h.update(data)
                out.write(data)
        return h.hexdigest()

    def _remove_objects(self, meta: UploadSession) -> None:
        for key in list(self.objects.iter_keys(f"{_PREFIX}/{meta.hospital}/{meta.session}/")):
            self.objects.delete(key)

    def settle(self, meta: UploadSession, result: dict[str, Any]) -> None:
        """Record the finalized outcome and delete the session's chunks."""
        self.states.settle(meta.session, result)
        self._remove_objects(meta)

    def drop(self, meta: UploadSession) -> None:
        self._remove_objects(meta)
        self.states.delete(meta.session)


class TooManySessions(PermissionError):
    """The hospital has as many open sessions as it may."""


class AuditAppend(Protocol):
    def append(self, event: AuditEvent) -> None: ...


@dataclass(frozen=True, slots=True)
class UploadService:
    sessions: UploadSessions
    ingest: IngestService
    audit: AuditAppend


UPLOADS = web.AppKey("upload_sessions", UploadService)


def add_upload_routes(
    app: web.Application,
    settings: UploadSettings,
    audit: AuditAppend,
    states: UploadSessionStates,
    objects: ObjectStore,
) -> UploadSessions:
    """Add the upload-session routes to ``app``, which must already have the ingest routes
    (viewer_api.ingest_api.add_ingest_routes: gateway tokens, the commit path, the counters).
    Opening and finalizing a session are appended to ``audit`` under the gateway's credential
    (these paths are outside ``/api/``: the audit middleware does not see them)."""
    sessions = UploadSessions(settings, states, objects)
    app[UPLOADS] = UploadService(sessions, app[INGEST], audit)
    offset_header = {
        "name": OFFSET_HEADER,
        "in": "header",
        "required": True,
        "schema": {"type": "integer", "minimum": 0},
    }
    add_routes(
        app,
        [
            Route(
                "POST",
                UPLOADS_PATH,
                create_session,
                "open a resumable upload of one large instance (size, sha256, SOP UID)",
                body=s.json_body(
                    {
                        "type": "object",
                        "properties": {
                            "size": {"type": "integer", "minimum": 1},
                            "sha256": {"type": "string", "pattern": "^[0-9a-fA-F]{64}$"},
                            "sop_uid": s.UID,
                        },
                        "required": ["size", "sha256", "sop_uid"],
                    }
                ),
                auth=Auth.GATEWAY,
                ok={"201": s.json("the new session"), "200": s.json("the open session")},
                errors=(400, 413, 429, 507),
            ),
            Route(
                "GET",
                SESSION_PATH,
                session_state,
                "the bytes an upload session has received",
                auth=Auth.GATEWAY,
                ok={"200": s.json("the session's offset and size")},
                errors=(404,),
            ),
            Route(
                "HEAD",
                SESSION_PATH,
                session_state,
                "the bytes an upload session has received (Upload-Offset)",
                auth=Auth.GATEWAY,
                ok={"200": {"description": "Upload-Offset and Upload-Length headers"}},
                errors=(404,),
            ),
            Route(
                "PATCH",
                SESSION_PATH,
                append_chunk,
                "append a chunk at the session's offset",
                query=(offset_header,),
                body={"content": {"application/offset+octet-stream": {}}},
                auth=Auth.GATEWAY,
                ok={"204": {"description": "stored; Upload-Offset is the new offset"}},
                errors=(400, 404, 409, 413, 507),
            ),
            Route(
                "POST",
                FINALIZE_PATH,
                finalize_session,
                "check the staged instance's size and sha256, then commit it",
                auth=Auth.GATEWAY,
                ok={"200": s.json("the instance's outcome")},
                errors=(400, 404, 409),
            ),
        ],
    )
    return sessions


async def _audited(request: web.Request, actor: str, hospital: str, status: int) -> None:
    event = AuditEvent(
        ts=time.time(),
        actor=actor,
        hospital=hospital,
        role="gateway",
        action=request.method,
        resource=request.path,
        status=status,
        remote=request.remote or "",
    )
    try:
        await asyncio.to_thread(request.app[UPLOADS].audit.append, event)
    except Exception:  # the edge: a failed append is logged, the answer stands
        logger.exception("audit append failed for %s", request.path)


def _offset_conflict(message: str, offset: int, size: int) -> web.Response:
    return web.json_response(
        {"error": message, "status": 409, "offset": offset, "size": size},
        status=409,
        headers={OFFSET_HEADER: str(offset), LENGTH_HEADER: str(size)},
    )


def _session_id(request: web.Request) -> str:
    session = request.match_info["session"]
    if not _SESSION_ID.fullmatch(session):
        raise NotFound("no such upload session")
    return session


async def create_session(request: web.Request) -> web.Response:
    """Open (or find the open) session for a declared instance."""
    svc = request.app[UPLOADS]
    who = await gateway_principal(request)
    request[ACTOR] = who.actor
    size, sha, sop_uid = parse_declaration(await json_object(request, 4096))
    try:
        with full_disk_is_507():
            meta, new = await asyncio.to_thread(svc.sessions.open, who.hospital, sop_uid, size, sha)
    except TooManySessions as exc:
        await _audited(request, who.actor, who.hospital, 429)
        return web.json_response({"error": str(exc), "status": 429}, status=429)
    if new:
        await _audited(request, who.actor, who.hospital, 201)
    return web.json_response(
        {
            "session": meta.session,
            "offset": meta.received,
            "size": meta.size,
            "expires_at": meta.created + svc.sessions.settings.ttl_s,
        },
        status=201 if new else 200,
        headers={"Location": f"{UPLOADS_PATH}/{meta.session}", "Cache-Control": "no-store"},
    )


async def session_state(request: web.Request) -> web.Response:
    """The session's received offset (headers; GET also as JSON)."""
    svc = request.app[UPLOADS]
    who = await gateway_principal(request)
    request[ACTOR] = who.actor
    session = _session_id(request)
    meta = await asyncio.to_thread(svc.sessions.meta, who.hospital, session)
    done = meta.result is not None
    headers = {
        OFFSET_HEADER: str(meta.size if done else meta.received),
        LENGTH_HEADER: str(meta.size),
        "Cache-Control": "no-store",
    }
    body = {
        "session": session,
        "offset": meta.size if done else meta.received,
        "size": meta.size,
        "sop_uid": meta.sop_uid,
        "finalized": done,
        "expires_at": meta.created + svc.sessions.settings.ttl_s,
    }
    return web.json_response(body, headers=headers)


async def append_chunk(request: web.Request) -> web.Response:
    """Append the body at ``Upload-Offset`` (see the module's docstring); a full disk is 507,
    what was written before it stays acknowledged."""
    with full_disk_is_507():
        return await _append(request)


async def _append(request: web.Request) -> web.Response:
    svc = request.app[UPLOADS]
    who = await gateway_principal(request)
    request[ACTOR] = who.actor
    session = _session_id(request)
    raw = request.headers.get(OFFSET_HEADER, "")
    if not raw.isdigit():
        raise BadRequest(f"{OFFSET_HEADER} must be a non-negative integer")
    claimed = int(raw)
    sessions = svc.sessions
    meta = await asyncio.to_thread(sessions.meta, who.hospital, session)
    lease = sessions.writing(meta)
    try:
        writer = await asyncio.to_thread(lease.__enter__)
    except SessionBusy as exc:
        return _offset_conflict(str(exc), meta.received, meta.size)
    start = pos = -1
    acked: int | None = None
    body: BinaryIO | None = None

    def close() -> None:
        """Store and acknowledge what arrived (also from a body cut short: the gateway resumes
        there), then give up the lease."""
        nonlocal acked
        try:
            if body is not None and start >= 0 and pos > start:
                with contextlib.suppress(SessionBusy):
                    acked = sessions.acknowledge(meta, writer, start, body)
        finally:
            if body is not None:
                body.close()
            lease.__exit__(None, None, None)

    try:
        meta = await asyncio.to_thread(sessions.meta, who.hospital, session)  # under the lease
        if meta.result is not None:
            return _offset_conflict("the session is finalized", meta.size, meta.size)
        if claimed != meta.received:
            return _offset_conflict(
                f"{OFFSET_HEADER} {claimed} is not the session's offset {meta.received}",
                meta.received,
                meta.size,
            )
        declared = request.content_length
        if declared is not None and meta.received + declared > meta.size:
            raise PayloadTooLarge(
                f"{declared} bytes at offset {meta.received} pass the declared size {meta.size}"
            )
        start = pos = meta.received
        body = sessions.body()
        while chunk := await request.content.read(_WRITE):
            if pos + len(chunk) > meta.size:
                pos = start  # nothing of an oversized body is kept
                raise PayloadTooLarge(
                    f"the chunk at offset {start} passes the declared size {meta.size}"
                )
            await asyncio.to_thread(body.write, chunk)
            pos += len(chunk)
    finally:
        # one thread call that a cancelled handler cannot cut between the store and the lease
        await asyncio.shield(asyncio.to_thread(close))
        if acked is not None:
            svc.ingest.counters.add(who.hospital, received_bytes=acked - start)
            logger.info(
                "upload session %s/%s: %d bytes at offset %d",
                who.hospital,
                session,
                acked - start,
                start,
            )
    if acked is None and pos > start:  # another request moved the session on meanwhile
        meta = await asyncio.to_thread(sessions.meta, who.hospital, session)
        return _offset_conflict("the session moved on meanwhile", meta.received, meta.size)
    offset = start if acked is None else acked
    return web.Response(
        status=204, headers={OFFSET_HEADER: str(offset), LENGTH_HEADER: str(meta.size)}
    )


def _finalize(svc: UploadService, meta: UploadSession, path: Path) -> dict[str, Any]:
    """Check and commit the assembled instance at ``path`` (blocking); its outcome entry."""
    part = Part(0, path, meta.size, meta.sha256)
    try:
        uid = check_instance(path).sop_instance_uid
    except ImageStoreError as exc:
        part.result = refused_entry(f"not a complete DICOM instance: {exc}", 422)
    else:
        if uid != meta.sop_uid:
            part.result = refused_entry(
                f"the instance's SOP Instance UID is not the declared {meta.sop_uid}", 422, uid
            )
        else:
            commit_parts(svc.ingest, meta.hospital, [part])
    result = part.result or refused_entry("not processed", 500, meta.sop_uid, retry=True)
    if result["status"] < 500:
        svc.sessions.settle(meta, result)
    return result


async def finalize_session(request: web.Request) -> web.Response:
    """Check the staged bytes and commit them (see the module's docstring); audited."""
    who = await gateway_principal(request)
    request[ACTOR] = who.actor
    try:
        with full_disk_is_507():
            resp = await _finalize_request(request, who.hospital)
    except ViewerError as exc:
        await _audited(request, who.actor, who.hospital, exc.status)
        raise
    await _audited(request, who.actor, who.hospital, resp.status)
    return resp


def _replay(meta: UploadSession, done: dict[str, Any]) -> web.Response:
    """A finalized session's outcome again: a stored instance is now a duplicate."""
    replay = {**done, "outcome": "duplicate", "status": 200} if done["status"] < 300 else done
    return web.json_response(
        {"hospital": meta.hospital, "session": meta.session, "instance": replay}
    )


async def _finalize_request(request: web.Request, hospital: str) -> web.Response:
    svc = request.app[UPLOADS]
    session = _session_id(request)
    sessions = svc.sessions
    meta = await asyncio.to_thread(sessions.meta, hospital, session)
    if meta.result is not None:
        return _replay(meta, meta.result)
    lease = sessions.writing(meta)
    try:
        writer = await asyncio.to_thread(lease.__enter__)
    except SessionBusy as exc:
        return _offset_conflict(str(exc), meta.received, meta.size)
    staged = sessions.scratch(meta, writer)

    def close() -> None:
        staged.unlink(missing_ok=True)
        lease.__exit__(None, None, None)

    try:
        meta = await asyncio.to_thread(sessions.meta, hospital, session)  # under the lease
        if meta.result is not None:
            return _replay(meta, meta.result)
        if meta.received != meta.size:
            return _offset_conflict(
                f"the session has {meta.received} of its {meta.size} bytes",
                meta.received,
                meta.size,
            )
        got = await asyncio.to_thread(sessions.assemble, meta, staged)
        if got != meta.sha256:
            await asyncio.to_thread(sessions.drop, meta)
            logger.warning("upload session %s/%s: sha-256 mismatch, dropped", hospital, session)
            raise BadRequest(
                "sha-256 mismatch: the staged bytes are not the instance declared; the session "
                "is dropped, nothing stored"
            )
        result = await asyncio.to_thread(_finalize, svc, meta, staged)
    finally:
        await asyncio.shield(asyncio.to_thread(close))
    logger.info(
        "upload session %s/%s finalized: %s %s",
        hospital,
        session,
        result["sop_uid"],
        result["outcome"],
    )
    return web.json_response({"hospital": hospital, "session": session, "instance": result})

"""Resumable upload sessions for large instances: how a hospital gateway delivers one instance
in chunks, resuming after a crash or an outage where the cloud's bytes end.

``POST /gateway/uploads`` with ``{"size", "sha256", "sop_uid"}`` opens a session (201, or 200
with the open session of the same instance and hash) and answers ``{"session", "offset",
"size", "expires_at"}``; a declared size above ``UploadSettings.max_bytes`` is 413, more than
``max_open`` open sessions for one hospital 429. ``PATCH /gateway/uploads/{session}`` with
``Upload-Offset: N`` appends its body at N: N must be the offset the cloud has (else 409 with
the current ``offset``), and N plus the body may not pass the declared size (413, nothing of
the body kept). The bytes are written to the session's file and fsynced before the new offset
is recorded and answered (204, ``Upload-Offset``); a body cut short keeps what arrived, so the
gateway resumes from there. ``HEAD``/``GET /gateway/uploads/{session}`` answer the offset
(``Upload-Offset``, ``Upload-Length``; GET also as JSON). ``POST
/gateway/uploads/{session}/finalize`` checks the staged file's size and sha256 (a mismatch is
400 and the session is dropped, nothing stored), commits it exactly like a part of a batch
(viewer_api.ingest_api: the same per-instance outcome ``stored``/``duplicate``/``refused``,
the hospital of the credential, the same counters) and deletes the staged bytes; finalizing
the same session again answers its outcome as ``duplicate``.

The caller is a gateway with a live token (viewer_api.ingest_api.gateway_principal: 401 without
one, 403 for a revoked credential or a staff token). Sessions live under the caller's hospital
(``root/<hospital>/<session>/``: ``meta.json``, ``data``, ``offset``, ``result.json``), so
another hospital's token finds no session there (404, like one that never existed); they are
on disk, not in a process, so a restarted cloud, or another API process sharing the data
directory, resumes them. A session's file is written under an exclusive ``flock``: a second
writer at the same time gets 409. A full staging disk is 507 (what was acknowledged stays).
Sessions older than ``ttl_s`` are removed with their files (checked whenever a session is
opened, and on each request for an expired one). Opening and finalizing are audited.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import hashlib
import json
import logging
import os
import re
import secrets
import shutil
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from aiohttp import web

from image_store.audit import AuditEvent
from image_store.errors import ImageStoreError
from image_store.fsutil import fsync_dir
from image_store.keys import check_hospital, is_valid_uid
from image_store.metadata import check_instance
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
_SESSION_ID = re.compile(r"[A-Za-z0-9_-]{32}")
_HEX64 = re.compile(r"[0-9a-f]{64}")
_WRITE = 1 << 20
_HASH_READ = 4 << 20


@dataclass(frozen=True, slots=True)
class UploadSettings:
    root: Path
    """Where sessions are staged (the cloud's ``DATA/uploads``)."""
    max_bytes: int = 4 * 1024**3
    """Largest instance a session may declare (413 beyond)."""
    ttl_s: float = 24 * 3600.0
    """A session (and its staged bytes) is removed this long after it was opened."""
    max_open: int = 64
    """Open sessions one hospital may have at once (429 beyond)."""
    clock: Callable[[], float] = field(default=time.time)


@dataclass(frozen=True, slots=True)
class SessionMeta:
    session: str
    hospital: str
    sop_uid: str
    size: int
    sha256: str
    created: float

    def as_json(self) -> dict[str, Any]:
        return {
            "session": self.session,
            "hospital": self.hospital,
            "sop_uid": self.sop_uid,
            "size": self.size,
            "sha256": self.sha256,
            "created": self.created,
        }


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
    """The sessions on disk (blocking calls: run them off the event loop)."""

    def __init__(self, settings: UploadSettings) -> None:
        self.settings = settings
        self.root = Path(settings.root)

    def _dir(self, hospital: str, session: str) -> Path:
        check_hospital(hospital)
        if not _SESSION_ID.fullmatch(session):
            raise NotFound("no such upload session")
        return self.root / hospital / session

    def _write_json(self, path: Path, value: dict[str, Any]) -> None:
        tmp = path.with_suffix(".tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            json.dump(value, fh)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
        fsync_dir(path.parent)

    def _expired(self, meta: SessionMeta) -> bool:
        return meta.created + self.settings.ttl_s <= self.settings.clock()

    def _read_meta(self, where: Path) -> SessionMeta | None:
        try:
            raw = json.loads((where / "meta.json").read_text(encoding="utf-8"))
            return SessionMeta(
                str(raw["session"]),
                str(raw["hospital"]),
                str(raw["sop_uid"]),
                int(raw["size"]),
                str(raw["sha256"]),
                float(raw["created"]),
            )
        except (OSError, ValueError, KeyError, TypeError):
            return None

    def meta(self, hospital: str, session: str) -> SessionMeta:
        """The session of ``hospital`` (NotFound if it is another's, expired or unknown)."""
        where = self._dir(hospital, session)
        meta = self._read_meta(where)
        if meta is None or meta.hospital != hospital:
            raise NotFound("no such upload session")
        if self._expired(meta):
            self.drop(hospital, session)
            raise NotFound("no such upload session")
        return meta

    def _metas(self, hospital: str) -> Iterator[SessionMeta]:
        try:
            names = os.listdir(self.root / hospital)
        except FileNotFoundError:
            return
        for name in names:
            if _SESSION_ID.fullmatch(name):
                meta = self._read_meta(self.root / hospital / name)
                if meta is not None:
                    yield meta

    def sweep(self) -> int:
        """Remove expired sessions of every hospital (and leftovers without metadata older
        than the TTL); returns how many were removed."""
        removed = 0
        try:
            hospitals = os.listdir(self.root)
        except FileNotFoundError:
            return 0
        now = self.settings.clock()
        for hospital in hospitals:
            try:
                names = os.listdir(self.root / hospital)
            except (FileNotFoundError, NotADirectoryError):
                continue
            for name in names:
                where = self.root / hospital / name
                meta = self._read_meta(where)
                if meta is not None:
                    old = self._expired(meta)
                else:
                    try:
                        old = where.stat().st_mtime + self.settings.ttl_s <= now
                    except FileNotFoundError:
                        continue
                if old:
                    shutil.rmtree(where, ignore_errors=True)
                    removed += 1
                    logger.info("upload session %s/%s expired and removed", hospital, name)
        return removed

    def open(self, hospital: str, sop_uid: str, size: int, sha256: str) -> tuple[SessionMeta, bool]:
        """A session for the instance: the open one with the same UID, size and hash, or a new
        one (True); PayloadTooLarge over ``max_bytes``, TooManySessions over ``max_open``."""
        check_hospital(hospital)
        if size > self.settings.max_bytes:
            raise PayloadTooLarge(
                f"an upload session takes at most {self.settings.max_bytes} bytes ({size} declared)"
            )
        self.sweep()
        open_now = 0
        for meta in self._metas(hospital):
            if self._result(self.root / hospital / meta.session) is not None:
                continue
            if (meta.sop_uid, meta.size, meta.sha256) == (sop_uid, size, sha256):
                return meta, False
            open_now += 1
        if open_now >= self.settings.max_open:
            raise TooManySessions(
                f"hospital {hospital} has {open_now} open upload sessions (at most "
                f"{self.settings.max_open})"
            )
        session = secrets.token_urlsafe(24)
        where = self.root / hospital / session
        where.mkdir(mode=0o700, parents=True)
        os.close(os.open(where / "data", os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))
        self._write_json(where / "offset", {"offset": 0})
        meta = SessionMeta(session, hospital, sop_uid, size, sha256, self.settings.clock())
        self._write_json(where / "meta.json", meta.as_json())
        logger.info(
            "upload session %s/%s opened for %s (%d bytes)", hospital, session, sop_uid, size
        )
        return meta, True

    def offset(self, hospital: str, session: str) -> int:
        where = self._dir(hospital, session)
        try:
            return int(json.loads((where / "offset").read_text(encoding="utf-8"))["offset"])
        except FileNotFoundError:
            return 0

    def _result(self, where: Path) -> dict[str, Any] | None:
        try:
            value = json.loads((where / "result.json").read_text(encoding="utf-8"))
        except (FileNotFoundError, ValueError):
            return None
        return value if isinstance(value, dict) else None

    def result(self, hospital: str, session: str) -> dict[str, Any] | None:
        """The outcome a finalized session recorded, or None."""
        return self._result(self._dir(hospital, session))

    @contextlib.contextmanager
    def writing(self, hospital: str, session: str) -> Iterator[int]:
        """The session's data file, opened for writing under an exclusive lock (SessionBusy
        when another request holds it)."""
        where = self._dir(hospital, session)
        try:
            fd = os.open(where / "data", os.O_RDWR)
        except FileNotFoundError as exc:
            raise NotFound("no such upload session") from exc
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError as exc:
                raise SessionBusy("another upload to this session is in progress") from exc
            yield fd
        finally:
            os.close(fd)

    def acknowledge(self, hospital: str, session: str, fd: int, offset: int) -> None:
        """Make the data durable, then record ``offset`` as what the cloud has."""
        os.ftruncate(fd, offset)
        os.fsync(fd)
        self._write_json(self._dir(hospital, session) / "offset", {"offset": offset})

    def data_path(self, hospital: str, session: str) -> Path:
        return self._dir(hospital, session) / "data"

    def settle(self, hospital: str, session: str, result: dict[str, Any]) -> None:
        """Record the finalized outcome and delete the staged bytes."""
        where = self._dir(hospital, session)
        self._write_json(where / "result.json", result)
        for name in ("data", "offset"):
            with contextlib.suppress(FileNotFoundError):
                (where / name).unlink()
        fsync_dir(where)

    def drop(self, hospital: str, session: str) -> None:
        shutil.rmtree(self._dir(hospital, session), ignore_errors=True)


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
    app: web.Application, settings: UploadSettings, audit: AuditAppend
) -> UploadSessions:
    """Add the upload-session routes to ``app``, which must already have the ingest routes
    (viewer_api.ingest_api.add_ingest_routes: gateway tokens, the commit path, the counters).
    Opening and finalizing a session are appended to ``audit`` under the gateway's credential
    (these paths are outside ``/api/``: the audit middleware does not see them)."""
    sessions = UploadSessions(settings)
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
    offset = await asyncio.to_thread(svc.sessions.offset, who.hospital, meta.session)
    return web.json_response(
        {
            "session": meta.session,
            "offset": offset,
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
    offset = await asyncio.to_thread(svc.sessions.offset, who.hospital, session)
    done = await asyncio.to_thread(svc.sessions.result, who.hospital, session)
    headers = {
        OFFSET_HEADER: str(meta.size if done else offset),
        LENGTH_HEADER: str(meta.size),
        "Cache-Control": "no-store",
    }
    body = {
        "session": session,
        "offset": meta.size if done else offset,
        "size": meta.size,
        "sop_uid": meta.sop_uid,
        "finalized": done is not None,
        "expires_at": meta.created + svc.sessions.settings.ttl_s,
    }
    return web.json_response(body, headers=headers)


def _pwrite_all(fd: int, data: bytes, pos: int) -> None:
    view = memoryview(data)
    while view:
        n = os.pwrite(fd, view, pos)
        view, pos = view[n:], pos + n


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
    lock = sessions.writing(who.hospital, session)
    try:
        fd = await asyncio.to_thread(lock.__enter__)
    except SessionBusy as exc:
        offset = await asyncio.to_thread(sessions.offset, who.hospital, session)
        return _offset_conflict(str(exc), offset, meta.size)
    current = pos = -1

    def close() -> None:
        """Acknowledge what was written (also from a body cut short: the gateway resumes
        there), then unlock."""
        try:
            if current >= 0:
                sessions.acknowledge(who.hospital, session, fd, pos)
        finally:
            lock.__exit__(None, None, None)

    try:
        if await asyncio.to_thread(sessions.result, who.hospital, session) is not None:
            return _offset_conflict("the session is finalized", meta.size, meta.size)
        known = await asyncio.to_thread(sessions.offset, who.hospital, session)
        if claimed != known:
            return _offset_conflict(
                f"{OFFSET_HEADER} {claimed} is not the session's offset {known}", known, meta.size
            )
        declared = request.content_length
        if declared is not None and known + declared > meta.size:
            raise PayloadTooLarge(
                f"{declared} bytes at offset {known} pass the declared size {meta.size}"
            )
        current = pos = known
        while chunk := await request.content.read(_WRITE):
            if pos + len(chunk) > meta.size:
                pos = current  # nothing of an oversized body is kept
                raise PayloadTooLarge(
                    f"the chunk at offset {current} passes the declared size {meta.size}"
                )
            await asyncio.to_thread(_pwrite_all, fd, chunk, pos)
            pos += len(chunk)
    finally:
        # one thread call that a cancelled handler cannot cut between the fsync and the unlock
        await asyncio.shield(asyncio.to_thread(close))
        if pos > current:
            svc.ingest.counters.add(who.hospital, received_bytes=pos - current)
            logger.info(
                "upload session %s/%s: %d bytes at offset %d",
                who.hospital,
                session,
                pos - current,
                current,
            )
    return web.Response(
        status=204, headers={OFFSET_HEADER: str(pos), LENGTH_HEADER: str(meta.size)}
    )


def _file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        while chunk := fh.read(_HASH_READ):
            h.update(chunk)
    return h.hexdigest()


def _finalize(svc: UploadService, meta: SessionMeta, hospital: str) -> dict[str, Any]:
    """Check and commit the staged file (blocking); the instance's outcome entry."""
    path = svc.sessions.data_path(hospital, meta.session)
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
            commit_parts(svc.ingest, hospital, [part])
    result = part.result or refused_entry("not processed", 500, meta.sop_uid, retry=True)
    if result["status"] < 500:
        svc.sessions.settle(hospital, meta.session, result)
    return result


async def finalize_session(request: web.Request) -> web.Response:
    """Check the staged bytes and commit them (see the module's docstring); audited."""
    who = await gateway_principal(request)
    request[ACTOR] = who.actor
    try:
        resp = await _finalize_request(request, who.hospital)
    except ViewerError as exc:
        await _audited(request, who.actor, who.hospital, exc.status)
        raise
    await _audited(request, who.actor, who.hospital, resp.status)
    return resp


async def _finalize_request(request: web.Request, hospital: str) -> web.Response:
    svc = request.app[UPLOADS]
    session = _session_id(request)
    sessions = svc.sessions
    meta = await asyncio.to_thread(sessions.meta, hospital, session)
    lock = sessions.writing(hospital, session)
    try:
        await asyncio.to_thread(lock.__enter__)
    except NotFound:
        done = await asyncio.to_thread(sessions.result, hospital, session)
        if done is None:
            raise
        replay = {**done, "outcome": "duplicate", "status": 200} if done["status"] < 300 else done
        return web.json_response({"hospital": hospital, "session": session, "instance": replay})
    except SessionBusy as exc:
        offset = await asyncio.to_thread(sessions.offset, hospital, session)
        return _offset_conflict(str(exc), offset, meta.size)
    try:
        offset = await asyncio.to_thread(sessions.offset, hospital, session)
        if offset != meta.size:
            return _offset_conflict(
                f"the session has {offset} of its {meta.size} bytes", offset, meta.size
            )
        got = await asyncio.to_thread(_file_sha256, sessions.data_path(hospital, session))
        if got != meta.sha256:
            await asyncio.to_thread(sessions.drop, hospital, session)
            logger.warning("upload session %s/%s: sha-256 mismatch, dropped", hospital, session)
            raise BadRequest(
                "sha-256 mismatch: the staged bytes are not the instance declared; the session "
                "is dropped, nothing stored"
            )
        result = await asyncio.to_thread(_finalize, svc, meta, hospital)
    finally:
        await asyncio.to_thread(lock.__exit__, None, None, None)
    logger.info(
        "upload session %s/%s finalized: %s %s",
        hospital,
        session,
        result["sop_uid"],
        result["outcome"],
    )
    return web.json_response({"hospital": hospital, "session": session, "instance": result})

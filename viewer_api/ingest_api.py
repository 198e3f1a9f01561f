"""The cloud's ingest endpoint for hospital gateways: ``POST /api/ingest/batch``, and the token
exchange it needs (``POST /api/gateway/token``, see viewer_api.gateway_auth).

The batch body is ``multipart/related; type="application/dicom"``, one instance per part, each
part carrying its SHA-256 as ``Content-Digest: sha-256=:<base64>:`` (RFC 9530) or
``X-SHA256: <hex>``. Parts are streamed to private temporary files (0600) as they arrive and
hashed on the way; a part whose bytes do not match its digest, that is not a complete DICOM
instance (image_store.metadata.check_instance) or that is over the per-part cap is refused
alone with the reason, nothing of it stored. Verified parts are committed, a bounded group at
a time while the rest of the body still arrives, through LocalIngest with the hospital of the
caller's credential (never one the instances name) and ``trusted_links``.

The answer (200) lists every part in order: ``{"part", "sop_uid", "study_uid", "series_uid",
"outcome": "stored"|"duplicate"|"refused", "reason", "status", "retry"}``; ``duplicate`` means
the same bytes were stored before (idempotent by SOP Instance UID + hash: a replayed batch
stores nothing twice); ``retry`` marks a refusal that sending the same bytes again can cure
(they were damaged on the way). A body cut short (a part shorter than announced, no closing
boundary) is answered 400 with the same list for the parts that arrived whole: those were
committed (they are independent instances) and the gateway's retry finds them as duplicates;
the cut part and anything after it were not. A body over the per-request cap is 413 (declared:
before anything is read). 401 without a live gateway token, 403 for a revoked credential or a
staff token. Out of disk (ENOSPC, EDQUOT) while a part is written or a group committed is 507
for the request, never a per-instance refusal: the gateway keeps the instances and sends them
again; parts committed before it are listed (and found as duplicates then).
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import hashlib
import logging
import os
import re
import threading
import urllib.parse
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from aiohttp import BodyPartReader, MultipartReader, web
from aiohttp.http_exceptions import HttpProcessingError

from image_store.errors import ImageStoreError
from image_store.gateway_assertion import BATCH_PATH, TOKEN_PATH
from image_store.ingest import LocalIngest
from image_store.metadata import check_instance
from viewer_api import openapi_schemas as s
from viewer_api.context import ACTOR
from viewer_api.dicomweb.multipart import DICOM, part_files
from viewer_api.errors import (
    BadRequest,
    Forbidden,
    PayloadTooLarge,
    Unauthorized,
    ViewerError,
    out_of_space,
)
from viewer_api.gateway_auth import (
    ASSERTION_TYPE,
    GatewayAuth,
    GatewayPrincipal,
    is_gateway_token,
)
from viewer_api.route_table import Auth, Route, add_routes

logger = logging.getLogger(__name__)

MAX_PARTS = 10_000
WRITE_BYTES = 1 << 20
_MAX_FORM = 16 * 1024
_HEX64 = re.compile(r"[0-9a-fA-F]{64}")


@dataclass(frozen=True, slots=True)
class IngestSettings:
    max_part_bytes: int = 512 * 1024**2
    """Largest instance one part may carry (a bigger one is refused alone, 413)."""
    max_request_bytes: int = 2 * 1024**3
    """Largest batch body (413 for the request)."""
    commit_bytes: int = 32 * 1024**2
    """Verified bytes gathered before a group is committed (read into memory for it)."""
    tmp_dir: Path | None = None
    """Where parts are written while a request lasts (None: the system's temp dir)."""


@dataclass
class HospitalCounts:
    batches: int = 0
    stored: int = 0
    stored_bytes: int = 0
    duplicate: int = 0
    refused: int = 0
    received_bytes: int = 0


@dataclass
class IngestCounters:
    """Per-hospital ingest counters of this process, for ``/metrics``."""

    by_hospital: dict[str, HospitalCounts] = field(default_factory=dict)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def add(self, hospital: str, **deltas: int) -> None:
        with self.lock:
            counts = self.by_hospital.setdefault(hospital, HospitalCounts())
            for name, delta in deltas.items():
                setattr(counts, name, getattr(counts, name) + delta)

    def snapshot(self) -> dict[str, HospitalCounts]:
        with self.lock:
            return {h: HospitalCounts(**vars(c)) for h, c in self.by_hospital.items()}

    def render(self) -> str:
        """Prometheus text lines (``cloudfilm_ingest_*_total{hospital="H"}``)."""
        snap = self.snapshot()
        lines: list[str] = []
        for name, help_text in (
            ("batches", "gateway batches received"),
            ("stored", "instances stored from gateways"),
            ("stored_bytes", "bytes of instances stored from gateways"),
            ("duplicate", "instances received again with the same bytes"),
            ("refused", "instances refused"),
            ("received_bytes", "part bytes received from gateways"),
        ):
            metric = f"cloudfilm_ingest_{name}_total"
            lines += [f"# HELP {metric} {help_text}", f"# TYPE {metric} counter"]
            lines += [
                f'{metric}{{hospital="{h}"}} {getattr(c, name)}' for h, c in sorted(snap.items())
            ]
        return "\n".join(lines) + "\n"


@dataclass(frozen=True, slots=True)
class IngestService:
    auth: GatewayAuth
    ingest: LocalIngest
    settings: IngestSettings
    counters: IngestCounters
    staff_verifier: Callable[[str], object] | None = None
    on_committed: Callable[[set[str]], None] | None = None
    """Called (in a worker thread) with the Series Instance UIDs of each committed group."""


INGEST = web.AppKey("gateway_ingest", IngestService)


def add_ingest_routes(
    app: web.Application,
    auth: GatewayAuth,
    ingest: LocalIngest,
    *,
    settings: IngestSettings | None = None,
    counters: IngestCounters | None = None,
    staff_verifier: Callable[[str], object] | None = None,
    on_committed: Callable[[set[str]], None] | None = None,
) -> IngestCounters:
    """Add ``POST /api/gateway/token`` and ``POST /api/ingest/batch`` to ``app``; returns the
    counters (for ``/metrics``). ``ingest`` should be built with ``trusted_links=True``;
    ``staff_verifier`` (e.g. ``TokenSigner.verify``) tells a staff token (403) from garbage
    (401); ``on_committed`` hears the series each committed group touched (the cloud warms
    their thumbnails)."""
    counters = counters or IngestCounters()
    app[INGEST] = IngestService(
        auth, ingest, settings or IngestSettings(), counters, staff_verifier, on_committed
    )
    add_routes(
        app,
        [
            Route(
                "POST",
                TOKEN_PATH,
                token_endpoint,
                "trade a gateway's signed client assertion (RFC 7523) for a short-lived token",
                body=s.FORM_BODY,
                auth=Auth.NONE,
                ok={"200": s.json("the token")},
                errors=(400, 401, 403, 413),
            ),
            Route(
                "POST",
                BATCH_PATH,
                ingest_batch,
                "a gateway's batch of instances (multipart/related, a sha-256 per part)",
                body=s.MULTIPART_BODY,
                auth=Auth.GATEWAY,
                ok={"200": s.json("per-instance outcomes")},
                errors=(413, 507),
            ),
        ],
    )
    return counters


async def token_endpoint(request: web.Request) -> web.Response:
    """Trade a signed client assertion for a short-lived bearer token."""
    svc = request.app[INGEST]
    if request.content_length is not None and request.content_length > _MAX_FORM:
        raise PayloadTooLarge(f"a token request is at most {_MAX_FORM} bytes")
    raw = await request.content.read(_MAX_FORM + 1)
    if len(raw) > _MAX_FORM:
        raise PayloadTooLarge(f"a token request is at most {_MAX_FORM} bytes")
    try:
        form = urllib.parse.parse_qs(raw.decode("ascii"), strict_parsing=False)
    except (UnicodeDecodeError, ValueError) as exc:
        raise BadRequest("a token request is an application/x-www-form-urlencoded form") from exc
    if form.get("grant_type") != ["client_credentials"]:
        raise BadRequest("grant_type must be client_credentials")
    if form.get("client_assertion_type") != [ASSERTION_TYPE]:
        raise BadRequest(f"client_assertion_type must be {ASSERTION_TYPE}")
    assertion = form.get("client_assertion", [""])
    if len(assertion) != 1 or not assertion[0]:
        raise Unauthorized("a client_assertion is required")
    issued = await asyncio.to_thread(svc.auth.exchange, assertion[0])
    request[ACTOR] = issued.principal.actor
    return web.json_response(
        {
            **issued.as_json(),
            "max_part_bytes": svc.settings.max_part_bytes,
            "max_request_bytes": svc.settings.max_request_bytes,
        },
        headers={"Cache-Control": "no-store"},
    )


async def gateway_principal(request: web.Request) -> GatewayPrincipal:
    """The gateway calling, from its bearer token. 401 without a live gateway token, 403 for
    a revoked credential or another party's (a staff) token."""
    svc = request.app[INGEST]
    scheme, _, token = request.headers.get("Authorization", "").partition(" ")
    token = token.strip()
    if scheme.lower() != "bearer" or not token:
        raise Unauthorized("a gateway bearer token is required")
    if is_gateway_token(token):
        return await asyncio.to_thread(svc.auth.authenticate, token)
    if svc.staff_verifier is not None:
        try:
            svc.staff_verifier(token)
        except ViewerError:
            pass
        else:
            raise Forbidden("only a hospital gateway's credential may deliver to this endpoint")
    raise Unauthorized("not a gateway token")


def part_digest(headers: Any) -> bytes | None:
    """The SHA-256 a part announces (Content-Digest sha-256, or X-SHA256 hex), or None."""
    digest = headers.get("Content-Digest")
    if digest:
        for item in digest.split(","):
            algo, _, value = item.strip().partition("=")
            value = value.strip()
            if algo.strip().lower() == "sha-256" and value[:1] == value[-1:] == ":":
                try:
                    raw = base64.b64decode(value[1:-1], validate=True)
                except (binascii.Error, ValueError):
                    return None
                return raw if len(raw) == 32 else None
        return None
    hexed = headers.get("X-SHA256", "").strip()
    return bytes.fromhex(hexed) if _HEX64.fullmatch(hexed) else None


@dataclass(slots=True)
class Part:
    """One received instance of a batch (or an upload session's assembled file): its place in
    the request, its file (None when it was dropped unread, too large), size and sha256."""

    n: int
    path: Path | None
    size: int
    sha256: str = ""
    result: dict[str, Any] | None = None
    """Set once the part is refused or committed."""


def refused_entry(
    reason: str, status: int, sop_uid: str = "", *, retry: bool = False
) -> dict[str, Any]:
    """A refused part's entry; ``retry``: the bytes were damaged on the way, send them again."""
    return {
        "sop_uid": sop_uid,
        "study_uid": "",
        "series_uid": "",
        "outcome": "refused",
        "reason": reason,
        "status": status,
        "retry": retry,
    }


def _write_and_hash(fd: int, data: bytes, h: Any) -> None:
    h.update(data)
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]


async def _receive(
    part: BodyPartReader, where: Path, n: int, *, max_part: int, budget: int
) -> tuple[Part, int]:
    """Stream a part to its file, hashing it; returns it (refused if the digest is missing,
    wrong or the part too large) and how many bytes it had."""
    expected = part_digest(part.headers)
    ptype = part.headers.get("Content-Type", DICOM).split(";")[0].strip().lower()
    path = where / f"part-{n:05d}.dcm"
    fd = await asyncio.to_thread(os.open, path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    h = hashlib.sha256()
    size = 0
    too_large = False
    pending: list[bytes] = []
    pending_bytes = 0
    try:
        while chunk := await part.read_chunk(WRITE_BYTES):
            size += len(chunk)
            if size > budget:
                raise PayloadTooLarge("the batch is larger than this server accepts in one request")
            if size > max_part:
                too_large, pending, pending_bytes = True, [], 0  # read and dropped
                continue
            pending.append(chunk)
            pending_bytes += len(chunk)
            if pending_bytes >= WRITE_BYTES:
                await asyncio.to_thread(_write_and_hash, fd, b"".join(pending), h)
                pending, pending_bytes = [], 0
        if pending:
            await asyncio.to_thread(_write_and_hash, fd, b"".join(pending), h)
    finally:
        await asyncio.to_thread(os.close, fd)
    got = Part(n, path, size, h.hexdigest())
    if ptype != DICOM:
        got.result = refused_entry(f"part of type {ptype[:80]!r}: only application/dicom", 415)
    elif too_large:
        got.result = refused_entry(
            f"the instance is larger than the {max_part} bytes accepted", 413
        )
    elif expected is None:
        got.result = refused_entry("the part carries no Content-Digest sha-256 (or X-SHA256)", 400)
    elif expected.hex() != got.sha256:
        got.result = refused_entry(
            "sha-256 mismatch: the part is not the bytes it announced", 422, retry=True
        )
    return got, size


IN_MEMORY_BYTES = 16 * 1024**2
"""Parts up to this size are committed from memory (a commit group holds at most
IngestSettings.commit_bytes plus one part)."""


def commit_parts(svc: IngestService, hospital: str, parts: list[Part]) -> None:
    """Check and commit verified parts (blocking; the batch endpoint and the upload sessions'
    finalize both commit through here); sets each part's result."""
    todo: list[tuple[Part, Path | bytes]] = []
    for p in parts:
        if p.path is None:
            continue
        # read once and parsed from memory (a quick structural walk, then one pydicom
        # read); a large part is checked and stored from its file, never read whole
        data: Path | bytes = p.path.read_bytes() if p.size <= IN_MEMORY_BYTES else p.path
        try:
            check_instance(data)
        except ImageStoreError as exc:
            p.result = refused_entry(f"not a complete DICOM instance: {exc}", 422)
            continue
        todo.append((p, data))
    if not todo:
        return
    outcomes = svc.ingest.ingest(hospital, [d for _, d in todo])
    stored = duplicate = stored_bytes = 0
    series: set[str] = set()
    for (p, _data), o in zip(todo, outcomes, strict=True):
        if not o.ok:
            p.result = refused_entry(o.reason or "refused", 409, o.sop_uid)
            continue
        series.add(o.series_uid)
        dup = o.duplicate
        p.result = {
            "sop_uid": o.sop_uid,
            "study_uid": o.study_uid,
            "series_uid": o.series_uid,
            "outcome": "duplicate" if dup else "stored",
            "reason": "",
            "status": 200 if dup else 201,
            "retry": False,
        }
        if dup:
            duplicate += 1
        else:
            stored += 1
            stored_bytes += p.size
    svc.counters.add(hospital, stored=stored, stored_bytes=stored_bytes, duplicate=duplicate)
    if series and svc.on_committed is not None:
        try:
            svc.on_committed(series)
        except Exception:  # a hook's failure never fails the committed batch
            logger.exception("on_committed hook failed")


class _Committer:
    """Commits verified parts a group at a time, one group in flight while more arrive."""

    def __init__(self, svc: IngestService, hospital: str) -> None:
        self.svc = svc
        self.hospital = hospital
        self.pending: list[Part] = []
        self.pending_bytes = 0
        self.task: asyncio.Task[None] | None = None

    async def add(self, part: Part) -> None:
        self.pending.append(part)
        self.pending_bytes += part.size
        if self.pending_bytes >= self.svc.settings.commit_bytes:
            await self.flush(wait=False)

    async def flush(self, *, wait: bool = True) -> None:
        if self.task is not None:
            await self.task
            self.task = None
        if self.pending:
            group, self.pending, self.pending_bytes = self.pending, [], 0
            self.task = asyncio.create_task(
                asyncio.to_thread(commit_parts, self.svc, self.hospital, group)
            )
        if wait and self.task is not None:
            await self.task
            self.task = None


def _listing(parts: list[Part]) -> list[dict[str, Any]]:
    return [
        {"part": p.n, **(p.result or refused_entry("not processed", 500, retry=True))}
        for p in parts
    ]


async def ingest_batch(request: web.Request) -> web.Response:
    """Receive, verify and commit a gateway's batch (see the module's docstring)."""
    svc = request.app[INGEST]
    who = await gateway_principal(request)
    request[ACTOR] = who.actor
    ctype = request.headers.get("Content-Type", "").lower()
    if not ctype.startswith("multipart/related"):
        raise BadRequest('a batch is multipart/related; type="application/dicom"')
    cap = svc.settings.max_request_bytes
    if request.content_length is not None and request.content_length > cap:
        raise PayloadTooLarge(f"a batch is at most {cap} bytes ({request.content_length} sent)")
    parts: list[Part] = []
    received = 0
    problem: ViewerError | None = None
    committer = _Committer(svc, who.hospital)
    async with part_files(svc.settings.tmp_dir) as where:
        try:
            reader = MultipartReader(request.headers, request.content)
            while (part := await reader.next()) is not None:
                if len(parts) >= MAX_PARTS:
                    raise PayloadTooLarge(f"a batch carries at most {MAX_PARTS} instances")
                if not isinstance(part, BodyPartReader):
                    raise BadRequest("nested multipart bodies are not accepted")
                got, size = await _receive(
                    part,
                    where,
                    len(parts),
                    max_part=svc.settings.max_part_bytes,
                    budget=cap - received,
                )
                received += size
                if not part.at_eof():
                    raise BadRequest(f"the batch is cut short in part {got.n}")
                parts.append(got)
                if got.result is None:
                    await committer.add(got)
            if not reader.at_eof():
                raise BadRequest("the batch ends without its closing boundary")
        except ViewerError as exc:
            problem = exc
        except (ValueError, AssertionError, HttpProcessingError) as exc:
            problem = BadRequest(f"the batch is cut short or malformed: {str(exc)[:200]}")
        except OSError as exc:
            problem = out_of_space(exc)
            if problem is None:
                raise
        finally:
            try:
                await committer.flush()
            except OSError as exc:
                full = out_of_space(exc)
                if full is None:
                    raise
                problem = full
    refused = sum(1 for p in parts if p.result and p.result["outcome"] == "refused")
    svc.counters.add(who.hospital, batches=1, received_bytes=received, refused=refused)
    body: dict[str, Any] = {"hospital": who.hospital, "instances": _listing(parts)}
    if problem is not None:
        logger.warning(
            "gateway %s: batch refused after %d whole parts: %s", who.actor, len(parts), problem
        )
        body.update(error=str(problem), status=problem.status)
        return web.json_response(body, status=problem.status)
    return web.json_response(body)

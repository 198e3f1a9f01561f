"""What every handler reaches through the request: settings, the services, the caller."""

from __future__ import annotations

import asyncio
import json
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ParamSpec, TypeVar

from aiohttp import web

from image_store.ingest import IngestSink
from image_store.keys import is_valid_uid
from image_store.persons import PersonKeyer
from image_store.ports import Index, ObjectStore
from image_store.state.ports import AuditLog, Consents, Registry, Reports, ShareLinks
from viewer_api.auth import Principal, TokenSigner
from viewer_api.errors import BadRequest, PayloadTooLarge, Unauthorized

P = ParamSpec("P")
T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class ViewerSettings:
    public_base_url: str
    """Scheme, host and port clients use (no trailing slash): share links and RetrieveURLs."""
    share_ttl_s: int = 30 * 86400
    max_limit: int = 1000
    default_limit: int = 100
    cors_origins: frozenset[str] = frozenset()
    """Web origins (e.g. an OHIF viewer's https://viewer.example) allowed to call DICOMweb
    from a browser; empty allows none."""
    stow_max_part_bytes: int = 512 * 1024**2
    """Largest instance one STOW-RS part may carry (a bigger one fails alone, 0xA700)."""
    stow_max_request_bytes: int = 2 * 1024**3
    """Largest STOW-RS request body: a bigger one is refused whole (413), nothing stored."""
    stow_tmp_dir: Path | None = None
    """Where STOW-RS parts are written while a request lasts (None: the system's temp dir)."""


@dataclass(frozen=True, slots=True)
class Services:
    settings: ViewerSettings
    store: ObjectStore
    index: Index
    shares: ShareLinks
    audit: AuditLog
    signer: TokenSigner
    ingest: IngestSink
    consents: Consents
    reports: Reports
    registry: Registry
    persons: PersonKeyer | None = None
    """Turns a person identifier given to the admin API into the master patient index's key."""


SERVICES = web.AppKey("services", Services)
PRINCIPAL = web.RequestKey("principal", Principal)
VIA = web.RequestKey("via", str)
"""How a cross-hospital read was allowed ('consent:<id>' or 'break-glass:<reason>'), audited."""
ACTOR = web.RequestKey("actor", str)
"""Who the audit names when there is no bearer principal (a share link)."""


def services(request: web.Request) -> Services:
    return request.app[SERVICES]


def principal(request: web.Request) -> Principal:
    try:
        return request[PRINCIPAL]
    except KeyError as exc:
        raise Unauthorized("a bearer token is required") from exc


def uid_param(request: web.Request, name: str) -> str:
    """A UID from the path, validated before anything else touches it."""
    value = request.match_info[name]
    if not is_valid_uid(value):
        raise BadRequest(f"{name} must be 1-64 digits and dots, got {value[:80]!r}")
    return value


async def blocking(fn: Callable[P, T], *args: P.args, **kwargs: P.kwargs) -> T:
    """Run index, store and rendering calls off the event loop."""
    return await asyncio.to_thread(fn, *args, **kwargs)


async def hospital_names(request: web.Request) -> dict[str, str]:
    """Hospital code -> name from the registry."""
    return await blocking(request.app[SERVICES].registry.hospital_names)


MAX_JSON_DEPTH = 32
"""Deepest nesting of arrays and objects a JSON request body may have (ours need 3)."""
_JSON_STRING = re.compile(rb'"(?:[^"\\]|\\.)*"')


def json_depth(raw: bytes | bytearray) -> int:
    """How deeply arrays and objects nest in a JSON text (brackets inside strings ignored);
    counted without parsing, so a hostile text cannot exhaust the parser's stack."""
    depth = deepest = 0
    for byte in _JSON_STRING.sub(b"", raw):
        if byte in b"[{":
            depth += 1
            deepest = max(deepest, depth)
        elif byte in b"]}":
            depth -= 1
    return deepest


async def json_object(request: web.Request, max_bytes: int) -> dict[str, Any]:
    """The request body as a JSON object: PayloadTooLarge when it is larger than ``max_bytes``
    (declared or read), BadRequest when it nests deeper than MAX_JSON_DEPTH or is not a JSON
    object."""
    if request.content_length is not None and request.content_length > max_bytes:
        raise PayloadTooLarge(f"the request body is too large (at most {max_bytes} bytes)")
    raw = bytearray()
    while len(raw) <= max_bytes:  # read() returns what has arrived: loop to the end or the cap
        chunk = await request.content.read(max_bytes + 1 - len(raw))
        if not chunk:
            break
        raw += chunk
    if len(raw) > max_bytes:
        raise PayloadTooLarge(f"the request body is too large (at most {max_bytes} bytes)")
    if json_depth(raw) > MAX_JSON_DEPTH:
        raise BadRequest(f"the request body is too deeply nested (at most {MAX_JSON_DEPTH} levels)")
    try:
        body = json.loads(raw or b"null")
    except (ValueError, UnicodeDecodeError, RecursionError) as exc:
        raise BadRequest("the request body must be a JSON object") from exc
    if not isinstance(body, dict):
        raise BadRequest("the request body must be a JSON object")
    return body

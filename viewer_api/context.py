"""What every handler reaches through the request: settings, the services, the caller."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, ParamSpec, TypeVar

from aiohttp import web

from image_store.audit import SqliteAuditLog
from image_store.consents import SqliteConsents
from image_store.ingest import IngestSink
from image_store.keys import is_valid_uid
from image_store.persons import PersonKeyer
from image_store.ports import Index, ObjectStore
from viewer_api.auth import Principal, TokenSigner
from viewer_api.errors import BadRequest, Unauthorized
from viewer_api.registry import SqliteRegistry
from viewer_api.report_store import SqliteReports
from viewer_api.share import SqliteShareLinks

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


@dataclass(frozen=True, slots=True)
class Services:
    settings: ViewerSettings
    store: ObjectStore
    index: Index
    shares: SqliteShareLinks
    audit: SqliteAuditLog
    signer: TokenSigner
    ingest: IngestSink
    consents: SqliteConsents | None = None
    reports: SqliteReports | None = None
    registry: SqliteRegistry | None = None
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
    """Hospital code -> name from the registry ({} without one)."""
    registry = request.app[SERVICES].registry
    return {} if registry is None else await blocking(registry.hospital_names)


async def json_object(request: web.Request, max_bytes: int) -> dict[str, Any]:
    """The request body as a JSON object; BadRequest when it is larger than ``max_bytes``
    (declared or read) or not a JSON object."""
    if request.content_length is not None and request.content_length > max_bytes:
        raise BadRequest("the request body is too large")
    raw = await request.content.read(max_bytes + 1)
    if len(raw) > max_bytes:
        raise BadRequest("the request body is too large")
    try:
        body = json.loads(raw or b"null")
    except (ValueError, UnicodeDecodeError) as exc:
        raise BadRequest("the request body must be a JSON object") from exc
    if not isinstance(body, dict):
        raise BadRequest("the request body must be a JSON object")
    return body

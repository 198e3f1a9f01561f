"""The edge of the API: authentication, errors as JSON, audit of every access, headers."""

from __future__ import annotations

import logging
import re
import time
import weakref
from collections.abc import Iterable
from dataclasses import dataclass

from aiohttp import web
from aiohttp.typedefs import Handler

from image_store.audit import AuditEvent
from viewer_api.context import ACTOR, PRINCIPAL, VIA, blocking, services
from viewer_api.errors import Unauthorized, ViewerError
from viewer_api.openapi import APP_ROUTES
from viewer_api.registry import token_problem
from viewer_api.route_table import Auth, Route

logger = logging.getLogger(__name__)

PROTECTED = ("/dicom-web", "/api/", "/patients/")
"""Path prefixes where a staff bearer token is asked for, except on the routes that identify
their caller another way (see ``paths_without_staff_token``)."""
AUDITED = ("/dicom-web", "/api/", "/film/", "/patients/")


def _error(status: int, message: str) -> web.Response:
    headers = {"WWW-Authenticate": 'Bearer realm="cloudfilm"'} if status == 401 else None
    return web.json_response({"error": message, "status": status}, status=status, headers=headers)


def _started(request: web.Request) -> bool:
    """True once a streamed response has sent bytes: no other response can follow then."""
    return request.writer.output_size > 0


@web.middleware
async def errors(request: web.Request, handler: Handler) -> web.StreamResponse:
    try:
        return await handler(request)
    except ViewerError as exc:
        if _started(request):
            raise
        return _error(exc.status, str(exc))
    except web.HTTPException as exc:
        if exc.status < 400 or _started(request):
            raise
        return _error(exc.status, exc.reason)
    except ConnectionResetError:
        raise  # the client went away mid-response: nothing to answer, nothing to log
    except Exception:  # the edge: nothing unexpected reaches a client as a traceback
        logger.exception("unhandled error on %s %s", request.method, request.path)
        if _started(request):
            raise  # mid-stream: aiohttp drops the connection, the client sees a cut body
        return _error(500, "internal error")


@dataclass(frozen=True, slots=True)
class OpenPaths:
    """Path templates under PROTECTED whose routes are not staff routes: a gateway's token
    (Auth.GATEWAY, checked by its handler) or nobody (Auth.NONE, e.g. the gateway's token
    exchange). The authenticate middleware asks no staff token there, for any method."""

    templates: frozenset[str]
    patterns: tuple[re.Pattern[str], ...]

    def covers(self, path: str) -> bool:
        return any(p.fullmatch(path) for p in self.patterns)


def _path_pattern(template: str) -> re.Pattern[str]:
    """The paths aiohttp routes to ``template`` (``{name}`` and ``{name:regex}`` parts), as
    aiohttp itself compiles them."""
    info = web.UrlDispatcher().add_resource(template).get_info()
    pattern = info.get("pattern")
    return pattern if isinstance(pattern, re.Pattern) else re.compile(re.escape(info["path"]))


def paths_without_staff_token(routes: Iterable[Route]) -> OpenPaths:
    """The templates under PROTECTED declared only by non-bearer routes. A template that also
    has a bearer route keeps the staff token check for every method."""
    routes = tuple(routes)
    staff = {r.path for r in routes if r.auth is Auth.BEARER}
    open_ = frozenset(
        r.path
        for r in routes
        if r.auth is not Auth.BEARER and r.path.startswith(PROTECTED) and r.path not in staff
    )
    return OpenPaths(open_, tuple(_path_pattern(t) for t in sorted(open_)))


_open_paths: weakref.WeakKeyDictionary[web.Application, tuple[tuple[Route, ...], OpenPaths]] = (
    weakref.WeakKeyDictionary()
)


def open_paths(app: web.Application) -> OpenPaths:
    """``paths_without_staff_token`` of the app's route table, computed again only when
    routes were added since."""
    routes = app.get(APP_ROUTES, ())
    cached = _open_paths.get(app)
    if cached is None or cached[0] is not routes:
        cached = (routes, paths_without_staff_token(routes))
        _open_paths[app] = cached
    return cached[1]


@web.middleware
async def authenticate(request: web.Request, handler: Handler) -> web.StreamResponse:
    if request.path.startswith(PROTECTED) and not open_paths(request.app).covers(request.path):
        header = request.headers.get("Authorization", "")
        scheme, _, token = header.partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            raise Unauthorized("a bearer token is required")
        who = services(request).signer.verify(token.strip())
        # every token's user must be registered, enabled and match the token
        registry = services(request).registry
        user = await blocking(registry.user, who.subject) if who.subject else None
        problem = token_problem(user, who.subject, who.hospital, who.role)
        if problem is not None:
            raise Unauthorized(problem)
        request[PRINCIPAL] = who
    return await handler(request)


def audit_resource(request: web.Request) -> str:
    """The path without secrets or patient data: share tokens cut to their link id, query
    values dropped (only the parameter names are kept)."""
    path = request.path
    if path.startswith("/film/"):
        token, _, rest = path[len("/film/") :].partition("/")
        path = "/film/" + token.split(".", 1)[0][:32] + ("/" + rest if rest else "")
    names = ",".join(sorted(set(request.query.keys())))[:200]
    return f"{path[:400]}?{names}" if names else path[:400]


@web.middleware
async def audit(request: web.Request, handler: Handler) -> web.StreamResponse:
    if not request.path.startswith(AUDITED):
        return await handler(request)
    status = 500
    try:
        response = await handler(request)
        status = response.status
        return response
    except web.HTTPException as exc:
        status = exc.status
        raise
    finally:
        who = request.get(PRINCIPAL)
        event = AuditEvent(
            ts=time.time(),
            actor=request.get(ACTOR) or (who.actor if who else "anonymous"),
            hospital=who.hospital if who else "",
            role=who.role if who else "",
            action=request.method,
            resource=audit_resource(request),
            status=status,
            remote=request.remote or "",
            via=request.get(VIA, ""),
        )
        try:
            await blocking(services(request).audit.append, event)
        except Exception:
            logger.exception("audit append failed for %s", event.resource)


CORS_PATHS = ("/dicom-web",)


def _cors_origin(request: web.Request) -> str | None:
    origin = request.headers.get("Origin")
    allowed = services(request).settings.cors_origins
    if origin and request.path.startswith(CORS_PATHS) and origin in allowed:
        return origin
    return None


@web.middleware
async def cors_preflight(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Answer a browser's CORS preflight (sent without credentials) for allowed origins."""
    if request.method == "OPTIONS" and request.path.startswith(CORS_PATHS):
        if _cors_origin(request) is None:
            return _error(403, "origin not allowed")
        return web.Response(
            status=204,
            headers={
                "Access-Control-Allow-Methods": "GET, POST, OPTIONS",
                "Access-Control-Allow-Headers": "Authorization, Accept, Content-Type",
                "Access-Control-Max-Age": "600",
            },
        )
    return await handler(request)


async def security_headers(request: web.Request, response: web.StreamResponse) -> None:
    origin = _cors_origin(request)
    if origin is not None:
        response.headers["Access-Control-Allow-Origin"] = origin
        response.headers["Vary"] = "Origin"
    response.headers.setdefault("X-Content-Type-Options", "nosniff")
    if request.secure:
        response.headers.setdefault("Strict-Transport-Security", "max-age=31536000")
    response.headers.setdefault("Referrer-Policy", "no-referrer")
    if request.path.startswith(AUDITED):
        response.headers.setdefault("Cache-Control", "no-store")

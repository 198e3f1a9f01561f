"""The admin API for the registry of hospitals and users (the region's administrators only).

GET  /api/admin/hospitals                 POST /api/admin/hospitals  {"id", "name"}
GET  /api/admin/users                     POST /api/admin/users      {"subject", "hospital", "role"}
POST /api/admin/users/{subject}/disable   POST /api/admin/users/{subject}/enable
"""

from __future__ import annotations

from typing import Any

from aiohttp import web

from image_store.state.ports import Registry
from viewer_api.auth import ROLES
from viewer_api.context import blocking, json_object, principal, services
from viewer_api.errors import BadRequest, Forbidden, NotFound
from viewer_api.registry import RegistryError, check_subject


def _registry(request: web.Request) -> Registry:
    if principal(request).role != "admin":
        raise Forbidden("the registry is managed by the region's administrators")
    return services(request).registry


async def _body(request: web.Request) -> dict[str, Any]:
    body = await json_object(request, 4096)
    if not all(isinstance(v, str) for v in body.values()):
        raise BadRequest("the request body must be a JSON object of strings")
    return body


async def list_hospitals(request: web.Request) -> web.Response:
    found = await blocking(_registry(request).hospitals)
    return web.json_response([{"id": h.id, "name": h.name} for h in found])


async def add_hospital(request: web.Request) -> web.Response:
    registry = _registry(request)
    body = await _body(request)
    try:
        h = await blocking(registry.add_hospital, body.get("id", ""), body.get("name", ""))
    except RegistryError as exc:
        raise BadRequest(str(exc)) from exc
    return web.json_response({"id": h.id, "name": h.name}, status=201)


async def list_users(request: web.Request) -> web.Response:
    found = await blocking(_registry(request).users)
    return web.json_response([u.as_json() for u in found])


async def add_user(request: web.Request) -> web.Response:
    registry = _registry(request)
    body = await _body(request)
    role = body.get("role", "")
    if role not in ROLES:
        raise BadRequest(f"role must be one of {', '.join(ROLES)}")
    try:
        user = await blocking(
            registry.add_user, body.get("subject", ""), body.get("hospital", ""), role
        )
    except RegistryError as exc:
        raise BadRequest(str(exc)) from exc
    return web.json_response(user.as_json(), status=201)


async def set_user_enabled(request: web.Request) -> web.Response:
    registry = _registry(request)
    try:
        subject = check_subject(request.match_info["subject"])
    except RegistryError as exc:
        raise BadRequest(str(exc)) from exc
    enabled = request.match_info["action"] == "enable"
    if not await blocking(registry.set_enabled, subject, enabled):
        raise NotFound(f"no user {subject}")
    return web.json_response({"subject": subject, "enabled": enabled})

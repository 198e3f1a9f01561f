"""The OpenAPI 3.1 description of the whole API, generated from the route table the app was
built from (viewer_api/routes.py), served at ``/openapi.json`` and fuzzed by the test suite
(schemathesis: no 500s)."""

from __future__ import annotations

import re
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

from aiohttp import web

from viewer_api.openapi_schemas import PATH_PARAMS

if TYPE_CHECKING:
    from viewer_api.route_table import Route

APP_ROUTES: web.AppKey[tuple[Route, ...]] = web.AppKey("routes")
"""The routes an app was built from (its description)."""

_PARAM = re.compile(r"\{(\w+)(?::([^}]+))?\}")
_ERROR = {
    "type": "object",
    "properties": {"error": {"type": "string"}, "status": {"type": "integer"}},
    "required": ["error", "status"],
}
_ERROR_TEXT = {
    400: "bad input",
    401: "no or bad token",
    403: "not allowed",
    404: "not found (or not yours to see)",
    406: "no acceptable representation",
    409: "nothing stored",
    413: "too large",
    429: "too many attempts",
}
_BY_AUTH = {"bearer": (400, 401, 403, 404), "link": (400, 403, 404), "gateway": (400, 401, 403)}


def _path(route_path: str) -> tuple[str, list[dict[str, Any]]]:
    """The OpenAPI form of an aiohttp path (``{action:a|b}`` → ``{action}`` with an enum), and
    its path parameters."""
    params = []
    for name, regex in _PARAM.findall(route_path):
        if regex and re.fullmatch(r"[\w-]+(\|[\w-]+)*", regex):
            schema: dict[str, Any] = {"enum": regex.split("|")}
        else:
            schema = PATH_PARAMS.get(name, {"type": "string", "maxLength": 64})
        params.append({"name": name, "in": "path", "required": True, "schema": schema})
    return _PARAM.sub(lambda m: "{" + m[1] + "}", route_path), params


def _errors(codes: Iterable[int]) -> dict[str, Any]:
    ref = {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}
    return {
        str(c): {"description": _ERROR_TEXT.get(c, "error"), "content": ref}
        for c in sorted(set(codes))
    }


def spec(routes: Iterable[Route], server_url: str = "/") -> dict[str, Any]:
    """The description of ``routes``; ``server_url`` is where clients reach the API."""
    paths: dict[str, dict[str, Any]] = {}
    for route in routes:
        path, params = _path(route.path)
        auth = route.auth.value
        operation: dict[str, Any] = {
            "summary": route.summary,
            "security": [{auth: []}] if auth in ("bearer", "gateway") else [],
            "parameters": [*params, *route.query],
            "responses": {**route.ok, **_errors((*_BY_AUTH.get(auth, ()), *route.errors))},
        }
        if route.roles is not None:
            operation["x-roles"] = sorted(route.roles)
        if route.body is not None:
            operation["requestBody"] = route.body
        paths.setdefault(path, {})[route.method.lower()] = operation
    return {
        "openapi": "3.1.0",
        "info": {"title": "CloudFilm regional API", "version": "1"},
        "servers": [{"url": server_url}],
        "components": {
            "securitySchemes": {
                "bearer": {"type": "http", "scheme": "bearer"},
                "gateway": {"type": "http", "scheme": "bearer", "description": "gateway token"},
            },
            "schemas": {"Error": _ERROR},
        },
        "paths": paths,
    }


async def openapi_json(request: web.Request) -> web.Response:
    from viewer_api.context import services

    url = services(request).settings.public_base_url or "/"
    routes: tuple[Route, ...] = request.app[APP_ROUTES]
    return web.json_response(spec(routes, url))


__all__ = ["APP_ROUTES", "openapi_json", "spec"]

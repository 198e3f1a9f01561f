"""One route table: the app serves exactly the routes its /openapi.json describes, and the
roles a route declares are enforced before its handler runs."""

from __future__ import annotations

import re

from tests.viewer_api.conftest import Api
from viewer_api.routes import ROUTES


def _described(spec: dict[str, object]) -> set[tuple[str, str]]:
    paths = spec["paths"]
    assert isinstance(paths, dict)
    return {(method.upper(), path) for path, ops in paths.items() for method in ops}


def _openapi_form(path: str) -> str:
    return re.sub(r"\{(\w+):[^}]+\}", r"{\1}", path)


async def test_every_route_the_app_serves_is_described_and_nothing_else(api: Api) -> None:
    r = await api.client.get("/openapi.json")
    assert r.status == 200
    described = _described(await r.json())
    served = {
        (route.method, _openapi_form(route.resource.canonical))
        for route in api.client.app.router.routes()
        if route.method != "HEAD" and route.resource is not None
    }
    assert served == described
    assert len(described) == len(ROUTES)
    for path in ("/film/{token}/api/consents", "/api/admin/users/{subject}/{action}"):
        assert ("POST", path) in described


async def test_declared_roles_are_enforced_before_the_handler(api: Api) -> None:
    auditor = api.token(role="auditor")
    for path in ("/dicom-web/studies", "/api/admin/users"):
        r = await api.client.get(path, headers=auditor)
        assert r.status == 403 and "role" in (await r.json())["error"], path
    r = await api.client.post("/api/admin/hospitals", headers=api.token(), json={})
    assert r.status == 403  # a clinician is not an admin, whatever the body
    r = await api.client.get("/api/audit/break-glass", headers=auditor)
    assert r.status == 200


async def test_the_description_names_the_roles_of_each_bearer_route(api: Api) -> None:
    spec = await (await api.client.get("/openapi.json")).json()
    stow = spec["paths"]["/dicom-web/studies"]["post"]
    assert stow["x-roles"] == ["admin", "radiologist"]
    assert spec["paths"]["/film/{token}"]["get"]["security"] == []

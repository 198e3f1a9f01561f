"""Where the authenticate middleware asks for a staff token: everywhere under its prefixes
except the routes the route table declares as a gateway's (or nobody's), derived from the
table itself; attacked with a gateway's valid token on staff routes and near-miss paths."""

from __future__ import annotations

import re
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient

from image_store.audit import SqlAuditLog
from image_store.consents import SqlConsents
from image_store.gateway_assertion import BATCH_PATH, TOKEN_PATH
from image_store.gateway_credentials import SqlGatewayCredentials
from image_store.index.sqlite import SqliteIndex
from image_store.ingest import LocalIngest
from image_store.objects.filesystem import FilesystemObjectStore
from image_store.persons import PersonKeyer
from image_store.state.db import SqliteStateDb
from pacs_gateway.credential import load_credential
from tests.gateway_credentials import GATEWAYS_FILE, REGISTRY_FILE, issue_gateway_credential
from viewer_api.app import ViewerSettings, create_app
from viewer_api.auth import TokenSigner
from viewer_api.gateway_auth import GatewayAuth
from viewer_api.ingest_api import add_ingest_routes
from viewer_api.middlewares import PROTECTED, paths_without_staff_token
from viewer_api.openapi import APP_ROUTES
from viewer_api.priors_api import add_priors_routes
from viewer_api.registry import SqlRegistry
from viewer_api.report_store import SqlReports
from viewer_api.route_table import Auth, Route
from viewer_api.share import SqlShareLinks

BASE = "http://cloud.test"
STAFF_TOKEN_MISSING = "a bearer token is required"
ASSERTION_TYPE = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"


async def _noop(request: web.Request) -> web.StreamResponse:
    return web.Response()


def _route(path: str, auth: Auth, method: str = "GET") -> Route:
    return Route(method, path, _noop, "a test route", auth=auth)


def _concrete(template: str) -> str:
    """A path the template routes: every ``{name}`` / ``{name:a|b}`` part filled in."""
    return re.sub(r"\{[^{}:]+(?::([^{}|]+)[^{}]*)?\}", lambda m: m.group(1) or "1.2.3", template)


def _stack_app(tmp_path: Path) -> web.Application:
    """The API with every route the stack serves (cloudfilm.stack adds ingest and priors)."""
    data = tmp_path / "region"
    data.mkdir()
    db = SqliteStateDb(data / "index.sqlite")
    registry = SqlRegistry(db)
    store = FilesystemObjectStore(data / "objects")
    index = SqliteIndex(data / "index.sqlite")
    signer = TokenSigner(b"k" * 32)
    audit = SqlAuditLog(db)
    shares, persons = SqlShareLinks(db), PersonKeyer(b"p" * 32)
    state = {"consents": SqlConsents(db), "reports": SqlReports(db), "registry": registry}
    settings = ViewerSettings(public_base_url=BASE)
    app = create_app(settings, store, index, shares, audit, signer, persons=persons, **state)
    gateway_auth = GatewayAuth(SqlGatewayCredentials(data / GATEWAYS_FILE), BASE + TOKEN_PATH)
    ingest = LocalIngest(store, index, trusted_links=True)
    add_ingest_routes(app, gateway_auth, ingest, staff_verifier=signer.verify)
    add_priors_routes(app, index, store, consents=SqlConsents(db), audit=audit)
    return app


@pytest.fixture
async def stack(
    tmp_path: Path, aiohttp_client: Callable[[web.Application], Any]
) -> TestClient[Any, Any]:
    app = _stack_app(tmp_path)
    return await aiohttp_client(app)


def test_every_gateway_route_under_the_staff_prefixes_is_open_and_no_staff_route_is(
    tmp_path: Path,
) -> None:
    app = _stack_app(tmp_path)
    routes = app[APP_ROUTES]
    open_paths = paths_without_staff_token(routes)
    gateway = [r for r in routes if r.auth is Auth.GATEWAY and r.path.startswith(PROTECTED)]
    assert BATCH_PATH in {r.path for r in gateway}
    for route in routes:
        path = _concrete(route.path)
        expected = route.auth is not Auth.BEARER and route.path.startswith(PROTECTED)
        assert open_paths.covers(path) is expected, (route.method, route.path)
    assert open_paths.templates == {BATCH_PATH, TOKEN_PATH}


def test_a_variable_template_opens_one_segment_and_not_the_paths_beside_or_below_it() -> None:
    open_paths = paths_without_staff_token(
        [_route("/api/uploads/{session}", Auth.GATEWAY), _route("/api/kind/{k:png|svg}", Auth.NONE)]
    )
    assert open_paths.covers("/api/uploads/abc")
    assert open_paths.covers("/api/kind/svg")
    for path in ("/api/uploads/a/b", "/api/uploads/", "/api/uploads", "/api/kind/gif"):
        assert not open_paths.covers(path), path


def test_a_template_that_also_has_a_staff_route_keeps_the_staff_check() -> None:
    open_paths = paths_without_staff_token(
        [_route("/api/mixed", Auth.GATEWAY, "POST"), _route("/api/mixed", Auth.BEARER)]
    )
    assert not open_paths.covers("/api/mixed")
    assert open_paths.templates == frozenset()


def test_gateway_and_link_routes_outside_the_staff_prefixes_are_not_listed() -> None:
    open_paths = paths_without_staff_token(
        [_route("/gateway/priors/studies", Auth.GATEWAY), _route("/film/{token}", Auth.LINK)]
    )
    assert open_paths.templates == frozenset()


async def test_every_staff_route_asks_for_a_staff_token_and_gateway_routes_do_not(
    stack: TestClient[Any, Any],
) -> None:
    for route in stack.app[APP_ROUTES]:
        if not route.path.startswith(PROTECTED):
            continue
        resp = await stack.request(route.method, _concrete(route.path))
        error = (await resp.json()).get("error") if resp.content_type.endswith("json") else None
        if route.auth is Auth.BEARER:
            assert (resp.status, error) == (401, STAFF_TOKEN_MISSING), (route.method, route.path)
        else:
            assert error != STAFF_TOKEN_MISSING, (route.method, route.path)


@pytest.mark.parametrize(
    "path",
    [
        BATCH_PATH + "/",
        BATCH_PATH + "x",
        BATCH_PATH + "/studies",
        TOKEN_PATH + "/../../dicom-web/studies",
    ],
)
async def test_paths_beside_the_gateway_routes_still_ask_for_a_staff_token(
    stack: TestClient[Any, Any], path: str
) -> None:
    resp = await stack.get(path)
    assert resp.status == 401
    assert (await resp.json())["error"] == STAFF_TOKEN_MISSING


async def test_a_gateways_valid_token_opens_no_staff_route(
    tmp_path: Path, aiohttp_client: Callable[[web.Application], Any]
) -> None:
    app = _stack_app(tmp_path)
    client = await aiohttp_client(app)
    data = tmp_path / "region"
    registry = SqlRegistry(data / REGISTRY_FILE)
    registry.add_hospital("H1", "First")
    registry.close()
    issue_gateway_credential(data, "H1", tmp_path / "h1.cred")
    assertion = load_credential(tmp_path / "h1.cred").assertion(BASE, now=time.time())
    form = {
        "grant_type": "client_credentials",
        "client_assertion_type": ASSERTION_TYPE,
        "client_assertion": assertion,
    }
    resp = await client.post(TOKEN_PATH, data=form)
    assert resp.status == 200, await resp.text()
    auth = {"Authorization": f"Bearer {(await resp.json())['access_token']}"}
    for path in ("/dicom-web/studies", "/api/shares", "/patients/P1/studies", "/api/admin/users"):
        resp = await client.get(path, headers=auth)
        assert resp.status == 401, path

"""The cloud's priors endpoints for gateways, attacked: other parties' tokens, revoked
credentials, probing UIDs, oversized and malformed bodies; every read audited."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient

from image_store.audit import SqlAuditLog
from image_store.consents import SqlConsents
from image_store.gateway_assertion import TOKEN_PATH
from image_store.gateway_credentials import SqlGatewayCredentials
from image_store.index.sqlite import SqliteIndex
from image_store.ingest import LocalIngest
from image_store.objects.filesystem import FilesystemObjectStore
from image_store.records import InstanceQuery, InstanceSummary
from pacs_gateway.credential import load_credential
from tests.gateway_credentials import (
    GATEWAYS_FILE,
    REGISTRY_FILE,
    issue_gateway_credential,
    revoke_gateway_credential,
)
from tests.viewer_api.conftest import BASE, Api
from viewer_api import middlewares
from viewer_api.auth import TokenSigner
from viewer_api.gateway_auth import GatewayAuth
from viewer_api.ingest_api import add_ingest_routes
from viewer_api.priors_api import INSTANCES_PATH, STUDIES_PATH, add_priors_routes
from viewer_api.registry import SqlRegistry

ASSERTION_TYPE = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"
Loaded = tuple[FilesystemObjectStore, SqliteIndex, dict[str, bytes]]


@dataclass
class Cloud:
    client: TestClient[Any, Any]
    data: Path
    index: SqliteIndex
    audit: SqlAuditLog
    signer: TokenSigner

    async def token(self, hospital: str) -> tuple[str, str]:
        """A live gateway token of a new credential for ``hospital``, and the credential id."""
        out = self.data / f"{hospital}-{time.monotonic_ns()}.cred"
        cred_id = issue_gateway_credential(self.data, hospital, out)
        assertion = load_credential(out).assertion(BASE, now=time.time())
        resp = await self.client.post(
            TOKEN_PATH,
            data={
                "grant_type": "client_credentials",
                "client_assertion_type": ASSERTION_TYPE,
                "client_assertion": assertion,
            },
        )
        assert resp.status == 200, await resp.text()
        return str((await resp.json())["access_token"]), cred_id

    def instance(self, hospital: str) -> InstanceSummary:
        q = InstanceQuery(hospitals=frozenset({hospital}))
        return self.index.find_instances(q, limit=1)[0]


def _nested(depth: int) -> object:
    value: object = "x"
    for _ in range(depth):
        value = [value]
    return value


def instance_path(i: InstanceSummary) -> str:
    return f"{STUDIES_PATH}/{i.study_uid}/series/{i.series_uid}/instances/{i.sop_uid}"


@pytest.fixture
async def cloud(
    loaded: Loaded, tmp_path: Path, aiohttp_client: Callable[[web.Application], Any]
) -> Cloud:
    store, index, _ = loaded
    data = tmp_path / "region"
    data.mkdir()
    registry = SqlRegistry(data / REGISTRY_FILE)
    registry.add_hospital("H1", "First")
    registry.add_hospital("H2", "Second")
    registry.close()
    signer = TokenSigner(b"k" * 32)
    audit = SqlAuditLog(tmp_path / "priors-audit.sqlite")
    app = web.Application(middlewares=[middlewares.errors])
    add_ingest_routes(
        app,
        GatewayAuth(SqlGatewayCredentials(data / GATEWAYS_FILE), BASE + TOKEN_PATH),
        LocalIngest(store, index, trusted_links=True),
        staff_verifier=signer.verify,
    )
    consents = SqlConsents(tmp_path / "priors-consents.sqlite")
    add_priors_routes(app, index, store, consents=consents, audit=audit)
    return Cloud(await aiohttp_client(app), data, index, audit, signer)


async def test_a_gateway_reads_its_own_hospitals_instance_and_the_read_is_audited(
    cloud: Cloud, loaded: Loaded
) -> None:
    token, cred_id = await cloud.token("H1")
    own = cloud.instance("H1")
    resp = await cloud.client.get(instance_path(own), headers={"Authorization": f"Bearer {token}"})
    assert resp.status == 200 and resp.content_type == "application/dicom"
    assert await resp.read() == loaded[0].get(own.object_key)
    assert resp.headers["X-SHA256"] == own.sha256
    events = [e for e in cloud.audit.iter_events() if own.sop_uid in e.resource]
    assert [(e.actor, e.hospital, e.role, e.status) for e in events] == [
        (f"gateway:H1:{cred_id}", "H1", "gateway", 200)
    ]


async def test_another_hospitals_study_answers_like_a_missing_one(cloud: Cloud) -> None:
    token, _ = await cloud.token("H1")
    auth = {"Authorization": f"Bearer {token}"}
    theirs = cloud.instance("H2")
    missing = instance_path(theirs).replace(theirs.sop_uid, "1.2.3.4.5")
    got = [await cloud.client.get(p, headers=auth) for p in (instance_path(theirs), missing)]
    assert [r.status for r in got] == [404, 404]
    assert (await got[0].json())["error"].replace(theirs.sop_uid, "X") == (await got[1].json())[
        "error"
    ].replace("1.2.3.4.5", "X")
    search = await cloud.client.post(
        INSTANCES_PATH, json={"study_uid": theirs.study_uid}, headers=auth
    )
    assert search.status == 200 and (await search.json())["instances"] == []
    denied = [e for e in cloud.audit.iter_events() if theirs.sop_uid in e.resource]
    assert [e.status for e in denied] == [404]  # the probe is on the record


@pytest.mark.parametrize("who", ["nobody", "garbage", "staff", "revoked"])
async def test_only_a_live_gateway_credential_reads_priors(cloud: Cloud, who: str) -> None:
    own = cloud.instance("H1")
    token, cred_id = await cloud.token("H1")
    if who == "revoked":
        assert revoke_gateway_credential(cloud.data, cred_id)
    headers = {
        "nobody": {},
        "garbage": {"Authorization": "Bearer cfgw_" + "A" * 43},
        "staff": {"Authorization": f"Bearer {cloud.signer.issue('H1', 'admin', subject='a')}"},
        "revoked": {"Authorization": f"Bearer {token}"},
    }[who]
    status = {"nobody": 401, "garbage": 401, "staff": 403, "revoked": 403}[who]
    read = await cloud.client.get(instance_path(own), headers=headers)
    search = await cloud.client.post(STUDIES_PATH, json={"patient_id": "x"}, headers=headers)
    assert (read.status, search.status) == (status, status)
    assert "error" in await read.json()


@pytest.mark.parametrize(
    ("body", "status"),
    [
        ({"patient_id": "x" * 300}, 400),
        ({"study_uids": ["1.2.x"]}, 400),
        ({"study_uids": ["1.2"] * 1001}, 400),
        ({"limit": 0}, 400),
        ({"limit": True}, 400),
        ({"modalities": "CT"}, 400),
        ({"patient_id": _nested(40)}, 400),
        ({"patient_id": "x", "pad": "y" * 70_000}, 413),
    ],
)
async def test_malformed_or_oversized_searches_are_refused_before_any_lookup(
    cloud: Cloud, body: dict[str, Any], status: int
) -> None:
    token, _ = await cloud.token("H1")
    resp = await cloud.client.post(
        STUDIES_PATH, json=body, headers={"Authorization": f"Bearer {token}"}
    )
    assert resp.status == status and "error" in await resp.json()


async def test_an_invalid_uid_in_the_path_is_refused(cloud: Cloud) -> None:
    token, _ = await cloud.token("H1")
    path = f"{STUDIES_PATH}/1.2/series/1.3/instances/..%2F..%2Fx"
    resp = await cloud.client.get(path, headers={"Authorization": f"Bearer {token}"})
    assert resp.status == 400


async def test_a_gateway_token_reads_nothing_through_the_staff_api(api: Api, cloud: Cloud) -> None:
    """A gateway's live token is no staff token: DICOMweb and one-click refuse it."""
    token, _ = await cloud.token("H1")
    own = cloud.instance("H1")
    auth = {"Authorization": f"Bearer {token}"}
    for path in (
        "/dicom-web/studies?PatientID=*",
        f"/dicom-web/studies/{own.study_uid}",
        f"/dicom-web/studies/{own.study_uid}/series/{own.series_uid}/instances/{own.sop_uid}",
        "/patients/x/studies",
    ):
        resp = await api.client.get(path, headers=auth)
        assert resp.status == 401, path
    assert api.index.calls == [] and api.store.calls == []  # nothing looked up

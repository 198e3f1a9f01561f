"""The gateway ingest endpoint and its token exchange, through aiohttp's test client."""

from __future__ import annotations

import base64
import hashlib
import io
import os
import stat
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pydicom
import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient

from cloudfilm.synth import synthesize_study
from image_store.gateway_assertion import (
    TOKEN_PATH,
    CredentialFileError,
    new_key_pair,
    sign_assertion,
)
from image_store.gateway_credentials import SqlGatewayCredentials
from image_store.index.sqlite import SqliteIndex
from image_store.ingest import LocalIngest
from image_store.objects.filesystem import FilesystemObjectStore
from image_store.records import InstanceQuery
from pacs_gateway.credential import GatewayCredential, load_credential
from tests.gateway_credentials import (
    GATEWAYS_FILE,
    REGISTRY_FILE,
    issue_gateway_credential,
    revoke_gateway_credential,
)
from viewer_api import middlewares
from viewer_api.auth import TokenSigner
from viewer_api.gateway_auth import GatewayAuth
from viewer_api.ingest_api import IngestCounters, IngestSettings, add_ingest_routes
from viewer_api.registry import RegistryError, SqlRegistry

BASE = "http://cloud.test"
AUDIENCE = BASE + TOKEN_PATH
ASSERTION_TYPE = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"


@dataclass
class Cloud:
    client: TestClient[Any, Any]
    data: Path
    index: SqliteIndex
    store: FilesystemObjectStore
    cred: GatewayCredential
    counters: IngestCounters
    signer: TokenSigner
    clock: list[float]

    async def token_response(self, assertion: str | None = None) -> Any:
        if assertion is None:
            assertion = self.cred.assertion(BASE, now=self.clock[0])
        return await self.client.post(
            TOKEN_PATH,
            data={
                "grant_type": "client_credentials",
                "client_assertion_type": ASSERTION_TYPE,
                "client_assertion": assertion,
            },
        )

    async def token(self) -> str:
        resp = await self.token_response()
        assert resp.status == 200, await resp.text()
        return str((await resp.json())["access_token"])

    async def send(self, body: bytes, boundary: str, token: str | None = None) -> Any:
        token = token or await self.token()
        return await self.client.post(
            "/api/ingest/batch",
            data=io.BytesIO(body),
            headers={
                "Authorization": f"Bearer {token}",
                "Content-Type": f'multipart/related; type="application/dicom"; boundary={boundary}',
            },
        )

    def stored(self, hospital: str | None = None) -> list[str]:
        q = InstanceQuery(hospitals=None if hospital is None else frozenset({hospital}))
        return sorted(s.sop_uid for s in self.index.find_instances(q, limit=10_000))


def digest_header(data: bytes) -> str:
    return f"sha-256=:{base64.b64encode(hashlib.sha256(data).digest()).decode()}:"


def batch(
    parts: list[bytes],
    boundary: str = "b0undary",
    *,
    headers: list[dict[str, str]] | None = None,
    close: bool = True,
) -> bytes:
    out = io.BytesIO()
    for i, data in enumerate(parts):
        h = {"Content-Type": "application/dicom", "Content-Digest": digest_header(data)}
        h.update((headers or [{}] * len(parts))[i])
        out.write(f"--{boundary}\r\n".encode())
        for k, v in h.items():
            if v:
                out.write(f"{k}: {v}\r\n".encode())
        out.write(b"\r\n" + data + b"\r\n")
    if close:
        out.write(f"--{boundary}--\r\n".encode())
    return out.getvalue()


@pytest.fixture(scope="module")
def ct(tmp_path_factory: pytest.TempPathFactory) -> list[bytes]:
    """A small CT study (a localizer and axial slices) naming another institution than the
    credential's hospital."""
    out = tmp_path_factory.mktemp("ct")
    files = []
    for p in synthesize_study(out, modality="CT", images=4, seed=21):
        ds = pydicom.dcmread(p)
        ds.InstitutionName = "H2 Other Hospital"
        buf = io.BytesIO()
        ds.save_as(buf, enforce_file_format=True)
        files.append(buf.getvalue())
    return files


async def make_cloud(
    tmp_path: Path,
    aiohttp_client: Callable[[web.Application], Any],
    settings: IngestSettings | None = None,
) -> Cloud:
    data = tmp_path / "cloud"
    data.mkdir()
    registry = SqlRegistry(data / REGISTRY_FILE)
    registry.add_hospital("H1", "First")
    registry.add_hospital("H2", "Second")
    registry.close()
    issue_gateway_credential(data, "H1", tmp_path / "h1.cred", cloud_url=BASE)
    store = FilesystemObjectStore(data / "objects")
    index = SqliteIndex(data / "index.sqlite")
    clock = [1_800_000_000.0]
    auth = GatewayAuth(
        SqlGatewayCredentials(data / GATEWAYS_FILE), AUDIENCE, clock=lambda: clock[0]
    )
    signer = TokenSigner(b"k" * 32)
    app = web.Application(middlewares=[middlewares.errors])
    counters = add_ingest_routes(
        app,
        auth,
        LocalIngest(store, index, trusted_links=True),
        settings=settings or IngestSettings(tmp_dir=tmp_path / "tmp"),
        staff_verifier=signer.verify,
    )
    client = await aiohttp_client(app)
    cred = load_credential(tmp_path / "h1.cred")
    return Cloud(client, data, index, store, cred, counters, signer, clock)


@pytest.fixture
async def cloud(tmp_path: Path, aiohttp_client: Callable[[web.Application], Any]) -> Cloud:
    return await make_cloud(tmp_path, aiohttp_client)


def sop(data: bytes) -> str:
    return str(pydicom.dcmread(io.BytesIO(data), stop_before_pixels=True).SOPInstanceUID)


async def test_a_batch_is_stored_under_the_credentials_hospital_not_the_instances(
    cloud: Cloud, ct: list[bytes]
) -> None:
    resp = await cloud.send(batch(ct), "b0undary")
    assert resp.status == 200, await resp.text()
    body = await resp.json()
    assert body["hospital"] == "H1"
    assert [i["outcome"] for i in body["instances"]] == ["stored"] * len(ct)
    assert [i["sop_uid"] for i in body["instances"]] == [sop(d) for d in ct]
    assert cloud.stored("H1") == sorted(sop(d) for d in ct)
    assert cloud.stored("H2") == []
    counts = cloud.counters.snapshot()["H1"]
    assert (counts.stored, counts.stored_bytes) == (len(ct), sum(map(len, ct)))
    assert f'cloudfilm_ingest_stored_total{{hospital="H1"}} {len(ct)}' in cloud.counters.render()


async def test_a_replayed_batch_stores_nothing_twice(cloud: Cloud, ct: list[bytes]) -> None:
    first = await cloud.send(batch(ct[:2]), "b0undary")
    assert first.status == 200
    keys = sorted(cloud.store.iter_keys("H1/"))
    again = await cloud.send(batch(ct[:2]), "b0undary")
    assert [i["outcome"] for i in (await again.json())["instances"]] == ["duplicate"] * 2
    assert sorted(cloud.store.iter_keys("H1/")) == keys
    assert cloud.counters.snapshot()["H1"].duplicate == 2


async def test_a_batch_without_a_token_is_401(cloud: Cloud, ct: list[bytes]) -> None:
    resp = await cloud.client.post("/api/ingest/batch", data=batch(ct[:1]))
    assert resp.status == 401
    assert cloud.stored() == []


async def test_an_expired_token_is_401(cloud: Cloud, ct: list[bytes]) -> None:
    token = await cloud.token()
    cloud.clock[0] += 601
    resp = await cloud.send(batch(ct[:1]), "b0undary", token)
    assert resp.status == 401
    assert cloud.stored() == []


async def test_a_made_up_gateway_token_is_401(cloud: Cloud, ct: list[bytes]) -> None:
    resp = await cloud.send(batch(ct[:1]), "b0undary", "cfgw_" + "A" * 43)
    assert resp.status == 401


async def test_an_assertion_signed_with_another_key_gets_no_token(cloud: Cloud) -> None:
    forged_key, _ = new_key_pair()
    assertion = sign_assertion(forged_key, cloud.cred.credential_id, AUDIENCE, now=cloud.clock[0])
    resp = await cloud.token_response(assertion)
    assert resp.status == 401
    assert "signature" in (await resp.json())["error"]


async def test_an_expired_assertion_gets_no_token(cloud: Cloud) -> None:
    assertion = cloud.cred.assertion(BASE, now=cloud.clock[0] - 600)
    resp = await cloud.token_response(assertion)
    assert resp.status == 401
    assert "expired" in (await resp.json())["error"]


async def test_an_assertion_for_another_cloud_gets_no_token(cloud: Cloud) -> None:
    assertion = cloud.cred.assertion("https://elsewhere.example", now=cloud.clock[0])
    assert (await cloud.token_response(assertion)).status == 401


async def test_a_replayed_assertion_gets_no_second_token(cloud: Cloud) -> None:
    assertion = cloud.cred.assertion(BASE, now=cloud.clock[0])
    assert (await cloud.token_response(assertion)).status == 200
    again = await cloud.token_response(assertion)
    assert again.status == 401
    assert "used before" in (await again.json())["error"]


async def test_a_revoked_credential_is_refused_at_once_with_a_live_token(
    cloud: Cloud, ct: list[bytes]
) -> None:
    token = await cloud.token()
    assert revoke_gateway_credential(cloud.data, cloud.cred.credential_id)  # as another process
    resp = await cloud.send(batch(ct[:1]), "b0undary", token)
    assert resp.status == 403
    assert "revoked" in (await resp.json())["error"]
    assert cloud.stored() == []
    assert (await cloud.token_response()).status == 403


async def test_a_staff_token_cannot_deliver(cloud: Cloud, ct: list[bytes]) -> None:
    staff = cloud.signer.issue("H1", "admin", subject="root")
    resp = await cloud.send(batch(ct[:1]), "b0undary", staff)
    assert resp.status == 403
    assert cloud.stored() == []


async def test_a_part_whose_bytes_do_not_match_its_digest_is_refused_alone(
    cloud: Cloud, ct: list[bytes]
) -> None:
    wrong = {"Content-Digest": digest_header(b"something else")}
    resp = await cloud.send(batch(ct[:2], headers=[wrong, {}]), "b0undary")
    listed = (await resp.json())["instances"]
    assert [i["outcome"] for i in listed] == ["refused", "stored"]
    assert "sha-256 mismatch" in listed[0]["reason"] and listed[0]["retry"] is True
    assert cloud.stored() == [sop(ct[1])]


async def test_a_part_without_a_digest_is_refused(cloud: Cloud, ct: list[bytes]) -> None:
    resp = await cloud.send(batch(ct[:1], headers=[{"Content-Digest": ""}]), "b0undary")
    assert (await resp.json())["instances"][0]["outcome"] == "refused"
    assert cloud.stored() == []


async def test_an_x_sha256_header_is_accepted(cloud: Cloud, ct: list[bytes]) -> None:
    headers = [{"Content-Digest": "", "X-SHA256": hashlib.sha256(ct[0]).hexdigest()}]
    resp = await cloud.send(batch(ct[:1], headers=headers), "b0undary")
    assert (await resp.json())["instances"][0]["outcome"] == "stored"


async def test_a_non_dicom_part_is_refused_with_its_reason(cloud: Cloud, ct: list[bytes]) -> None:
    resp = await cloud.send(batch([b"not dicom at all" * 100, ct[0]]), "b0undary")
    listed = (await resp.json())["instances"]
    assert [i["outcome"] for i in listed] == ["refused", "stored"]
    assert "not a complete DICOM instance" in listed[0]["reason"]
    assert listed[0]["retry"] is False


async def test_a_truncated_instance_is_refused(cloud: Cloud, ct: list[bytes]) -> None:
    cut = ct[0][: len(ct[0]) // 2]
    resp = await cloud.send(batch([cut]), "b0undary")
    assert (await resp.json())["instances"][0]["outcome"] == "refused"
    assert cloud.stored() == []


async def test_an_oversized_part_is_413_and_refused_alone(
    tmp_path: Path, aiohttp_client: Callable[[web.Application], Any], ct: list[bytes]
) -> None:
    small = max(map(len, ct)) - 1
    cloud = await make_cloud(
        tmp_path, aiohttp_client, IngestSettings(max_part_bytes=small, tmp_dir=tmp_path / "t")
    )
    big = max(ct, key=len)
    fits = next(d for d in ct if len(d) <= small)
    resp = await cloud.send(batch([big, fits]), "b0undary")
    listed = (await resp.json())["instances"]
    assert listed[0]["outcome"] == "refused" and listed[0]["status"] == 413
    assert listed[1]["outcome"] == "stored"
    assert cloud.stored() == [sop(fits)]


async def test_a_batch_over_the_request_cap_is_413_and_stores_nothing(
    tmp_path: Path, aiohttp_client: Callable[[web.Application], Any], ct: list[bytes]
) -> None:
    body = batch(ct)
    cloud = await make_cloud(
        tmp_path,
        aiohttp_client,
        IngestSettings(max_request_bytes=len(body) - 1, tmp_dir=tmp_path / "t"),
    )
    resp = await cloud.send(body, "b0undary")
    assert resp.status == 413
    assert cloud.stored() == []


@pytest.mark.parametrize("cut_at", ["mid-part", "no-closing-boundary"])
async def test_a_truncated_batch_is_400_and_only_whole_parts_are_committed(
    cloud: Cloud, ct: list[bytes], cut_at: str
) -> None:
    body = batch(ct[:3])
    if cut_at == "mid-part":
        body = body[: body.index(ct[2]) + len(ct[2]) // 2]
    else:
        body = body[: body.rindex(b"--b0undary--")]
    resp = await cloud.send(body, "b0undary")
    assert resp.status == 400, await resp.text()
    listed = (await resp.json())["instances"]
    whole = [i for i in listed if i["outcome"] == "stored"]
    assert cloud.stored() == sorted(i["sop_uid"] for i in whole)
    if cut_at == "mid-part":
        assert sop(ct[2]) not in cloud.stored()
        assert cloud.stored() == sorted(sop(d) for d in ct[:2])


def test_a_credential_is_issued_only_for_a_registered_hospital(tmp_path: Path) -> None:
    SqlRegistry(tmp_path / REGISTRY_FILE).add_hospital("H1", "First")
    with pytest.raises(RegistryError, match="unknown hospital"):
        issue_gateway_credential(tmp_path, "H9", tmp_path / "h9.cred")
    assert not (tmp_path / "h9.cred").exists()
    cred_id = issue_gateway_credential(tmp_path, "H1", tmp_path / "h1.cred")
    assert stat.S_IMODE((tmp_path / "h1.cred").stat().st_mode) == 0o600
    assert load_credential(tmp_path / "h1.cred").credential_id == cred_id
    with pytest.raises(FileExistsError):
        issue_gateway_credential(tmp_path, "H1", tmp_path / "h1.cred")


def test_a_credential_file_others_may_read_is_refused(tmp_path: Path) -> None:
    SqlRegistry(tmp_path / REGISTRY_FILE).add_hospital("H1", "First")
    issue_gateway_credential(tmp_path, "H1", tmp_path / "h1.cred")
    os.chmod(tmp_path / "h1.cred", 0o644)
    with pytest.raises(CredentialFileError, match="chmod 600"):
        load_credential(tmp_path / "h1.cred")

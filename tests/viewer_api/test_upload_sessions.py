"""Resumable upload sessions for large instances, through aiohttp's test client over a real
SQLite index and state and a filesystem store (the sessions' state is in the database, their
bytes in the store: a second cloud process on the same two resumes them)."""

from __future__ import annotations

import asyncio
import hashlib
import os
import sqlite3
import subprocess
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pydicom
import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient

from cloudfilm.synth import synthesize_study
from image_store.audit import SqlAuditLog
from image_store.gateway_assertion import TOKEN_PATH
from image_store.gateway_credentials import SqlGatewayCredentials
from image_store.index.sqlite import SqliteIndex
from image_store.ingest import LocalIngest
from image_store.objects.filesystem import FilesystemObjectStore
from image_store.records import InstanceQuery
from image_store.state.db import SqliteStateDb
from image_store.state.uploads import SqlUploadSessions
from pacs_gateway.credential import load_credential
from tests.gateway_credentials import GATEWAYS_FILE, REGISTRY_FILE, issue_gateway_credential
from viewer_api import middlewares
from viewer_api.auth import TokenSigner
from viewer_api.gateway_auth import GatewayAuth
from viewer_api.ingest_api import IngestCounters, IngestSettings, add_ingest_routes
from viewer_api.registry import SqlRegistry
from viewer_api.upload_sessions import UPLOADS_PATH, UploadSettings, add_upload_routes

BASE = "http://cloud.test"
ASSERTION_TYPE = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"
CHUNK = 1 << 20


@pytest.fixture(scope="module")
def cine(tmp_path_factory: pytest.TempPathFactory) -> bytes:
    """A 5-frame ultrasound cine (about 4.6 MB)."""
    out = tmp_path_factory.mktemp("us")
    (path,) = synthesize_study(out, modality="US", images=1, frames=5, seed=31)
    return path.read_bytes()


def sop(data: bytes) -> str:
    import io

    return str(pydicom.dcmread(io.BytesIO(data), stop_before_pixels=True).SOPInstanceUID)


@dataclass
class Cloud:
    client: TestClient[Any, Any]
    data: Path
    index: SqliteIndex
    store: FilesystemObjectStore
    counters: IngestCounters
    signer: TokenSigner
    clock: list[float]
    tmp: Path
    audit: SqlAuditLog

    async def token(self, hospital: str = "H1") -> str:
        cred = load_credential(self.tmp / f"{hospital}.cred")
        resp = await self.client.post(
            TOKEN_PATH,
            data={
                "grant_type": "client_credentials",
                "client_assertion_type": ASSERTION_TYPE,
                "client_assertion": cred.assertion(BASE, now=self.clock[0]),
            },
        )
        assert resp.status == 200, await resp.text()
        return str((await resp.json())["access_token"])

    async def open(self, data: bytes, token: str, *, size: int | None = None) -> Any:
        return await self.client.post(
            UPLOADS_PATH,
            json={
                "size": len(data) if size is None else size,
                "sha256": hashlib.sha256(data).hexdigest(),
                "sop_uid": sop(data),
            },
            headers={"Authorization": f"Bearer {token}"},
        )

    async def session(self, data: bytes, token: str) -> str:
        resp = await self.open(data, token)
        assert resp.status == 201, await resp.text()
        return str((await resp.json())["session"])

    async def patch(self, session: str, offset: int, chunk: bytes, token: str) -> Any:
        return await self.client.patch(
            f"{UPLOADS_PATH}/{session}",
            data=chunk,
            headers={"Authorization": f"Bearer {token}", "Upload-Offset": str(offset)},
        )

    async def offset(self, session: str, token: str) -> int:
        resp = await self.client.head(
            f"{UPLOADS_PATH}/{session}", headers={"Authorization": f"Bearer {token}"}
        )
        assert resp.status == 200, resp.status
        return int(resp.headers["Upload-Offset"])

    async def send_from(self, session: str, data: bytes, offset: int, token: str) -> None:
        while offset < len(data):
            resp = await self.patch(session, offset, data[offset : offset + CHUNK], token)
            assert resp.status == 204, await resp.text()
            offset = int(resp.headers["Upload-Offset"])

    async def finalize(self, session: str, token: str) -> Any:
        return await self.client.post(
            f"{UPLOADS_PATH}/{session}/finalize", headers={"Authorization": f"Bearer {token}"}
        )

    def stored(self) -> list[tuple[str, str]]:
        q = InstanceQuery()
        return sorted((s.sop_uid, s.object_key) for s in self.index.find_instances(q, limit=100))

    def staged(self) -> list[str]:
        """Chunks in the store and scratch files of the process."""
        root = self.data / "uploads"
        scratch = sorted(p.name for p in root.rglob("*") if p.is_file()) if root.exists() else []
        return sorted(self.store.iter_keys("uploads.staging/")) + scratch


def _prepare(tmp_path: Path) -> Path:
    data = tmp_path / "cloud"
    data.mkdir()
    registry = SqlRegistry(data / REGISTRY_FILE)
    registry.add_hospital("H1", "First")
    registry.add_hospital("H2", "Second")
    registry.close()
    issue_gateway_credential(data, "H1", tmp_path / "H1.cred", cloud_url=BASE)
    issue_gateway_credential(data, "H2", tmp_path / "H2.cred", cloud_url=BASE)
    return data


async def make_cloud(
    tmp_path: Path,
    aiohttp_client: Callable[[web.Application], Any],
    *,
    max_bytes: int = 64 * 1024**2,
    max_open: int = 8,
    clock: list[float] | None = None,
) -> Cloud:
    data = tmp_path / "cloud"
    if not data.exists():
        _prepare(tmp_path)
    store = FilesystemObjectStore(data / "objects")
    index = SqliteIndex(data / "index.sqlite")
    clock = clock or [1_800_000_000.0]
    auth = GatewayAuth(
        SqlGatewayCredentials(data / GATEWAYS_FILE), BASE + TOKEN_PATH, clock=lambda: clock[0]
    )
    signer = TokenSigner(b"k" * 32)
    audit = SqlAuditLog(SqliteStateDb(data / "index.sqlite"))
    app = web.Application(middlewares=[middlewares.errors])
    counters = add_ingest_routes(
        app,
        auth,
        LocalIngest(store, index, trusted_links=True),
        settings=IngestSettings(tmp_dir=tmp_path / "tmp"),
        staff_verifier=signer.verify,
    )
    add_upload_routes(
        app,
        UploadSettings(
            data / "uploads", max_bytes=max_bytes, max_open=max_open, clock=lambda: clock[0]
        ),
        audit,
        SqlUploadSessions(SqliteStateDb(data / "index.sqlite")),
        store,
    )
    client = await aiohttp_client(app)
    return Cloud(client, data, index, store, counters, signer, clock, tmp_path, audit)


@pytest.fixture
async def cloud(tmp_path: Path, aiohttp_client: Callable[[web.Application], Any]) -> Cloud:
    return await make_cloud(tmp_path, aiohttp_client)


async def test_an_instance_sent_in_chunks_is_stored_once_and_its_staged_bytes_removed(
    cloud: Cloud, cine: bytes
) -> None:
    token = await cloud.token()
    opened = await cloud.open(cine, token)
    assert opened.status == 201
    body = await opened.json()
    assert (body["offset"], body["size"]) == (0, len(cine))
    session = body["session"]
    await cloud.send_from(session, cine, 0, token)
    assert await cloud.offset(session, token) == len(cine)
    resp = await cloud.finalize(session, token)
    assert resp.status == 200, await resp.text()
    done = await resp.json()
    assert done["hospital"] == "H1"
    assert done["instance"]["outcome"] == "stored"
    assert done["instance"]["sop_uid"] == sop(cine)
    ((uid, key),) = cloud.stored()
    assert uid == sop(cine) and key.startswith("H1/")
    assert cloud.store.get(key) == cine
    assert cloud.staged() == []
    audited = [(e.action, e.resource, e.status, e.role) for e in cloud.audit.iter_events()]
    assert audited == [
        ("POST", UPLOADS_PATH, 201, "gateway"),
        ("POST", f"{UPLOADS_PATH}/{session}/finalize", 200, "gateway"),
    ]
    assert all(e.actor.startswith("gateway:H1:") for e in cloud.audit.iter_events())
    counts = cloud.counters.snapshot()["H1"]
    assert (counts.stored, counts.stored_bytes, counts.received_bytes) == (
        1,
        len(cine),
        len(cine),
    )


async def test_a_chunk_cut_short_keeps_what_arrived_and_the_upload_resumes_there(
    cloud: Cloud, cine: bytes
) -> None:
    token = await cloud.token()
    session = await cloud.session(cine, token)
    sent = 3 * CHUNK + 12345
    # a raw request announcing the whole instance, the connection closed after ``sent`` bytes
    host, port = cloud.client.server.host, cloud.client.server.port
    reader, writer = await asyncio.open_connection(host, port)
    writer.write(
        (
            f"PATCH {UPLOADS_PATH}/{session} HTTP/1.1\r\nHost: {host}\r\n"
            f"Authorization: Bearer {token}\r\nUpload-Offset: 0\r\n"
            f"Content-Length: {len(cine)}\r\n\r\n"
        ).encode()
        + cine[:sent]
    )
    await writer.drain()
    writer.close()
    resumed_at = 0
    for _ in range(500):  # what the server wrote is acknowledged once it sees the close
        at = await cloud.offset(session, token)
        if at:
            resp = await cloud.patch(session, at, cine[at : at + CHUNK], token)
            if resp.status == 204:  # else 409: the cut request still holds the session
                resumed_at = at
                break
        await asyncio.sleep(0.02)
    assert 0 < resumed_at <= sent
    again = await cloud.patch(session, 0, cine[:CHUNK], token)
    assert again.status == 409
    await cloud.send_from(session, cine, resumed_at + CHUNK, token)
    resp = await cloud.finalize(session, token)
    assert (await resp.json())["instance"]["outcome"] == "stored"
    ((_uid, key),) = cloud.stored()
    assert cloud.store.get(key) == cine
    del reader


async def test_a_chunk_at_another_offset_than_the_clouds_is_409_with_the_current_offset(
    cloud: Cloud, cine: bytes
) -> None:
    token = await cloud.token()
    session = await cloud.session(cine, token)
    assert (await cloud.patch(session, 0, cine[:CHUNK], token)).status == 204
    for wrong in (0, CHUNK + 1, 2 * CHUNK):
        resp = await cloud.patch(session, wrong, cine[wrong : wrong + CHUNK], token)
        assert resp.status == 409
        assert (await resp.json())["offset"] == CHUNK
        assert resp.headers["Upload-Offset"] == str(CHUNK)
    assert await cloud.offset(session, token) == CHUNK
    early = await cloud.finalize(session, token)
    assert early.status == 409 and (await early.json())["offset"] == CHUNK
    assert cloud.stored() == []


async def test_a_declared_size_over_the_limit_is_413_and_opens_nothing(
    tmp_path: Path, aiohttp_client: Callable[[web.Application], Any], cine: bytes
) -> None:
    cloud = await make_cloud(tmp_path, aiohttp_client, max_bytes=len(cine) - 1)
    token = await cloud.token()
    resp = await cloud.open(cine, token)
    assert resp.status == 413
    assert "at most" in (await resp.json())["error"]
    assert cloud.staged() == []


async def test_a_chunk_past_the_declared_size_is_413_and_nothing_of_it_is_kept(
    cloud: Cloud, cine: bytes
) -> None:
    token = await cloud.token()
    session = await cloud.session(cine, token)
    await cloud.send_from(session, cine[: len(cine) - 10], 0, token)
    resp = await cloud.patch(session, len(cine) - 10, cine[-10:] + b"0123456789", token)
    assert resp.status == 413
    assert await cloud.offset(session, token) == len(cine) - 10
    chunks = [k for k in cloud.staged() if k.startswith(f"uploads.staging/H1/{session}/")]
    assert sum(len(cloud.store.get(k)) for k in chunks) == len(cine) - 10
    assert len(chunks) == len(cloud.staged())  # no scratch file left behind


async def test_a_hash_mismatch_is_400_json_and_stores_nothing(cloud: Cloud, cine: bytes) -> None:
    token = await cloud.token()
    session = await cloud.session(cine, token)
    damaged = bytearray(cine)
    damaged[len(cine) // 2] ^= 0xFF
    await cloud.send_from(session, bytes(damaged), 0, token)
    resp = await cloud.finalize(session, token)
    assert resp.status == 400
    assert "sha-256 mismatch" in (await resp.json())["error"]
    assert cloud.stored() == []
    assert list(cloud.store.iter_keys("H1/")) == []
    assert cloud.staged() == []
    gone = await cloud.client.get(
        f"{UPLOADS_PATH}/{session}", headers={"Authorization": f"Bearer {token}"}
    )
    assert gone.status == 404


async def test_another_hospitals_valid_token_finds_no_session(cloud: Cloud, cine: bytes) -> None:
    token = await cloud.token("H1")
    session = await cloud.session(cine, token)
    await cloud.send_from(session, cine[:CHUNK], 0, token)
    other = await cloud.token("H2")
    auth = {"Authorization": f"Bearer {other}"}
    url = f"{UPLOADS_PATH}/{session}"
    assert (await cloud.client.get(url, headers=auth)).status == 404
    assert (await cloud.client.head(url, headers=auth)).status == 404
    assert (await cloud.patch(session, CHUNK, cine[CHUNK : 2 * CHUNK], other)).status == 404
    assert (await cloud.finalize(session, other)).status == 404
    assert await cloud.offset(session, token) == CHUNK


async def test_no_token_is_401_and_a_staff_token_403(cloud: Cloud, cine: bytes) -> None:
    token = await cloud.token()
    session = await cloud.session(cine, token)
    staff = cloud.signer.issue("H1", "radiologist", subject="dr")
    url = f"{UPLOADS_PATH}/{session}"
    for headers, status in (({}, 401), ({"Authorization": f"Bearer {staff}"}, 403)):
        assert (await cloud.client.post(UPLOADS_PATH, json={}, headers=headers)).status == status
        assert (await cloud.client.get(url, headers=headers)).status == status
        patched = await cloud.client.patch(
            url, data=cine[:CHUNK], headers={**headers, "Upload-Offset": "0"}
        )
        assert patched.status == status
        assert (await cloud.client.post(url + "/finalize", headers=headers)).status == status
    assert await cloud.offset(session, token) == 0


async def test_finalizing_again_answers_duplicate_and_a_second_session_of_the_same_bytes_too(
    cloud: Cloud, cine: bytes
) -> None:
    token = await cloud.token()
    session = await cloud.session(cine, token)
    await cloud.send_from(session, cine, 0, token)
    first = await (await cloud.finalize(session, token)).json()
    assert first["instance"]["outcome"] == "stored"
    again = await cloud.finalize(session, token)
    assert again.status == 200
    assert (await again.json())["instance"]["outcome"] == "duplicate"
    state = await cloud.client.get(
        f"{UPLOADS_PATH}/{session}", headers={"Authorization": f"Bearer {token}"}
    )
    assert (await state.json())["finalized"] is True
    second = await cloud.session(cine, token)
    assert second != session
    await cloud.send_from(second, cine, 0, token)
    dup = await (await cloud.finalize(second, token)).json()
    assert dup["instance"]["outcome"] == "duplicate"
    assert len(cloud.stored()) == 1


async def test_opening_the_same_instance_again_answers_the_open_session(
    cloud: Cloud, cine: bytes
) -> None:
    token = await cloud.token()
    session = await cloud.session(cine, token)
    await cloud.send_from(session, cine[:CHUNK], 0, token)
    again = await cloud.open(cine, token)
    assert again.status == 200
    assert (await again.json())["session"] == session
    assert (await again.json())["offset"] == CHUNK


async def test_a_declared_sop_uid_other_than_the_instances_is_refused(
    cloud: Cloud, cine: bytes
) -> None:
    token = await cloud.token()
    resp = await cloud.client.post(
        UPLOADS_PATH,
        json={"size": len(cine), "sha256": hashlib.sha256(cine).hexdigest(), "sop_uid": "1.2.3"},
        headers={"Authorization": f"Bearer {token}"},
    )
    session = (await resp.json())["session"]
    await cloud.send_from(session, cine, 0, token)
    done = await (await cloud.finalize(session, token)).json()
    assert done["instance"]["outcome"] == "refused"
    assert "not the declared 1.2.3" in done["instance"]["reason"]
    assert cloud.stored() == []


async def test_bad_declarations_are_400(cloud: Cloud, cine: bytes) -> None:
    token = await cloud.token()
    good = {"size": len(cine), "sha256": "a" * 64, "sop_uid": sop(cine)}
    for bad in ({"size": 0}, {"size": True}, {"sha256": "zz"}, {"sop_uid": "../../etc"}):
        resp = await cloud.client.post(
            UPLOADS_PATH, json={**good, **bad}, headers={"Authorization": f"Bearer {token}"}
        )
        assert resp.status == 400, bad
    resp = await cloud.client.get(
        f"{UPLOADS_PATH}/..%2F..%2Fetc", headers={"Authorization": f"Bearer {token}"}
    )
    assert resp.status == 404
    assert cloud.staged() == []


async def test_a_hospital_may_not_open_more_sessions_than_its_limit(
    tmp_path: Path, aiohttp_client: Callable[[web.Application], Any], cine: bytes
) -> None:
    cloud = await make_cloud(tmp_path, aiohttp_client, max_open=2)
    token = await cloud.token()
    for n in range(2):
        variant = cine[:-1] + bytes([7 + n])
        assert (await cloud.open(variant, token)).status == 201
    assert (await cloud.open(cine, token)).status == 429
    other = await cloud.token("H2")
    assert (await cloud.open(cine, other)).status == 201


async def test_expired_sessions_are_removed_with_their_files(cloud: Cloud, cine: bytes) -> None:
    token = await cloud.token()
    session = await cloud.session(cine, token)
    await cloud.send_from(session, cine[:CHUNK], 0, token)
    cloud.clock[0] += 24 * 3600 + 1
    token = await cloud.token()
    resp = await cloud.client.get(
        f"{UPLOADS_PATH}/{session}", headers={"Authorization": f"Bearer {token}"}
    )
    assert resp.status == 404
    assert cloud.staged() == []
    later = await cloud.session(cine, token)  # opening sweeps too
    assert later != session


async def test_a_restarted_cloud_resumes_a_session_from_its_state_and_store(
    tmp_path: Path, aiohttp_client: Callable[[web.Application], Any], cine: bytes
) -> None:
    first = await make_cloud(tmp_path, aiohttp_client)
    token = await first.token()
    session = await first.session(cine, token)
    await first.send_from(session, cine[: 2 * CHUNK], 0, token)
    await first.client.close()
    second = await make_cloud(tmp_path, aiohttp_client, clock=first.clock)
    token = await second.token()
    assert await second.offset(session, token) == 2 * CHUNK
    await second.send_from(session, cine, 2 * CHUNK, token)
    done = await (await second.finalize(session, token)).json()
    assert done["instance"]["outcome"] == "stored"
    ((_uid, key),) = second.stored()
    assert second.store.get(key) == cine
    assert second.staged() == []
    state = await second.client.get(
        f"{UPLOADS_PATH}/{session}", headers={"Authorization": f"Bearer {token}"}
    )
    assert (await state.json())["finalized"] is True


async def _hold(cloud: Cloud, session: str, token: str, offset: int, data: bytes) -> Any:
    """A raw PATCH that announces more than it sends: the server keeps reading (and holds the
    session) until the writer is closed."""
    host, port = cloud.client.server.host, cloud.client.server.port
    _reader, writer = await asyncio.open_connection(host, port)
    writer.write(
        (
            f"PATCH {UPLOADS_PATH}/{session} HTTP/1.1\r\nHost: {host}\r\n"
            f"Authorization: Bearer {token}\r\nUpload-Offset: {offset}\r\n"
            f"Content-Length: {len(data) + 1}\r\n\r\n"
        ).encode()
        + data
    )
    await writer.drain()
    return writer


async def test_a_second_writer_on_a_session_in_use_is_409(cloud: Cloud, cine: bytes) -> None:
    token = await cloud.token()
    session = await cloud.session(cine, token)
    writer = await _hold(cloud, session, token, 0, cine[:CHUNK])

    def held() -> bool:
        with sqlite3.connect(cloud.data / "index.sqlite") as db:
            row = db.execute(
                "SELECT writer FROM upload_sessions WHERE session = ?", (session,)
            ).fetchone()
        return row is not None and row[0] is not None

    try:
        # the held writer has the lease once the database names it (probing with requests
        # instead would compete with it for the lease)
        for _ in range(1000):
            if held():
                break
            await asyncio.sleep(0.02)
        assert held()
        busy = await cloud.patch(session, 1, cine[1:CHUNK], token)
        assert busy.status == 409
        assert "in progress" in (await busy.json())["error"]
        second = await cloud.patch(session, 0, cine[:CHUNK], token)
        assert second.status == 409
        assert "in progress" in (await second.json())["error"]
    finally:
        writer.close()
        await writer.wait_closed()
    for _ in range(200):
        if await cloud.offset(session, token) > 0:
            break
        await asyncio.sleep(0.02)
    got = await cloud.offset(session, token)
    assert 0 < got <= CHUNK


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    """A 2 MiB tmpfs (needs root, as in CI)."""
    mnt = tmp_path / "small"
    mnt.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=2m", "tmpfs", str(mnt)], check=True)
    try:
        yield mnt
    finally:
        subprocess.run(["umount", "-l", str(mnt)], check=True)


async def test_a_full_store_is_507_and_keeps_what_was_acknowledged(
    tmp_path: Path,
    aiohttp_client: Callable[[web.Application], Any],
    cine: bytes,
    small_disk: Path,
) -> None:
    _prepare(tmp_path)
    (tmp_path / "cloud" / "objects").symlink_to(small_disk)
    cloud = await make_cloud(tmp_path, aiohttp_client)
    token = await cloud.token()
    session = await cloud.session(cine, token)
    offset, statuses = 0, []
    while offset < len(cine):
        resp = await cloud.patch(session, offset, cine[offset : offset + CHUNK // 2], token)
        statuses.append(resp.status)
        if resp.status != 204:
            break
        offset = int(resp.headers["Upload-Offset"])
    assert statuses[-1] == 507, statuses
    assert "full" in (await resp.json())["error"]
    assert 0 < offset < len(cine)
    assert await cloud.offset(session, token) == offset
    assert cloud.stored() == []


async def test_scratch_files_a_dead_process_left_are_removed_after_the_ttl(
    cloud: Cloud, cine: bytes
) -> None:
    scratch = cloud.data / "uploads"
    scratch.mkdir(exist_ok=True)
    old, fresh = scratch / "H1.old.0123456789abcdef", scratch / "H1.fresh.0123456789abcdef"
    old.write_bytes(b"x" * 10)
    fresh.write_bytes(b"y" * 10)
    day_and_more = time.time() - 24 * 3600 - 60
    os.utime(old, (day_and_more, day_and_more))
    token = await cloud.token()
    await cloud.session(cine, token)  # opening sweeps
    assert not old.exists() and fresh.exists()

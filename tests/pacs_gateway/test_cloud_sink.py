"""The gateway's HttpIngestSink against the real ingest API served on 127.0.0.1 (a thread)."""

from __future__ import annotations

import io
import time
from collections.abc import Iterator
from pathlib import Path

import pydicom
import pytest
from aiohttp import web
from aiohttp.typedefs import Handler

from cloudfilm.synth import synthesize_study
from image_store.gateway_assertion import BATCH_PATH, TOKEN_PATH
from image_store.gateway_credentials import SqlGatewayCredentials
from image_store.index.sqlite import SqliteIndex
from image_store.ingest import LocalIngest
from image_store.objects.filesystem import FilesystemObjectStore
from image_store.records import InstanceQuery
from pacs_gateway.cloud_sink import (
    CloudSinkSettings,
    CloudUnavailable,
    CredentialRefused,
    HttpIngestSink,
)
from pacs_gateway.credential import load_credential
from pacs_gateway.spool import Spool
from pacs_gateway.uploader import Uploader, UploaderSettings
from tests.gateway_credentials import (
    GATEWAYS_FILE,
    REGISTRY_FILE,
    issue_gateway_credential,
    revoke_gateway_credential,
)
from tests.threaded_server import ThreadedServer
from viewer_api import middlewares
from viewer_api.gateway_auth import GatewayAuth
from viewer_api.ingest_api import add_ingest_routes
from viewer_api.registry import SqlRegistry


class ThreadedCloud:
    """The ingest API on a real socket, in a thread with its own event loop. ``fail_batches``
    makes the batch endpoint answer that status instead (an outage); ``clock`` is the cloud's."""

    def __init__(self, root: Path) -> None:
        self.data = root / "cloud"
        self.data.mkdir()
        registry = SqlRegistry(self.data / REGISTRY_FILE)
        registry.add_hospital("H1", "First")
        registry.close()
        self.server = ThreadedServer()
        self.url = self.server.url
        self.cred_file = root / "h1.cred"
        issue_gateway_credential(self.data, "H1", self.cred_file, cloud_url=self.url)
        self.index = SqliteIndex(self.data / "index.sqlite")
        self.store = FilesystemObjectStore(self.data / "objects")
        self.clock = [time.time()]
        self.fail_batches: int | None = None
        self.batches = 0
        self.tokens = 0
        app = web.Application(middlewares=[self._faults, middlewares.errors])
        add_ingest_routes(
            app,
            GatewayAuth(
                SqlGatewayCredentials(self.data / GATEWAYS_FILE),
                self.url + TOKEN_PATH,
                clock=lambda: self.clock[0],
            ),
            LocalIngest(self.store, self.index, trusted_links=True),
        )
        self.app = app

    @web.middleware
    async def _faults(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        if request.path == BATCH_PATH:
            self.batches += 1
            if self.fail_batches is not None:
                await request.read()
                return web.json_response({"error": "down"}, status=self.fail_batches)
        else:
            self.tokens += 1
        return await handler(request)

    def __enter__(self) -> ThreadedCloud:
        self.server.start(self.app)
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.stop()
        self.index.close()

    def stored(self) -> list[str]:
        return sorted(s.sop_uid for s in self.index.find_instances(InstanceQuery(), limit=10_000))


@pytest.fixture(scope="module")
def ct(tmp_path_factory: pytest.TempPathFactory) -> list[bytes]:
    out = tmp_path_factory.mktemp("ct")
    return [p.read_bytes() for p in synthesize_study(out, modality="CT", images=6, seed=31)]


def sop(data: bytes) -> str:
    return str(pydicom.dcmread(io.BytesIO(data), stop_before_pixels=True).SOPInstanceUID)


@pytest.fixture
def cloud(tmp_path: Path) -> Iterator[ThreadedCloud]:
    with ThreadedCloud(tmp_path) as c:
        yield c


def make_sink(cloud: ThreadedCloud, clock: list[float] | None = None) -> HttpIngestSink:
    now = clock or [time.time()]
    return HttpIngestSink(
        load_credential(cloud.cred_file),
        CloudSinkSettings(cloud.url, connections=2),
        clock=lambda: now[0],
    )


def test_batches_are_delivered_with_per_instance_outcomes(
    cloud: ThreadedCloud, ct: list[bytes]
) -> None:
    sink = make_sink(cloud)
    outcomes = sink.ingest("H1", [*ct[:3], b"not dicom" * 50])
    assert [o.ok for o in outcomes] == [True, True, True, False]
    assert [o.sop_uid for o in outcomes[:3]] == [sop(d) for d in ct[:3]]
    assert "not a complete DICOM instance" in outcomes[3].reason
    again = sink.ingest("H1", ct[:3])  # a retried batch: stored once, reported ok
    assert all(o.ok for o in again)
    assert cloud.stored() == sorted(sop(d) for d in ct[:3])
    assert (sink.exchanges, cloud.batches) == (1, 2)  # one token for both batches
    sink.close()


def test_the_token_is_renewed_before_it_expires(cloud: ThreadedCloud, ct: list[bytes]) -> None:
    clock = [time.time()]
    sink = make_sink(cloud, clock)
    sink.ingest("H1", ct[:1])
    clock[0] += 560  # within a minute of the 10-minute token's end
    cloud.clock[0] += 560
    assert all(o.ok for o in sink.ingest("H1", ct[1:2]))
    assert sink.exchanges == 2
    sink.close()


def test_a_token_the_cloud_no_longer_honours_is_exchanged_again(
    cloud: ThreadedCloud, ct: list[bytes]
) -> None:
    clock = [time.time()]
    sink = make_sink(cloud, clock)
    sink.ingest("H1", ct[:1])
    clock[0] += 500  # the gateway still trusts its 10-minute token...
    cloud.clock[0] += 605  # ...which has expired at the cloud
    assert all(o.ok for o in sink.ingest("H1", ct[1:2]))
    assert sink.exchanges == 2
    assert cloud.stored() == sorted(sop(d) for d in ct[:2])
    sink.close()


@pytest.mark.parametrize("status", [500, 502, 503])
def test_a_5xx_answer_is_an_oserror(cloud: ThreadedCloud, ct: list[bytes], status: int) -> None:
    sink = make_sink(cloud)
    cloud.fail_batches = status
    with pytest.raises(CloudUnavailable) as caught:
        sink.ingest("H1", ct[:2])
    assert isinstance(caught.value, OSError)
    assert cloud.stored() == []
    sink.close()


def test_an_unreachable_cloud_is_an_oserror(tmp_path: Path, ct: list[bytes]) -> None:
    with ThreadedCloud(tmp_path) as cloud:
        cred_file, url = cloud.cred_file, cloud.url
    sink = HttpIngestSink(load_credential(cred_file), CloudSinkSettings(url, connect_timeout_s=5))
    with pytest.raises(OSError, match="cannot be reached"):
        sink.ingest("H1", ct[:1])
    sink.close()


def test_a_revoked_credential_is_an_oserror_and_the_spool_keeps_everything(
    cloud: ThreadedCloud, ct: list[bytes], tmp_path: Path
) -> None:
    spool = Spool(tmp_path / "spool")
    for data in ct:
        spool.accept([data], sop(data))
    sink = make_sink(cloud)
    uploader = Uploader(spool, sink, "H1", UploaderSettings(batch_size=3, yield_s=0))
    assert uploader.upload_batch() == 3
    assert revoke_gateway_credential(cloud.data, load_credential(cloud.cred_file).credential_id)
    with pytest.raises(CredentialRefused) as caught:
        uploader.upload_batch()
    assert isinstance(caught.value, OSError)
    assert "revoked" in str(caught.value)
    assert len(spool.pending()) == len(ct) - 3
    assert not list(spool.failed.iterdir())
    assert cloud.stored() == sorted(sop(d) for d in ct[:3])
    sink.close()


def test_an_uploader_drains_the_spool_through_the_wire(
    cloud: ThreadedCloud, ct: list[bytes], tmp_path: Path
) -> None:
    spool = Spool(tmp_path / "spool")
    for data in ct:
        spool.accept([data], sop(data))
    sink = make_sink(cloud)
    uploader = Uploader(spool, sink, "H1", UploaderSettings(workers=2, batch_size=2, yield_s=0))
    uploader.start()
    try:
        assert uploader.wait_drained(60)
    finally:
        uploader.stop()
        sink.close()
    assert cloud.stored() == sorted(sop(d) for d in ct)
    assert uploader.counters.uploaded == len(ct)

"""The gateway's side of resumable upload sessions: HttpIngestSink sends large instance files
through pacs_gateway.large_upload to the real ingest and upload-session routes on a socket."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import pytest
from aiohttp import web
from aiohttp.typedefs import Handler

from cloudfilm.synth import synthesize_study
from image_store.audit import SqlAuditLog
from image_store.records import InstanceQuery
from image_store.state.db import SqliteStateDb
from image_store.state.uploads import SqlUploadSessions
from pacs_gateway.cloud_sink import CloudUnavailable, HttpIngestSink
from pacs_gateway.large_upload import read_sidecar, sidecar_path
from tests.pacs_gateway.test_cloud_sink import ThreadedCloud, make_sink
from viewer_api.upload_sessions import UPLOADS_PATH, UploadSettings, add_upload_routes

CHUNK = 512 * 1024


class UploadCloud(ThreadedCloud):
    """The ingest API with upload sessions; ``fail_after`` chunks make later PATCHes 503."""

    def __init__(self, root: Path) -> None:
        super().__init__(root)
        self.sessions = add_upload_routes(
            self.app,
            UploadSettings(self.data / "uploads"),
            SqlAuditLog(SqliteStateDb(self.data / "index.sqlite")),
            SqlUploadSessions(SqliteStateDb(self.data / "index.sqlite")),
            self.store,
        )
        self.app.middlewares.append(self._chunks)
        self.patches: list[tuple[int, int]] = []
        """(Upload-Offset, Content-Length) of every chunk the cloud took."""
        self.fail_after: int | None = None

    @web.middleware
    async def _chunks(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        if request.method == "PATCH" and request.path.startswith(UPLOADS_PATH):
            if self.fail_after is not None and len(self.patches) >= self.fail_after:
                await request.read()
                return web.json_response({"error": "down"}, status=503)
            self.patches.append(
                (int(request.headers["Upload-Offset"]), request.content_length or 0)
            )
        return await handler(request)


@pytest.fixture(scope="module")
def cine_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("us")
    (path,) = synthesize_study(out, modality="US", images=1, frames=4, seed=41)
    return path


@pytest.fixture
def cloud(tmp_path: Path) -> Iterator[UploadCloud]:
    with UploadCloud(tmp_path) as c:
        yield c


@pytest.fixture
def spooled(tmp_path: Path, cine_file: Path) -> Path:
    ready = tmp_path / "spool" / "ready"
    ready.mkdir(parents=True)
    return Path(shutil.copy(cine_file, ready / "0001-instance.dcm"))


def large_sink(cloud: UploadCloud) -> HttpIngestSink:
    sink = make_sink(cloud)
    sink.settings = replace(sink.settings, large_object_bytes=1 << 20, large_chunk_bytes=CHUNK)
    return sink


def test_a_large_file_goes_up_in_chunks_and_is_stored_byte_identical(
    cloud: UploadCloud, spooled: Path, ct_small: list[bytes]
) -> None:
    sink = large_sink(cloud)
    outcomes = sink.ingest("H1", [ct_small[0], spooled])
    assert [o.ok for o in outcomes] == [True, True]
    size = spooled.stat().st_size
    assert [off for off, _ in cloud.patches] == list(range(0, size, CHUNK))
    assert sum(n for _, n in cloud.patches) == size
    assert cloud.batches == 1  # the small instance only
    (rec,) = cloud.index.find_instances(InstanceQuery(sop_uids=(outcomes[1].sop_uid,)), limit=2)
    assert cloud.store.get(rec.object_key) == spooled.read_bytes()
    assert not sidecar_path(spooled).exists()
    sink.close()


def test_an_outage_mid_upload_resumes_at_the_clouds_offset_not_from_zero(
    cloud: UploadCloud, spooled: Path
) -> None:
    sink = large_sink(cloud)
    cloud.fail_after = 3
    with pytest.raises(CloudUnavailable):
        sink.ingest("H1", [spooled])
    car = read_sidecar(spooled)
    assert car is not None and car.size == spooled.stat().st_size
    assert cloud.stored() == []
    cloud.fail_after = None
    restarted = large_sink(cloud)  # a new sink, as after a gateway restart: the sidecar leads
    (outcome,) = restarted.ingest("H1", [spooled])
    assert outcome.ok
    offsets = [off for off, _ in cloud.patches]
    assert offsets[3] == 3 * CHUNK  # the first chunk after the outage
    assert sum(n for _, n in cloud.patches) == spooled.stat().st_size  # nothing sent twice
    assert len(cloud.stored()) == 1
    assert not sidecar_path(spooled).exists()
    sink.close()
    restarted.close()


def test_a_session_the_cloud_no_longer_knows_is_opened_anew(
    cloud: UploadCloud, spooled: Path
) -> None:
    sink = large_sink(cloud)
    cloud.fail_after = 2
    with pytest.raises(CloudUnavailable):
        sink.ingest("H1", [spooled])
    old = read_sidecar(spooled)
    assert old is not None
    for meta in cloud.sessions.states.of_hospital("H1"):  # expired and swept meanwhile
        cloud.sessions.drop(meta)
    cloud.fail_after = None
    (outcome,) = sink.ingest("H1", [spooled])
    assert outcome.ok
    assert len(cloud.stored()) == 1
    assert cloud.patches[2][0] == 0
    sink.close()


def test_a_file_that_is_not_dicom_is_refused_for_good_without_a_session(
    cloud: UploadCloud, tmp_path: Path
) -> None:
    junk = tmp_path / "junk.dcm"
    junk.write_bytes(b"not dicom " * 210_000)
    (outcome,) = large_sink(cloud).ingest("H1", [junk])
    assert not outcome.ok and "not a DICOM instance" in outcome.reason
    assert cloud.patches == []
    assert not sidecar_path(junk).exists()


@pytest.fixture(scope="module")
def ct_small(tmp_path_factory: pytest.TempPathFactory) -> list[bytes]:
    out = tmp_path_factory.mktemp("ct")
    return [p.read_bytes() for p in synthesize_study(out, modality="MR", images=1, seed=43)]

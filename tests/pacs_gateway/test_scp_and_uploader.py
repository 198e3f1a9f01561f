from __future__ import annotations

import io
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import pydicom
import pytest
from pydicom.data import get_testdata_file
from pynetdicom import AE
from pynetdicom.sop_class import CTImageStorage, MRImageStorage, Verification

from image_store.index.sqlite import SqliteIndex
from image_store.ingest import IngestOutcome, LocalIngest
from image_store.objects.filesystem import FilesystemObjectStore
from image_store.records import InstanceQuery
from pacs_gateway.metrics import RateMeter, StoreCounters, render_metrics
from pacs_gateway.scp import ScpSettings, start_scp
from pacs_gateway.spool import Spool
from pacs_gateway.uploader import Uploader, UploaderSettings


def _path(name: str) -> Path:
    p = get_testdata_file(name)
    assert p is not None
    return Path(p)


@pytest.fixture
def spool(tmp_path: Path) -> Spool:
    return Spool(tmp_path / "spool")


@pytest.fixture
def scp(spool: Spool) -> Iterator[Any]:
    server = start_scp(ScpSettings(ae_title="GW", port=0), spool)
    yield server
    server.shutdown()


def _associate(server: Any, *contexts: str) -> Any:
    ae = AE(ae_title="MODALITY")
    for cx in contexts:
        ae.add_requested_context(cx)
    assoc = ae.associate("127.0.0.1", server.server_address[1], ae_title="GW")
    assert assoc.is_established
    return assoc


def test_c_echo_succeeds(scp: Any) -> None:
    assoc = _associate(scp, Verification)
    assert assoc.send_c_echo().Status == 0
    assoc.release()


def test_the_scp_counts_an_association_open_until_it_is_released_or_aborted(
    scp: Any, spool: Spool
) -> None:
    assert not spool.usage.receiving()
    assoc = _associate(scp, Verification)
    _eventually(spool.usage.receiving)
    assoc.release()
    _eventually(lambda: not spool.usage.receiving())
    assoc = _associate(scp, Verification)
    _eventually(spool.usage.receiving)
    assoc.abort()
    _eventually(lambda: not spool.usage.receiving())


def _eventually(check: Any, timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, "not within the timeout"
        time.sleep(0.01)


def test_c_store_success_means_the_bytes_are_in_the_spool(scp: Any, spool: Spool) -> None:
    ds = pydicom.dcmread(_path("CT_small.dcm"))
    assoc = _associate(scp, CTImageStorage)
    assert assoc.send_c_store(ds).Status == 0x0000
    assoc.release()
    (entry,) = spool.pending()
    stored = pydicom.dcmread(entry.path)
    assert stored.SOPInstanceUID == ds.SOPInstanceUID
    assert stored.file_meta.SourceApplicationEntityTitle == "MODALITY"
    assert stored.PixelData == ds.PixelData


def test_c_store_over_the_high_water_mark_answers_out_of_resources(tmp_path: Path) -> None:
    spool = Spool(tmp_path / "s", high_water_bytes=1000)
    server = start_scp(ScpSettings(ae_title="GW", port=0), spool)
    try:
        assoc = _associate(server, CTImageStorage)
        status = assoc.send_c_store(pydicom.dcmread(_path("CT_small.dcm")))
        assoc.release()
    finally:
        server.shutdown()
    assert status.Status == 0xA700
    assert spool.pending() == []


def test_uploader_moves_spooled_instances_into_store_and_index(
    scp: Any, spool: Spool, tmp_path: Path
) -> None:
    index = SqliteIndex(tmp_path / "i.sqlite")
    store = FilesystemObjectStore(tmp_path / "o")
    warmed: list[set[str]] = []
    up = Uploader(spool, LocalIngest(store, index), "H1", on_idle=warmed.append)
    up.start()
    try:
        assoc = _associate(scp, CTImageStorage, MRImageStorage)
        for name in ("CT_small.dcm", "MR_small.dcm"):
            assert assoc.send_c_store(pydicom.dcmread(_path(name))).Status == 0
        assoc.release()
        assert up.wait_drained(20)
    finally:
        up.stop()
    insts = index.find_instances(InstanceQuery(), limit=10)
    assert len(insts) == 2
    for inst in insts:
        assert pydicom.dcmread(_path("CT_small.dcm" if inst.rows == 128 else "MR_small.dcm"))
        assert store.stat(inst.object_key) is not None
    assert spool.stats().depth == 0
    assert set().union(*warmed) == {i.series_uid for i in insts}
    index.close()


class FlakySink:
    """Fails the first ``failures`` deliveries like an unreachable cloud, then delivers."""

    def __init__(self, inner: LocalIngest, failures: int) -> None:
        self.inner = inner
        self.failures = failures

    def ingest(self, hospital: str, items: Sequence[bytes]) -> list[IngestOutcome]:
        if self.failures > 0:
            self.failures -= 1
            raise ConnectionError("cloud unreachable")
        return self.inner.ingest(hospital, items)


def test_uploader_retries_until_the_cloud_is_back(spool: Spool, tmp_path: Path) -> None:
    index = SqliteIndex(tmp_path / "i.sqlite")
    sink = FlakySink(LocalIngest(FilesystemObjectStore(tmp_path / "o"), index), failures=3)
    spool.accept([_path("CT_small.dcm").read_bytes()], "1.2.3")
    up = Uploader(spool, sink, "H1", UploaderSettings(workers=1, backoff_initial_s=0.01))
    up.start()
    try:
        assert up.wait_drained(20)
    finally:
        up.stop()
    assert up.counters.failures == 3 and up.counters.uploaded == 1
    assert index.count_instances() == 1
    index.close()


def test_uploader_moves_refused_instances_to_failed(spool: Spool, tmp_path: Path) -> None:
    index = SqliteIndex(tmp_path / "i.sqlite")
    spool.accept([b"garbage" * 100], "1.2.3")
    up = Uploader(spool, LocalIngest(FilesystemObjectStore(tmp_path / "o"), index), "H1")
    assert up.upload_batch() == 1
    assert spool.pending() == [] and spool.stats().failed == 1
    assert index.count_instances() == 0
    index.close()


def test_metrics_text_counts_accepted_and_refused(tmp_path: Path) -> None:
    spool = Spool(tmp_path / "s", high_water_bytes=20_000)
    counters = StoreCounters()
    server = start_scp(ScpSettings(ae_title="GW", port=0), spool, counters)
    try:
        assoc = _associate(server, CTImageStorage, MRImageStorage)
        assert assoc.send_c_store(pydicom.dcmread(_path("MR_small.dcm"))).Status == 0
        assert assoc.send_c_store(pydicom.dcmread(_path("CT_small.dcm"))).Status == 0xA700
        assoc.release()
    finally:
        server.shutdown()
    up = Uploader(
        spool, LocalIngest(FilesystemObjectStore(tmp_path / "o"), SqliteIndex(tmp_path / "i")), "H1"
    )
    text = render_metrics(spool, up, counters, RateMeter())
    assert "cloudfilm_store_accepted_total 1\n" in text
    assert 'cloudfilm_store_refused_total{reason="out_of_resources"} 1\n' in text
    assert "cloudfilm_spool_depth 1\n" in text
    assert "# TYPE cloudfilm_upload_failures_total counter" in text


class OutageSink:
    """A cloud that is unreachable until ``up`` is set."""

    def __init__(self, inner: LocalIngest) -> None:
        self.inner = inner
        self.up = False
        self.refused_batches = 0

    def ingest(self, hospital: str, items: Sequence[bytes]) -> list[IngestOutcome]:
        if not self.up:
            self.refused_batches += 1
            raise TimeoutError("cloud unreachable")
        return self.inner.ingest(hospital, items)


def test_acceptance_continues_while_the_cloud_is_down_and_the_spool_drains_after(
    scp: Any, spool: Spool, tmp_path: Path
) -> None:
    index = SqliteIndex(tmp_path / "i.sqlite")
    sink = OutageSink(LocalIngest(FilesystemObjectStore(tmp_path / "o"), index))
    up = Uploader(
        spool, sink, "H1", UploaderSettings(workers=2, backoff_initial_s=0.01, backoff_max_s=0.1)
    )
    up.start()
    try:
        assoc = _associate(scp, CTImageStorage)
        base = pydicom.dcmread(_path("CT_small.dcm"))
        for i in range(10):
            base.SOPInstanceUID = f"1.2.826.0.1.3680043.8.498.{i + 1}"
            assert assoc.send_c_store(base).Status == 0
        assoc.release()
        assert spool.stats().depth == 10 and index.count_instances() == 0
        deadline = time.monotonic() + 20
        while sink.refused_batches < 1:  # the uploader tries once the modality has paused
            assert time.monotonic() < deadline, "the uploader never tried"
            time.sleep(0.02)
        assert spool.stats().depth == 10
        sink.up = True
        assert up.wait_drained(20)
    finally:
        up.stop()
    assert index.count_instances() == 10 and spool.stats().depth == 0
    index.close()


def _one_ct(spool: Spool, uid: str) -> None:
    raw = _path("CT_small.dcm").read_bytes()
    ds = pydicom.dcmread(io.BytesIO(raw))
    ds.SOPInstanceUID = uid
    out = io.BytesIO()
    ds.save_as(out, enforce_file_format=True)
    spool.accept([out.getvalue()], uid)


def test_the_uploader_waits_while_instances_arrive_but_never_past_max_defer(
    spool: Spool, tmp_path: Path
) -> None:
    index = SqliteIndex(tmp_path / "i.sqlite")
    ingest = LocalIngest(FilesystemObjectStore(tmp_path / "o"), index)
    spool.usage.association_opened()  # a modality is sending (the SCP counts its association)
    _one_ct(spool, "1.2.826.0.1.3680043.8.498.1")
    patient = Uploader(spool, ingest, "H1", UploaderSettings(workers=1, yield_s=3.0))
    patient.start()
    try:
        time.sleep(0.5)  # a modality that just sent: the disk is left to the SCP
        assert index.count_instances() == 0
        assert patient.wait_drained(20)  # and once it has been quiet for yield_s, it goes up
    finally:
        patient.stop()
    assert index.count_instances() == 1
    _one_ct(spool, "1.2.826.0.1.3680043.8.498.2")
    impatient = Uploader(
        spool, ingest, "H1", UploaderSettings(workers=1, yield_s=600.0, max_defer_s=0.2)
    )
    impatient.start()
    try:
        assert impatient.wait_drained(20)  # never quiet for 600 s, but 0.2 s is the limit
    finally:
        impatient.stop()
    assert index.count_instances() == 2
    index.close()


def test_the_uploader_starts_as_soon_as_the_last_association_ends(
    spool: Spool, tmp_path: Path
) -> None:
    index = SqliteIndex(tmp_path / "i.sqlite")
    ingest = LocalIngest(FilesystemObjectStore(tmp_path / "o"), index)
    spool.usage.association_opened()
    spool.usage.association_opened()  # two modalities
    _one_ct(spool, "1.2.826.0.1.3680043.8.498.3")
    up = Uploader(spool, ingest, "H1", UploaderSettings(workers=1, yield_s=600.0))
    up.start()
    try:
        spool.usage.association_closed()
        time.sleep(0.5)
        assert index.count_instances() == 0  # one is still sending
        spool.usage.association_closed()
        assert up.wait_drained(5)  # no need to wait the 600 s of quiet
    finally:
        up.stop()
    assert index.count_instances() == 1
    index.close()

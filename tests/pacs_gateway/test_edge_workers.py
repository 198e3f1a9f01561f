"""Edge compression in worker processes: the same bytes as in the thread, and a dead worker
costs only the compression of its batch."""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Iterator
from concurrent.futures.process import BrokenProcessPool
from pathlib import Path

import pytest

from cloudfilm.synth import synthesize_study
from dicom_codecs.edge import compress_file_for_upload
from dicom_codecs.upload_compression import UploadCompression
from pacs_gateway.edge_workers import EdgeWorkers


@pytest.fixture(scope="module")
def slices(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    return synthesize_study(tmp_path_factory.mktemp("edge"), modality="CT", images=6, seed=3)


@pytest.fixture
def workers() -> Iterator[EdgeWorkers]:
    w = EdgeWorkers(UploadCompression.JPEG_LS, 2)
    w.start()
    assert w.wait_ready(60)
    yield w
    w.stop()


def test_workers_return_what_the_thread_would_in_order(
    workers: EdgeWorkers, slices: list[Path]
) -> None:
    got = workers.compress(slices)
    want = [compress_file_for_upload(p, UploadCompression.JPEG_LS) for p in slices]
    assert [r.data for r in got] == [r.data for r in want]
    assert all(r.compressed for r in got)


def test_a_dead_worker_sends_its_batch_as_it_came_and_the_next_batch_compresses(
    workers: EdgeWorkers, slices: list[Path]
) -> None:
    pool = workers._executor()
    victim = next(iter(pool._processes.values()))  # type: ignore[attr-defined]
    os.kill(victim.pid, signal.SIGKILL)
    victim.join(10)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:  # until the pool has noticed
        try:
            pool.submit(int).result(1)
        except BrokenProcessPool:
            break
        time.sleep(0.05)
    first = workers.compress(slices)
    assert [r.data for r in first] == slices  # the files themselves, streamed from the spool
    assert all(not r.compressed and "worker" in r.reason for r in first)
    again = workers.compress(slices)
    assert all(r.compressed for r in again)


def test_no_compression_needs_no_process(slices: list[Path]) -> None:
    w = EdgeWorkers(UploadCompression.NONE, 2)
    w.start()
    try:
        assert w.processes == 0
        assert [r.data for r in w.compress(slices)] == slices
    finally:
        w.stop()


def test_compress_after_stop_raises(slices: list[Path]) -> None:
    w = EdgeWorkers(UploadCompression.JPEG_LS, 1)
    w.start()
    w.stop()
    with pytest.raises(RuntimeError):
        w.compress(slices[:1])


@pytest.mark.skipif(not hasattr(os, "SCHED_IDLE"), reason="Linux scheduling policy")
def test_niced_workers_yield_every_core_to_ordinary_tasks(slices: list[Path]) -> None:
    w = EdgeWorkers(UploadCompression.JPEG_LS, 2, nice=10)
    w.start()
    try:
        assert w.wait_ready(60)
        procs = list(w._executor()._processes.values())  # type: ignore[attr-defined]
        assert len(procs) == 2
        assert all(os.sched_getscheduler(p.pid) == os.SCHED_IDLE for p in procs)
        assert all(r.compressed for r in w.compress(slices))
    finally:
        w.stop()


def test_a_batch_not_compressed_in_time_goes_up_as_it_came(slices: list[Path]) -> None:
    w = EdgeWorkers(UploadCompression.JPEG_LS, 1, timeout_s=0.0)
    w.start()
    try:
        assert w.wait_ready(60)
        late = w.compress(slices)
        assert len(late) == len(slices)
        assert any(not r.compressed and "not compressed within" in r.reason for r in late)
        assert all(r.data == p for r, p in zip(late, slices, strict=True) if not r.compressed)
        w.timeout_s = 60.0
        assert all(r.compressed for r in w.compress(slices))  # the worker is still there
    finally:
        w.stop()

"""Edge compression in worker processes, so that every core compresses.

CharLS through pydicom's pyjpegls plugin holds the GIL while it encodes, so the uploader's
threads would take turns on one core; here each spooled file is compressed (and its bit-exact
check decoded) in one of ``processes`` spawned workers. Only paths go
to a worker and only the re-encoded bytes come back (a file that is not compressed comes back as
its path and goes up streamed from the spool).

A worker that dies (a codec crashing on a modality's malformed pixel data) takes only itself
down: the batch it was part of goes up as it arrived, uncompressed, and the next batch starts a
fresh pool.

With a ``nice`` above 0 the workers are niced and, on Linux, run under the SCHED_IDLE policy:
they get a core only when no ordinary task wants it, and the SCP process waking from a journal
``fdatasync`` preempts them at once, so compressing while a modality sends no longer slows its
C-STOREs (bench/region_ingest.py: about a quarter more instances per second at the modality,
and the study viewable sooner because the batches compressed meanwhile are ready). The cost is
that a machine busy with ordinary work for a long time compresses nothing meanwhile: the files
of a batch not compressed within ``timeout_s`` go up as they came.
"""

from __future__ import annotations

import logging
import multiprocessing
import os
import threading
import time
from concurrent.futures import Future, ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from pathlib import Path

from dicom_codecs.edge import EdgeResult, compress_file_for_upload
from dicom_codecs.upload_compression import UploadCompression

logger = logging.getLogger(__name__)


_all_started: threading.Barrier | None = None


def _init_worker(nice: int, all_started: threading.Barrier) -> None:
    global _all_started
    _all_started = all_started
    if nice:
        try:
            os.nice(nice)
            if hasattr(os, "SCHED_IDLE"):
                os.sched_setscheduler(0, os.SCHED_IDLE, os.sched_param(0))
        except OSError:
            logger.debug("cannot lower the edge worker's priority", exc_info=True)
    import dicom_codecs.edge  # noqa: F401  (loaded before the first batch needs it)


def _ready() -> int:
    """Returns once every worker has run its initializer (each runs one of these: the
    barrier holds the first ones until the last has started)."""
    if _all_started is not None:
        _all_started.wait(_START_TIMEOUT_S)
    return os.getpid()


_START_TIMEOUT_S = 120.0


class EdgeWorkers:
    """Compresses spooled files for upload with ``codec``, in ``processes`` worker processes
    (0: in the calling thread)."""

    def __init__(
        self,
        codec: UploadCompression,
        processes: int,
        *,
        nice: int = 0,
        timeout_s: float = 30.0,
    ) -> None:
        self.codec = codec
        self.processes = processes if codec is not UploadCompression.NONE else 0
        self.nice = nice
        self.timeout_s = timeout_s
        """How long one batch's compression may take; what is not compressed by then goes up
        as it came."""
        self._pool: ProcessPoolExecutor | None = None
        self._lock = threading.Lock()
        self._closed = False
        self._warming: list[Future[int]] = []

    def start(self) -> None:
        """Start the workers and have them import the codecs, without waiting for them
        (:meth:`wait_ready` does)."""
        with self._lock:
            self._closed = False
        if self.processes:
            self._executor()

    def _executor(self) -> ProcessPoolExecutor:
        with self._lock:
            if self._closed:
                raise RuntimeError("the edge workers are stopped")
            if self._pool is None:
                spawn = multiprocessing.get_context("spawn")
                self._pool = ProcessPoolExecutor(
                    max_workers=self.processes,
                    mp_context=spawn,
                    initializer=_init_worker,
                    initargs=(self.nice, spawn.Barrier(self.processes)),
                )
                self._warming = [self._pool.submit(_ready) for _ in range(self.processes)]
            return self._pool

    def wait_ready(self, timeout: float) -> bool:
        """True once the workers have started and imported the codecs (so that a gateway
        says it is ready only when compressing no longer competes with its start-up)."""
        with self._lock:
            warming = list(self._warming)
        try:
            for fut in warming:
                fut.result(timeout)
        except Exception:  # a worker that failed to start: the next batch starts a new pool
            logger.warning("the edge compression workers did not start", exc_info=True)
            return False
        return True

    def _discard(self, pool: ProcessPoolExecutor) -> None:
        with self._lock:
            if self._pool is pool:
                self._pool = None
        pool.shutdown(wait=False, cancel_futures=True)

    def compress(self, paths: list[Path]) -> list[EdgeResult]:
        """What to upload for each path, in order (see dicom_codecs.edge)."""
        if not self.processes:
            return [compress_file_for_upload(p, self.codec) for p in paths]
        pool = self._executor()
        futures: list[Future[EdgeResult]] = []
        try:
            for p in paths:
                futures.append(pool.submit(compress_file_for_upload, p, self.codec))
        except (BrokenProcessPool, RuntimeError) as exc:  # broken, or shut down meanwhile
            return self._as_arrived(pool, paths, futures, exc)
        results: list[EdgeResult] = []
        deadline = time.monotonic() + self.timeout_s
        for n, fut in enumerate(futures):
            try:
                results.append(fut.result(max(0.0, deadline - time.monotonic())))
            except BrokenProcessPool as exc:
                return results + self._as_arrived(pool, paths[len(results) :], [], exc)
            except TimeoutError:
                return results + self._late(paths[n:], futures[n:])
        return results

    def _late(self, paths: list[Path], futures: list[Future[EdgeResult]]) -> list[EdgeResult]:
        """The compressions of a batch that missed the deadline: those done meanwhile, the rest
        (cancelled, or left to finish unread) as they came."""
        late = f"not compressed within {self.timeout_s:g} s"
        out = []
        for p, fut in zip(paths, futures, strict=True):
            fut.cancel()
            done = fut.done() and not fut.cancelled() and fut.exception() is None
            out.append(fut.result() if done else EdgeResult(p, False, late))
        missed = sum(r.reason == late for r in out)
        logger.warning("%d instances go up as they came: %s", missed, late)
        return out

    def _as_arrived(
        self,
        pool: ProcessPoolExecutor,
        paths: list[Path],
        futures: list[Future[EdgeResult]],
        exc: BaseException,
    ) -> list[EdgeResult]:
        for fut in futures:
            fut.cancel()
        if self._closed:
            raise RuntimeError("the edge workers are stopped") from exc
        logger.error("an edge compression worker died (%s): %d instances go up as they came",
                     exc, len(paths))  # fmt: skip
        self._discard(pool)
        reason = f"the compression worker failed: {exc}"
        return [EdgeResult(p, False, reason) for p in paths]

    def stop(self) -> None:
        """End the workers; a compress() call in progress raises RuntimeError."""
        with self._lock:
            self._closed = True
            pool, self._pool = self._pool, None
        if pool is not None:
            pool.shutdown(wait=True, cancel_futures=True)

"""Edge compression in worker processes, so that every core compresses.

CharLS through pydicom's pyjpegls plugin holds the GIL while it encodes, so the uploader's
threads would take turns on one core; here each spooled file is compressed (and its bit-exact
check decoded) in one of ``processes`` spawned workers, niced like the uploader. Only paths go
to a worker and only the re-encoded bytes come back (a file that is not compressed comes back as
its path and goes up streamed from the spool).

A worker that dies (a codec crashing on a modality's malformed pixel data) takes only itself
down: the batch it was part of goes up as it arrived, uncompressed, and the next batch starts a
fresh pool.
"""

from __future__ import annotations

import logging
import multiprocessing
import os
import threading
from concurrent.futures import Future, ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from pathlib import Path

from dicom_codecs.edge import EdgeResult, compress_file_for_upload
from dicom_codecs.upload_compression import UploadCompression

logger = logging.getLogger(__name__)


def _init_worker(nice: int) -> None:
    if nice:
        try:
            os.nice(nice)
        except OSError:
            logger.debug("cannot lower the edge worker's priority", exc_info=True)
    import dicom_codecs.edge  # noqa: F401  (loaded before the first batch needs it)


def _ready() -> int:
    return os.getpid()


class EdgeWorkers:
    """Compresses spooled files for upload with ``codec``, in ``processes`` worker processes
    (0: in the calling thread)."""

    def __init__(self, codec: UploadCompression, processes: int, *, nice: int = 0) -> None:
        self.codec = codec
        self.processes = processes if codec is not UploadCompression.NONE else 0
        self.nice = nice
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
                self._pool = ProcessPoolExecutor(
                    max_workers=self.processes,
                    mp_context=multiprocessing.get_context("spawn"),
                    initializer=_init_worker,
                    initargs=(self.nice,),
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
        for fut in futures:
            try:
                results.append(fut.result())
            except BrokenProcessPool as exc:
                return results + self._as_arrived(pool, paths[len(results) :], [], exc)
        return results

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

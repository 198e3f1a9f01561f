"""Moves spooled instances to the cloud, retrying until they get there.

Workers claim batches of the oldest ready entries, deliver them through an IngestSink
(pacs_gateway.cloud_sink.HttpIngestSink: the cloud's ingest API, viewer_api/ingest_api.py, also
for ``serve``'s own gateway over loopback), and remove an entry from the spool only after the
sink reports it committed (object stored and checksummed, index committed). Transient failures
back off exponentially with full jitter; refused instances move to ``failed/`` with the reason.
"""

from __future__ import annotations

import logging
import os
import random
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from dicom_codecs.edge import EdgeResult
from dicom_codecs.upload_compression import UploadCompression
from image_store.ingest import IngestOutcome, IngestSink, item_size
from pacs_gateway.edge_workers import EdgeWorkers
from pacs_gateway.spool import Spool, SpoolEntry

logger = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class UploaderSettings:
    workers: int = 2
    batch_size: int = 32
    backoff_initial_s: float = 0.2
    backoff_max_s: float = 30.0
    idle_poll_s: float = 1.0
    nice: int = 10
    """Scheduling niceness of the worker threads: accepting from modalities comes first,
    forwarding uses the CPU the SCP leaves (Linux applies it per thread)."""
    compression: UploadCompression = UploadCompression.NONE
    """Lossless re-encoding before upload (dicom_codecs.edge), verified bit-exact."""
    compress_processes: int = 2
    """Worker processes that compress (pacs_gateway.edge_workers); 0: the uploader's threads."""
    yield_s: float = 0.3
    """Acceptance first: while a modality holds an association open and instances keep
    arriving (one within this many seconds), the workers send nothing: the disk is left to
    the SCP, whose every Success waits for an fsync that the cloud's writes (on one machine)
    and the uploader's spool removals would delay. They compress the next batch meanwhile
    (niced). Once no association is open they send at once. 0 uploads alongside."""
    max_defer_s: float = 10.0
    """...but never let the oldest spooled instance wait longer than this for its upload
    (under a load that never pauses, forwarding then runs alongside acceptance)."""


@dataclass(slots=True)
class UploaderCounters:
    uploaded: int = 0
    uploaded_bytes: int = 0
    sent_bytes: int = 0
    """Bytes that went to the cloud for the uploaded instances (after edge compression)."""
    compressed: int = 0
    refused: int = 0
    failures: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock)


OnIdle = Callable[[set[str]], None]
"""Called with the Series Instance UIDs committed since the last call, once the spool is empty."""


class Uploader:
    def __init__(
        self,
        spool: Spool,
        sink: IngestSink,
        hospital: str,
        settings: UploaderSettings = UploaderSettings(),
        *,
        on_idle: OnIdle | None = None,
    ) -> None:
        self.spool = spool
        self.sink = sink
        self.hospital = hospital
        self.settings = settings
        self.counters = UploaderCounters()
        self._on_idle = on_idle
        self._stop = threading.Event()
        self._claim_lock = threading.Lock()
        self._in_flight: set[str] = set()
        self._touched: set[str] = set()
        self._threads: list[threading.Thread] = []
        self.edge = EdgeWorkers(
            settings.compression, settings.compress_processes, nice=settings.nice
        )

    def start(self) -> None:
        self.edge.start()
        for n in range(self.settings.workers):
            t = threading.Thread(target=self._run, name=f"uploader-{n}", daemon=True)
            t.start()
            self._threads.append(t)

    def stop(self, timeout: float = 10.0) -> None:
        self._stop.set()
        self.spool.wake()
        self.edge.stop()
        for t in self._threads:
            t.join(timeout)
        self._threads.clear()

    def _claim(self) -> list[SpoolEntry]:
        with self._claim_lock:
            batch = []
            for e in self.spool.pending(limit=self.settings.batch_size + len(self._in_flight)):
                if e.name not in self._in_flight:
                    batch.append(e)
                    self._in_flight.add(e.name)
                    if len(batch) >= self.settings.batch_size:
                        break
            return batch

    def _release(self, batch: list[SpoolEntry]) -> None:
        with self._claim_lock:
            for e in batch:
                self._in_flight.discard(e.name)

    def upload_batch(self) -> int:
        """Deliver one batch; returns how many entries left the spool. Raises on transient
        failure (the entries stay in the spool). The batch is compressed at once, even while
        modalities are sending (by niced processes, from the page cache), but goes to the cloud
        only once acceptance allows it (:meth:`_acceptance_first`)."""
        self._acceptance_first(until_a_full_batch=True)
        batch = self._claim()
        if not batch:
            return 0
        try:
            started = time.monotonic()
            datas = self._prepare(batch)
            self._acceptance_first()
            if self._stop.is_set():
                return 0  # the entries stay in the spool for the next start
            prepared = time.monotonic()
            outcomes = self.sink.ingest(self.hospital, [d.data for d in datas])
            logger.debug(
                "%d instances prepared in %.3f s, delivered in %.3f s",
                len(batch),
                prepared - started,
                time.monotonic() - prepared,
            )
            self._settle(batch, outcomes, datas)
            return len(batch)
        finally:
            self._release(batch)

    def _prepare(self, batch: list[SpoolEntry]) -> list[EdgeResult]:
        """Each spool file itself, or its bytes re-encoded losslessly when the settings ask
        for it (a large instance always goes as the file, streamed: dicom_codecs.edge); a
        spool entry is never changed (it stays the original until the cloud has the copy)."""
        results = self.edge.compress([e.path for e in batch])
        if self.settings.compression is not UploadCompression.NONE:
            for entry, result in zip(batch, results, strict=True):
                if not result.compressed:
                    logger.debug("%s goes up as it came: %s", entry.name, result.reason)
        return results

    def _settle(
        self, batch: list[SpoolEntry], outcomes: list[IngestOutcome], sent: list[EdgeResult]
    ) -> None:
        done = []
        sent_bytes = compressed = 0
        for entry, outcome, result in zip(batch, outcomes, sent, strict=True):
            if outcome.ok:
                done.append(entry)
                sent_bytes += item_size(result.data)
                compressed += result.compressed
                self._touched.add(outcome.series_uid)
            else:
                self.spool.fail(entry, outcome.reason or "refused by the cloud")
        self.spool.remove(done)
        with self.counters.lock:
            self.counters.uploaded += len(done)
            self.counters.uploaded_bytes += sum(e.size for e in done)
            self.counters.sent_bytes += sent_bytes
            self.counters.compressed += compressed
            self.counters.refused += len(batch) - len(done)

    def _run(self) -> None:
        if self.settings.nice:
            try:
                os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), self.settings.nice)
            except OSError:
                logger.debug("cannot lower the uploader's priority", exc_info=True)
        delay = 0.0
        while not self._stop.is_set():
            try:
                moved = self.upload_batch()
                delay = 0.0
            except Exception:  # the edge of the worker: every failure is retried
                if self._stop.is_set():
                    break  # stopping cancelled the batch's compression: it stays spooled
                with self.counters.lock:
                    self.counters.failures += 1
                delay = min(
                    self.settings.backoff_max_s, max(self.settings.backoff_initial_s, delay * 2)
                )
                sleep = random.uniform(0, delay)  # full jitter
                logger.exception("upload failed; retrying in %.2f s", sleep)
                self._stop.wait(sleep)
                continue
            if moved == 0:
                self._idle()
                self.spool.wait_for_work(self.settings.idle_poll_s)

    def _acceptance_first(self, *, until_a_full_batch: bool = False) -> None:
        """Wait while modalities are sending (see UploaderSettings.yield_s); with
        ``until_a_full_batch``, only until a whole batch is spooled and unclaimed (it may be
        compressed meanwhile: batches stay full)."""
        limit = self.settings.yield_s
        usage = self.spool.usage
        while limit > 0 and not self._stop.is_set() and usage.receiving():
            quiet = usage.quiet_s()
            waited = self.spool.oldest_age_s()
            if quiet >= limit or waited >= self.settings.max_defer_s:
                return
            if until_a_full_batch:
                with self._claim_lock:
                    ready = usage.get()[0] - len(self._in_flight)
                if ready >= self.settings.batch_size:
                    return
            self._stop.wait(min(limit - quiet, self.settings.max_defer_s - waited, 0.02))

    def _idle(self) -> None:
        if self._on_idle is None or not self._touched:
            return
        with self._claim_lock:
            if self._in_flight:
                return
            touched, self._touched = self._touched, set()
        try:
            self._on_idle(touched)
        except Exception:
            logger.exception("idle hook failed")

    def wait_drained(self, timeout: float) -> bool:
        """True once the spool is empty and nothing is in flight (for tests and the demo)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with self._claim_lock:
                busy = bool(self._in_flight)
            if not busy and not self.spool.pending(limit=1):
                return True
            time.sleep(0.05)
        return False

"""Gateway metrics in the Prometheus text exposition format (version 0.0.4)."""

from __future__ import annotations

import multiprocessing
import threading
import time
from dataclasses import dataclass

from pacs_gateway.spool import Spool
from pacs_gateway.uploader import Uploader


@dataclass(frozen=True, slots=True)
class StoreCounts:
    accepted: int
    accepted_bytes: int
    refused_resources: int
    refused_invalid: int


class StoreCounters:
    """What the C-STORE handler did, by outcome; in shared memory, so the API process can
    report what the SCP process counts."""

    def __init__(self) -> None:
        ctx = multiprocessing.get_context("spawn")
        self._values = ctx.RawArray("q", 4)
        self._lock = ctx.Lock()

    def add_accepted(self, size: int) -> None:
        with self._lock:
            self._values[0] += 1
            self._values[1] += size

    def add_refused(self, *, resources: bool) -> None:
        with self._lock:
            self._values[2 if resources else 3] += 1

    def snapshot(self) -> StoreCounts:
        with self._lock:
            return StoreCounts(*(int(v) for v in self._values))


class RateMeter:
    """Instances per second over the interval between two scrapes."""

    def __init__(self) -> None:
        self._last_t = time.monotonic()
        self._last_n = 0
        self._lock = threading.Lock()

    def rate(self, total: int) -> float:
        with self._lock:
            now = time.monotonic()
            dt = now - self._last_t
            r = (total - self._last_n) / dt if dt > 0 else 0.0
            self._last_t, self._last_n = now, total
            return r


def _line(out: list[str], name: str, kind: str, help_: str, value: float, labels: str = "") -> None:
    out.append(f"# HELP {name} {help_}")
    out.append(f"# TYPE {name} {kind}")
    out.append(f"{name}{labels} {value:g}")


def render_metrics(spool: Spool, uploader: Uploader, store: StoreCounters, meter: RateMeter) -> str:
    s = spool.stats()
    u = uploader.counters
    with u.lock:
        uploaded, uploaded_bytes, refused, failures = (
            u.uploaded,
            u.uploaded_bytes,
            u.refused,
            u.failures,
        )
        sent_bytes, compressed = u.sent_bytes, u.compressed
    counts = store.snapshot()
    accepted, accepted_bytes = counts.accepted, counts.accepted_bytes
    refused_res, refused_inv = counts.refused_resources, counts.refused_invalid
    out: list[str] = []
    _line(
        out,
        "cloudfilm_spool_depth",
        "gauge",
        "Instances in the spool, not yet in the cloud.",
        s.depth,
    )
    _line(out, "cloudfilm_spool_bytes", "gauge", "Bytes in the spool.", s.bytes)
    _line(
        out,
        "cloudfilm_spool_oldest_pending_seconds",
        "gauge",
        "Age of the oldest instance waiting for upload.",
        s.oldest_age_s,
    )
    _line(
        out,
        "cloudfilm_spool_failed",
        "gauge",
        "Instances the cloud refused permanently (spool/failed).",
        s.failed,
    )
    _line(
        out,
        "cloudfilm_store_accepted_total",
        "counter",
        "C-STORE requests answered Success.",
        accepted,
    )
    _line(
        out,
        "cloudfilm_store_accepted_bytes_total",
        "counter",
        "Bytes of instances answered Success.",
        accepted_bytes,
    )
    out.append("# HELP cloudfilm_store_refused_total C-STORE requests refused, by reason.")
    out.append("# TYPE cloudfilm_store_refused_total counter")
    out.append(f'cloudfilm_store_refused_total{{reason="out_of_resources"}} {refused_res}')
    out.append(f'cloudfilm_store_refused_total{{reason="invalid"}} {refused_inv}')
    _line(
        out,
        "cloudfilm_store_instances_per_second",
        "gauge",
        "C-STORE Success rate since the previous scrape.",
        meter.rate(accepted),
    )
    _line(
        out,
        "cloudfilm_upload_instances_total",
        "counter",
        "Instances committed in the cloud.",
        uploaded,
    )
    _line(
        out,
        "cloudfilm_upload_bytes_total",
        "counter",
        "Bytes committed in the cloud.",
        uploaded_bytes,
    )
    _line(
        out,
        "cloudfilm_upload_sent_bytes_total",
        "counter",
        "Bytes sent to the cloud for the committed instances (after lossless compression).",
        sent_bytes,
    )
    _line(
        out,
        "cloudfilm_upload_compressed_total",
        "counter",
        "Committed instances that went up re-encoded losslessly (checked bit-exact).",
        compressed,
    )
    _line(
        out,
        "cloudfilm_upload_refused_total",
        "counter",
        "Instances the cloud refused permanently.",
        refused,
    )
    _line(
        out,
        "cloudfilm_upload_failures_total",
        "counter",
        "Upload batches that failed and were retried.",
        failures,
    )
    return "\n".join(out) + "\n"

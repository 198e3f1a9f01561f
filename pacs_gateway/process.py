"""The DICOM side of the gateway in its own process.

A C-STORE association is one thread of Python work; sharing a process with the uploader (which
parses headers, hashes and indexes) halves its rate through the GIL. So the SCP runs in a
child process with nothing else to do, and shares with the parent only what must be shared:
the spool directory, its usage counters and the C-STORE counters (both in shared memory).
"""

from __future__ import annotations

import logging
import multiprocessing
import os
import signal
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from multiprocessing.connection import Connection
from pathlib import Path
from types import FrameType
from typing import Any

from image_store.ports import Index, ObjectStore
from pacs_gateway.metrics import StoreCounters
from pacs_gateway.qr import QrSettings
from pacs_gateway.scp import QrContext, ScpSettings, start_scp
from pacs_gateway.spool import Spool, SpoolUsage

logger = logging.getLogger(__name__)

_ABORT_WAIT_S = 3.0
"""How long a stopping gateway waits for its aborted associations to close their sockets."""


@dataclass(frozen=True, slots=True)
class GatewaySpec:
    scp: ScpSettings
    spool_dir: Path
    high_water_bytes: int
    min_free_bytes: int
    fsync: bool
    log_level: int = logging.INFO
    journal_bytes: int = 0
    """Each SCP process's spool journal (see Spool); 0: plain fsyncs."""
    qr: QrSettings | None = None
    index_factory: Callable[[], Index] | None = None
    store_factory: Callable[[], ObjectStore] | None = None
    """Where Query/Retrieve reads: the cloud's index and object store (picklable factories,
    opened in the child)."""


def _serve(spec: GatewaySpec, usage: SpoolUsage, counters: StoreCounters, conn: Connection) -> None:
    """The child: start the SCP, report its port, serve until SIGTERM or SIGINT."""
    logging.basicConfig(
        level=spec.log_level, format="%(asctime)s %(levelname)s %(name)s[gateway]: %(message)s"
    )
    logging.getLogger("pynetdicom").setLevel(max(spec.log_level, logging.WARNING))
    stop = threading.Event()

    def on_signal(signum: int, frame: FrameType | None) -> None:
        stop.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    parent = os.getppid()

    def watch_parent() -> None:
        # a parent killed with SIGKILL cannot stop us: notice it and stop serving
        while not stop.wait(0.5):
            if os.getppid() != parent:
                logger.warning("parent process is gone; the gateway stops")
                stop.set()

    threading.Thread(target=watch_parent, name="parent-watch", daemon=True).start()
    spool = Spool(
        spec.spool_dir,
        high_water_bytes=spec.high_water_bytes,
        min_free_bytes=spec.min_free_bytes,
        fsync=spec.fsync,
        usage=usage,
        journal_bytes=spec.journal_bytes,
    )
    qr = None
    if spec.qr is not None and spec.index_factory is not None and spec.store_factory is not None:
        qr = QrContext(spec.index_factory(), spec.store_factory(), spec.qr)
    try:
        server = start_scp(spec.scp, spool, counters, qr)
    except OSError as exc:
        conn.send(("error", f"cannot listen on {spec.scp.host}:{spec.scp.port}: {exc}"))
        conn.close()
        return
    conn.send(("ready", int(server.server_address[1])))
    conn.close()
    stop.wait()
    server.shutdown()
    # associations still open end with an A-ABORT: their peers resend whatever was not
    # answered with Success (all of that, answered or not, is durable or gone)
    open_assocs = server.active_associations
    for assoc in open_assocs:
        assoc.abort(block=False)
    deadline = time.monotonic() + _ABORT_WAIT_S
    for assoc in open_assocs:
        assoc.join(max(0.0, deadline - time.monotonic()))
    spool.close()  # checkpoint: the journal is not needed after a clean stop


class GatewayProcess:
    """``workers`` SCP processes accepting on one port (SO_REUSEPORT): one association is one
    thread of Python, so parallel associations need processes to use more than one core."""

    def __init__(
        self, spec: GatewaySpec, usage: SpoolUsage, counters: StoreCounters, workers: int = 1
    ) -> None:
        if workers < 1:
            raise ValueError(f"workers must be at least 1, got {workers}")
        self.spec = spec
        self.usage = usage
        self.counters = counters
        self.workers = workers
        self._procs: list[Any] = []
        self.port = 0

    @property
    def pids(self) -> list[int]:
        return [int(p.pid) for p in self._procs]

    def start(self, timeout: float = 60.0) -> int:
        """Start the children; returns the DICOM port once all listen (OSError if one cannot)."""
        spec = self.spec
        for _ in range(self.workers):
            port = self._start_one(spec, timeout)
            if self.port == 0:
                self.port = port
                spec = replace(spec, scp=replace(spec.scp, port=port))  # the others join it
        return self.port

    def _start_one(self, spec: GatewaySpec, timeout: float) -> int:
        ctx = multiprocessing.get_context("spawn")
        parent, child = ctx.Pipe(duplex=False)
        proc = ctx.Process(
            target=_serve,
            args=(spec, self.usage, self.counters, child),
            name=f"cloudfilm-gateway-{len(self._procs)}",
            daemon=True,
        )
        proc.start()
        self._procs.append(proc)
        child.close()
        if not parent.poll(timeout):
            self.stop()
            raise OSError("the gateway process did not start in time")
        kind, value = parent.recv()
        parent.close()
        if kind != "ready":
            self.stop()
            raise OSError(str(value))
        return int(value)

    @property
    def alive(self) -> bool:
        return bool(self._procs) and all(p.is_alive() for p in self._procs)

    def stop(self, timeout: float = 20.0) -> None:
        for proc in self._procs:
            if proc.is_alive():
                proc.terminate()
        for proc in self._procs:
            proc.join(timeout)
            if proc.is_alive():
                logger.error("gateway process %s did not stop; killing it", proc.pid)
                proc.kill()
                proc.join(5)
        self._procs.clear()

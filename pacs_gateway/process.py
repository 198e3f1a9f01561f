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
from pacs_gateway.priors import PriorsSource
from pacs_gateway.qr import AuditLog, QrSettings
from pacs_gateway.scp import QrContext, ScpSettings, start_scp
from pacs_gateway.spool import Spool, SpoolUsage

logger = logging.getLogger(__name__)

_ABORT_WAIT_S = 2.0
"""How long a stopping gateway waits for its aborted associations to close their sockets."""
STOP_TIMEOUT_S = 5.0
"""How long :meth:`GatewayProcess.stop` waits for all its processes before killing them."""


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
    audit_factory: Callable[[], AuditLog] | None = None
    """The audit log Query/Retrieve appends to (a picklable factory, opened in the child)."""
    priors_factory: Callable[[], PriorsSource] | None = None
    """Where Q/R reads when set (e.g. the cloud over HTTP, opened in each SCP process);
    otherwise the index and store factories."""


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
    if spec.qr is not None:
        audit = spec.audit_factory() if spec.audit_factory is not None else None
        if spec.priors_factory is not None:
            qr = QrContext(None, None, spec.qr, audit, source=spec.priors_factory())
        elif spec.index_factory is not None and spec.store_factory is not None:
            qr = QrContext(spec.index_factory(), spec.store_factory(), spec.qr, audit)
    try:
        server = start_scp(spec.scp, spool, counters, qr)
    except OSError as exc:
        conn.send(("error", f"cannot listen on {spec.scp.host}:{spec.scp.port}: {exc}"))
        conn.close()
        return
    conn.send(("ready", int(server.server_address[1])))
    conn.close()
    stop.wait()
    _stop_serving(server)
    spool.close()  # checkpoint: the journal is not needed after a clean stop
    _exit_now_if_held()


def _stop_serving(server: Any) -> None:
    """Stop accepting, then end every open connection within ``_ABORT_WAIT_S``: associations
    with an A-ABORT (their peers resend whatever was not answered with Success; all of that,
    answered or not, is durable or gone); connections that never associated are not waited
    for (an A-ABORT is not a valid event before the A-ASSOCIATE-RQ: their reactors are told to
    end, and being daemon threads they do not hold the process)."""
    server.shutdown()
    established = []
    for assoc in list(server.active_associations):
        try:
            if assoc.is_established:
                assoc.abort(block=False)
                established.append(assoc)
            else:  # nothing to tell the peer: its reactor just ends (daemon threads)
                assoc.dul.kill_dul()
        except Exception:  # the edge of the stop: a connection ending on its own meanwhile
            logger.debug("ending an association at stop failed", exc_info=True)
    deadline = time.monotonic() + _ABORT_WAIT_S
    for assoc in established:
        assoc.join(max(0.0, deadline - time.monotonic()))
    late = [a for a in established if a.is_alive()]
    if late:
        logger.warning("%d association(s) still open at stop; the process exits anyway", len(late))


def _exit_now_if_held() -> None:
    """Exit at once if a thread that is not a daemon is still running (an association's
    sub-association for C-MOVE, an executor's worker), which would otherwise keep the process
    alive at interpreter exit. Safe: the spool is closed and nothing acknowledged is pending."""
    main = threading.main_thread()
    held = [t for t in threading.enumerate() if t is not main and not t.daemon and t.is_alive()]
    if held:
        logger.warning("exiting past %d running thread(s): %s", len(held), [t.name for t in held])
        logging.shutdown()
        os._exit(0)


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

    def stop(self, timeout: float = STOP_TIMEOUT_S) -> None:
        """SIGTERM every process at once, wait ``timeout`` in all for them to end (each needs
        ~``_ABORT_WAIT_S`` at most), then SIGKILL whatever is left: acknowledged instances are
        durable before Success, so a kill loses nothing."""
        for proc in self._procs:
            if proc.is_alive():
                proc.terminate()
        deadline = time.monotonic() + timeout
        for proc in self._procs:
            proc.join(max(0.0, deadline - time.monotonic()))
        for proc in self._procs:
            if proc.is_alive():
                logger.error("gateway process %s did not stop; killing it", proc.pid)
                proc.kill()
                proc.join(2)
        self._procs.clear()

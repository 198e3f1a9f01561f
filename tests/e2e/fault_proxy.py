"""A TCP proxy between a gateway and the cloud whose behaviour a test switches at run time.

Modes (they apply to connections already open as well as to new ones):

- ``passing()``: bytes flow both ways unchanged;
- ``drop(after_bytes)``: once more than ``after_bytes`` bytes have come from the client while
  dropping, the connection is cut: the cloud gets the first ``after_bytes`` and then the end
  of the stream (a body cut short), the client gets a reset (RST);
- ``lose_answers()``: requests reach the cloud whole, but a connection is reset as soon as
  the cloud starts answering: the cloud did the work, the client never hears of it;
- ``stall(seconds)``: nothing is forwarded either way; a connection held that long is reset,
  one still held when the mode goes back to passing resumes (``None``: hold until then).

The proxy listens on 127.0.0.1 before it knows its upstream (``upstream`` may be set later:
a cloud can be started with the proxy's URL as its public address). One thread per
connection, ``select`` over both sockets, so a reset never races a blocked ``recv``.
"""

from __future__ import annotations

import contextlib
import select
import socket
import struct
import threading
import time
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Mode:
    kind: str  # "pass" | "drop" | "lose" | "stall"
    after_bytes: int = 0
    seconds: float | None = None


@dataclass(slots=True)
class ProxyCounts:
    connections: int = 0
    dropped: int = 0
    """Connections reset mid-request by ``drop``."""
    stalled: int = 0
    """Connections held by ``stall`` (each counted once per stall)."""
    stall_resets: int = 0
    """Held connections reset when their stall ran out."""
    lost_answers: int = 0
    """Connections reset by ``lose_answers`` as the cloud's answer began."""
    forwarded_bytes: int = 0


_TICK_S = 0.05


class FaultProxy:
    """Listens on 127.0.0.1 (``url``) and forwards to ``upstream`` in the current mode."""

    def __init__(self, upstream: tuple[str, int] | None = None) -> None:
        self.upstream = upstream
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port = int(self._listener.getsockname()[1])
        self.url = f"http://127.0.0.1:{self.port}"
        self._mode = Mode("pass")
        self._lock = threading.Lock()
        self._closed = threading.Event()
        self.counts = ProxyCounts()
        self._threads: list[threading.Thread] = []
        self._accepter = threading.Thread(target=self._accept, name="fault-proxy", daemon=True)
        self._accepter.start()

    # -- control -----------------------------------------------------------------------------

    @property
    def mode(self) -> Mode:
        with self._lock:
            return self._mode

    def passing(self) -> None:
        self._set(Mode("pass"))

    def drop(self, after_bytes: int) -> None:
        self._set(Mode("drop", after_bytes=after_bytes))

    def lose_answers(self) -> None:
        self._set(Mode("lose"))

    def stall(self, seconds: float | None) -> None:
        self._set(Mode("stall", seconds=seconds))

    def _set(self, mode: Mode) -> None:
        with self._lock:
            self._mode = mode

    def _count(self, **deltas: int) -> None:
        with self._lock:
            for name, delta in deltas.items():
                setattr(self.counts, name, getattr(self.counts, name) + delta)

    def snapshot(self) -> ProxyCounts:
        with self._lock:
            return ProxyCounts(**{k: getattr(self.counts, k) for k in ProxyCounts.__slots__})

    def close(self) -> None:
        self._closed.set()
        self._listener.close()
        self._accepter.join(5)
        for t in self._threads:
            t.join(5)

    # -- forwarding --------------------------------------------------------------------------

    def _accept(self) -> None:
        self._listener.settimeout(_TICK_S)
        while not self._closed.is_set():
            try:
                client, _ = self._listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            self._count(connections=1)
            t = threading.Thread(target=self._serve, args=(client,), daemon=True)
            t.start()
            self._threads = [x for x in self._threads if x.is_alive()] + [t]

    def _serve(self, client: socket.socket) -> None:
        upstream: socket.socket | None = None
        try:
            if self.upstream is None:
                raise ConnectionRefusedError("the proxy has no upstream yet")
            upstream = socket.create_connection(self.upstream, timeout=5)
            self._pump(client, upstream)
        except OSError:
            pass
        finally:
            for s in (client, upstream):
                if s is not None:
                    s.close()

    def _pump(self, client: socket.socket, upstream: socket.socket) -> None:
        """Forward until either side closes, the proxy closes or a fault resets both."""
        held_since: float | None = None
        dropping = 0
        while not self._closed.is_set():
            mode = self.mode
            if mode.kind == "stall":
                now = time.monotonic()
                if held_since is None:
                    held_since = now
                    self._count(stalled=1)
                if mode.seconds is not None and now - held_since >= mode.seconds:
                    self._count(stall_resets=1)
                    _reset(client, upstream)
                    return
                self._closed.wait(_TICK_S)
                continue
            held_since = None
            if mode.kind != "drop":
                dropping = 0
            readable, _, _ = select.select([client, upstream], [], [], _TICK_S)
            for src in readable:
                data = src.recv(1 << 16)
                if not data:
                    return
                if src is client:
                    if mode.kind == "drop":
                        room = mode.after_bytes - dropping
                        if len(data) > room:
                            upstream.sendall(data[: max(room, 0)])
                            upstream.shutdown(socket.SHUT_WR)
                            self._count(dropped=1)
                            _reset(client)
                            return
                        dropping += len(data)
                    upstream.sendall(data)
                elif mode.kind == "lose":
                    self._count(lost_answers=1)
                    _reset(client, upstream)
                    return
                else:
                    client.sendall(data)
                self._count(forwarded_bytes=len(data))


def _reset(*socks: socket.socket) -> None:
    """Close with SO_LINGER 0: the peer sees a connection reset, not an orderly end."""
    for s in socks:
        with contextlib.suppress(OSError):
            s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))

"""Fixes for three defects of pynetdicom 3.0.4 that every association of ours can meet.

**A lost DIMSE response.** An association's ``send_*()`` methods pause its reactor thread
before sending a request and then wait on the DIMSE message queue for the response. The pause
is a handshake on two fields: the sender clears ``_reactor_checkpoint`` and spins until
``_is_paused`` is true. The reactor sets ``_is_paused`` just before it waits on the checkpoint
and clears it just after, so a sender can see the flag set while the reactor has already passed
an open checkpoint. The reactor then takes the response off the queue itself, finds it is not a
request, logs "Received unexpected C-STORE service message" and drops it; the sender waits out
the DIMSE timeout and aborts the association (pynetdicom issues 850 and 875 report the symptom).
A busy machine widens the window: the demo's C-STOREs to two gateways at once met it. The fix
wraps ``Association._serve_request``: a message that is not a request, taken while the
checkpoint is closed (a ``send_*()`` is waiting for exactly this), goes back to the front of the
queue, where the waiting sender gets it. Anything else is served as before.

**A leaked socket.** ``AssociationSocket._shutdown_socket`` calls ``shutdown()`` and then
``close()`` in one ``try``: when the peer has already reset the connection, ``shutdown()``
raises (ENOTCONN) and the socket is never closed, so its descriptor stays open until the garbage
collector finds the association (a gateway whose C-MOVE destinations drop connections would
collect them). The fix always closes it.

**Descriptors above 1023.** ``AssociationSocket.ready`` asks ``select.select`` whether the socket
has bytes; ``select`` cannot watch a descriptor numbered 1024 or more (ValueError), which
pynetdicom takes for a closed connection: in a process with that many files open every new
association is aborted while it negotiates. The fix asks ``poll``, which has no such bound.

``install()`` puts all three in place for the process; the modules that run associations
(``pacs_gateway.scu``, ``pacs_gateway.scp``) call it when imported.
"""

from __future__ import annotations

import contextlib
import select
import socket
import ssl
from typing import Any

from pynetdicom.association import Association
from pynetdicom.transport import AssociationSocket

_SERVE_REQUEST = Association._serve_request
_SHUTDOWN_SOCKET = AssociationSocket._shutdown_socket
_READY: property = AssociationSocket.__dict__["ready"]


def readable(fd: Any, timeout_s: float = 0) -> bool | None:
    """Whether ``fd`` (a descriptor or an object with ``fileno()``) has bytes to read, or its
    peer hung up, within ``timeout_s``; None when it is closed or invalid. Unlike
    ``select.select`` it takes descriptors of any number."""
    poller = select.poll()
    try:
        if (fd if isinstance(fd, int) else fd.fileno()) < 0:
            return None
        poller.register(fd, select.POLLIN)
        events = poller.poll(timeout_s * 1000)
    except (OSError, ValueError):
        return None
    if any(mask & select.POLLNVAL for _, mask in events):
        return None
    return bool(events)


def _serve_request(self: Association, msg: Any, context_id: int) -> None:
    if not msg.is_valid_request and not self._reactor_checkpoint.is_set():
        queue = self.dimse.msg_queue
        with queue.mutex:
            queue.queue.appendleft((context_id, msg))
            queue.unfinished_tasks += 1
            queue.not_empty.notify()
        return
    _SERVE_REQUEST(self, msg, context_id)


def _shutdown_socket(self: AssociationSocket) -> None:
    sock = self.socket
    if sock is None:
        return
    try:
        with contextlib.suppress(OSError):
            sock.shutdown(socket.SHUT_RDWR)
    finally:
        sock.close()


def _ready(self: AssociationSocket) -> bool:
    sock = self.socket
    if sock is None or self._is_connected is False:
        return False
    ready = readable(sock)
    if ready is None:
        self.event_queue.put("Evt17")  # transport connection closed
        return False
    # an SSLSocket may hold decrypted bytes that poll cannot see (pynetdicom issue 528)
    return ready or (isinstance(sock, ssl.SSLSocket) and bool(sock.pending()))


_READY_PROPERTY = property(_ready, doc=_READY.__doc__)


def install() -> None:
    """Puts the fixes in place for every association of this process (idempotent)."""
    Association._serve_request = _serve_request  # type: ignore[method-assign]
    AssociationSocket._shutdown_socket = _shutdown_socket  # type: ignore[method-assign]
    AssociationSocket.ready = _READY_PROPERTY  # type: ignore[assignment,method-assign]


def installed() -> bool:
    return (
        Association._serve_request is _serve_request
        and AssociationSocket._shutdown_socket is _shutdown_socket
        and AssociationSocket.__dict__["ready"] is _READY_PROPERTY
    )


def uninstall() -> None:
    """Restores pynetdicom's own methods (for the tests that show the defects)."""
    Association._serve_request = _SERVE_REQUEST  # type: ignore[method-assign]
    AssociationSocket._shutdown_socket = _SHUTDOWN_SOCKET  # type: ignore[method-assign]
    AssociationSocket.ready = _READY  # type: ignore[method-assign,assignment]

"""Event-driven reactors for pynetdicom's acceptor associations.

pynetdicom 3.0.4 polls: its DUL thread sleeps 1 ms whenever the socket has nothing to read,
and the association thread sleeps 1 ms before each look at its message queue, so every
message waits for the next poll; and it reads PDUs 4 KiB at a time.

These subclasses keep pynetdicom's state machine, PDU handling and DIMSE code, and change only
how the two threads wait: the DUL blocks in ``select`` on the socket and a wake-up eventfd
(signalled whenever the association queues a PDU to send or asks the DUL to stop), and the
association blocks on its DIMSE message queue. Nothing waits longer than it must, and an idle
association costs no CPU. The server's request handler swaps them (and a socket
that reads whole PDUs) in for each accepted association before its threads start.

The DUL also gives the P-DATA-TF PDUs of C-STORE requests to a
:class:`pacs_gateway.fast_store.StoreReceiver` when the server has one (see there why).
"""

from __future__ import annotations

import contextlib
import logging
import os
import queue
import select
import struct
import time
from collections.abc import Callable
from typing import Any

from pynetdicom import evt
from pynetdicom.acse import ACSE
from pynetdicom.association import Association
from pynetdicom.dul import DULServiceProvider
from pynetdicom.pdu import A_ABORT_RQ
from pynetdicom.transport import AssociationSocket, RequestHandler
from pynetdicom.utils import make_target

from pacs_gateway import pynetdicom_fixes
from pacs_gateway.access import QR_SOP_CLASSES, AccessPolicy, Rights, decide
from pacs_gateway.fast_store import ProtocolError, StoreReceiver

logger = logging.getLogger(__name__)

_IDLE_WAIT_S = 0.005
"""Longest a reactor blocks before re-checking its timers (ARTIM, network idle)."""


ReceiverFactory = Callable[[Any, Callable[[bytes], None]], StoreReceiver]
"""Builds an association's C-STORE receiver from the association and a function that sends
bytes to the peer."""


class EventDrivenDUL(DULServiceProvider):
    def __init__(self, assoc: Any) -> None:
        super().__init__(assoc)
        self._wake_fd = os.eventfd(0, os.EFD_NONBLOCK | os.EFD_CLOEXEC)
        self.receiver: StoreReceiver | None = None
        # pynetdicom's DUL threads are not daemons: a process told to stop would wait at exit
        # for every open association to end (the peer's release, or the network timeout)
        self.daemon = True

    def _wake(self) -> None:
        with contextlib.suppress(OSError):  # closed: the reactor has ended
            os.eventfd_write(self._wake_fd, 1)

    def send_pdu(self, primitive: Any) -> None:
        super().send_pdu(primitive)
        self._wake()

    def kill_dul(self) -> None:
        super().kill_dul()
        self._wake()

    def _wait_for_work(self) -> None:
        """Block until the peer sent data, the association queued a primitive, or the timer
        granularity passed."""
        if self.to_provider_queue.qsize() or self._kill_thread:
            return
        sock = self.socket
        raw = getattr(sock, "socket", None) if sock is not None else None
        if sock is None or raw is None or raw.fileno() < 0:
            self._kill_wait()
            return
        if sock.ready:  # includes TLS bytes already decrypted and buffered
            return
        # poll, not select: a gateway process may hold descriptors numbered over 1023
        poller = select.poll()
        try:
            poller.register(raw, select.POLLIN)
            poller.register(self._wake_fd, select.POLLIN)
            ready = poller.poll(_IDLE_WAIT_S * 1000)
        except (OSError, ValueError):
            return  # the socket closed under us: the next transport check reports it
        if any(fd == self._wake_fd for fd, _ in ready):
            with contextlib.suppress(OSError):
                os.eventfd_read(self._wake_fd)

    def _kill_wait(self) -> None:
        if pynetdicom_fixes.readable(self._wake_fd, _IDLE_WAIT_S):
            with contextlib.suppress(OSError):
                os.eventfd_read(self._wake_fd)

    def run_reactor(self) -> None:
        try:
            self._reactor_loop()
        finally:
            os.close(self._wake_fd)
            if self.receiver is not None:
                self.receiver.close()

    def _read_pdu_data(self) -> None:
        """pynetdicom's PDU read, except that the P-DATA-TF PDUs of C-STORE requests go to the
        receiver (in the established state, Sta6) instead of becoming PDU objects and events."""
        receiver = self.receiver
        sock = self.socket
        if receiver is None or sock is None or self.state_machine.current_state != "Sta6":
            super()._read_pdu_data()
            return
        try:
            header = sock.recv(6)
            if len(header) != 6:
                raise EOFError(f"{len(header)} of 6 PDU header bytes")
            pdu_type, _, length = struct.unpack(">BBL", header)
            if pdu_type not in (0x01, 0x02, 0x03, 0x04, 0x05, 0x06, 0x07):
                logger.error("unknown PDU type 0x%02X received", pdu_type)
                self.event_queue.put("Evt19")  # unrecognised PDU: A-ABORT
                return
            body = sock.recv(length)
            if len(body) != length:
                raise EOFError(f"{len(body)} of {length} PDU bytes")
        except (OSError, EOFError) as exc:
            logger.error("connection closed before the entire PDU was received: %s", exc)
            self.event_queue.put("Evt17")  # transport closed
            return
        if pdu_type == 0x04:
            try:
                if receiver.take(memoryview(body)):
                    return
            except ProtocolError as exc:
                logger.error("C-STORE from %s: %s; aborting", self.assoc.requestor.ae_title, exc)
                receiver.close()
                self.event_queue.put("Evt19")
                return
        try:
            pdu, event = self._decode_pdu(header + body)
        except Exception:
            logger.exception("unable to decode the received PDU")
            self.event_queue.put("Evt19")
            return
        self.event_queue.put(event)
        self._recv_pdu.put(pdu)

    def _reactor_loop(self) -> None:
        self._idle_timer.start()
        idle = False
        while True:
            if not self.assoc._dul_ready.is_set():
                self.assoc._dul_ready.set()
                idle = True
            if idle:
                self._wait_for_work()
            if self._kill_thread:
                return
            if self.artim_timer.expired:
                self.event_queue.put("Evt18")
            try:
                if not self._process_recv_primitive() and self._is_transport_event():
                    self._idle_timer.restart()
            except Exception:
                logger.exception("DUL reactor failed; aborting the association")
                self._abort_now()
                return
            try:
                event = self.event_queue.get(block=False)
            except queue.Empty:
                idle = True
                continue
            self.state_machine.do_action(event)
            idle = False

    def _abort_now(self) -> None:
        pdu = A_ABORT_RQ()
        pdu.source = 0x02
        pdu.reason_diagnostic = 0x00
        try:
            if self.socket is not None:
                self.socket.send(pdu.encode())
        except Exception:
            logger.debug("could not send A-ABORT", exc_info=True)
        self.assoc.is_aborted = True
        self.assoc.is_established = False
        self.assoc._kill = True
        self._kill_thread = True


class GatewayACSE(ACSE):
    """pynetdicom's ACSE, with the gateway's access policy (:mod:`pacs_gateway.access`)
    decided first: the called and calling AE titles, the calling AE's host, the association
    limits (counting established associations only, so connections that never associate
    cannot lock modalities out). An AE without the query right is offered no Query/Retrieve
    context; its rights are kept on the association for the handlers."""

    def _negotiate_as_acceptor(self) -> None:
        assoc: Any = self.assoc
        server: Any = assoc._server
        policy: AccessPolicy | None = getattr(server, "policy", None)
        if policy is None:
            assoc.rights = Rights.BOTH
            super()._negotiate_as_acceptor()
            return
        rq: Any = self.requestor.primitive
        host = str(self.requestor.address)
        others = [a for a in server.active_associations if a is not assoc and a.is_established]
        decision = decide(
            policy,
            str(rq.calling_ae_title),
            str(rq.called_ae_title),
            host,
            len(others),
            sum(1 for a in others if str(a.requestor.address) == host),
        )
        assoc.rights = decision.rights
        if decision.reject is not None:
            logger.warning(
                "association from %s (%s) rejected: %s",
                str(rq.calling_ae_title).strip()[:16],
                host,
                decision.reason,
            )
            self.requestor.ae_title = rq.calling_ae_title
            self.send_reject(*decision.reject.value)
            evt.trigger(assoc, evt.EVT_REJECTED, {})
            assoc.kill()
            return
        if Rights.QUERY not in decision.rights:
            self.acceptor.supported_contexts = [
                cx
                for cx in self.acceptor.supported_contexts
                if str(cx.abstract_syntax) not in QR_SOP_CLASSES
            ]
        super()._negotiate_as_acceptor()


def may(assoc: Any, right: Rights) -> bool:
    """True when the association's calling AE was granted ``right``."""
    rights: Rights = getattr(assoc, "rights", Rights.NONE)
    return right in rights


class EventDrivenAssociation(Association):
    """An acceptor association whose reactor blocks on its DIMSE queue instead of polling,
    and that ends as soon as its peer closes a connection that never associated (pynetdicom
    waits out the whole ACSE timeout, holding the thread and its slot)."""

    rights: Rights = Rights.NONE

    def run_reactor(self) -> None:
        try:
            if not self.is_acceptor:
                super().run_reactor()
                return
            if not self._started_dul:
                self.dul.start()
                self._started_dul = True
                self._dul_ready.wait()
            primitive = self._wait_for_request()
            if primitive is None:  # timed out, or the peer closed first
                self.kill()
                self._shutdown_socket()
                return
            self.requestor.primitive = primitive
            evt.trigger(self, evt.EVT_REQUESTED, {})
            if not self.is_aborted and not self.is_rejected:
                self.acse.negotiate_association()
            if self.is_established:
                self._run_reactor()
            self._shutdown_socket()
        finally:
            release = getattr(self._server, "release_host", None)
            if release is not None:
                release(str(self.requestor.address))

    def _wait_for_request(self) -> Any:
        """The A-ASSOCIATE-RQ primitive; None after the ACSE timeout or once the DUL ended."""
        timeout = self.acse_timeout
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            primitive = self.dul.receive_pdu(wait=True, timeout=_IDLE_WAIT_S * 10)
            if primitive is not None:
                return primitive
            if not self.dul.is_alive() and self.dul.to_user_queue.empty():
                return None
            if deadline is not None and time.monotonic() >= deadline:
                return None

    def _shutdown_socket(self) -> None:
        sock = self.dul.socket
        if self._server and sock is not None and sock.socket:
            self._server.shutdown_request(sock.socket)

    def _run_reactor(self) -> None:
        self._is_paused = False
        while not self._kill:
            # let send_*() callers pause the reactor before it takes their reply off the queue
            self._is_paused = True
            self._reactor_checkpoint.wait()
            self._is_paused = False
            try:
                context_id, msg = self.dimse.msg_queue.get(timeout=_IDLE_WAIT_S)
            except queue.Empty:
                msg = None
            if msg is not None and context_id is not None:
                self._serve_request(msg, context_id)
            if self._finished():
                return

    def _finished(self) -> bool:
        """Handle release, abort, a dead DUL and the network timeout; True when done."""
        if self.is_established and self.acse.is_release_requested():
            self.acse.send_release(is_response=True)
            self.is_released = True
            self.is_established = False
            self._trigger("EVT_RELEASED")
            self.kill()
            return True
        if self.acse.is_aborted():
            self.dul.receive_pdu(wait=False)  # lets EVT_ACSE_RECV fire for the abort
            self.is_aborted = True
            self.is_established = False
            self._trigger("EVT_ABORTED")
            self.kill()
            return True
        if not self.dul.is_alive():
            self.kill()
            return True
        if self.dul.idle_timer_expired():
            logger.error("network timeout reached on association with %s", self.requestor.ae_title)
            if self.network_timeout_response == "A-RELEASE":
                self.release()
            else:
                self.abort()
            self.kill()
            return True
        return False

    def _trigger(self, name: str) -> None:
        from pynetdicom import evt

        evt.trigger(self, getattr(evt, name), {})


class LargeReadSocket(AssociationSocket):
    """Reads a PDU with as few ``recv`` calls as the kernel allows, straight into one buffer.

    pynetdicom reads at most 4096 bytes per call and extends a bytearray each time: about 130
    system calls and as many copies for a 512 KiB CT slice.
    """

    def recv(self, nr_bytes: int) -> bytearray:
        """Up to ``nr_bytes`` (fewer only when the peer closed)."""
        raw = self.socket
        if raw is None:
            return bytearray()
        buf = bytearray(nr_bytes)
        view = memoryview(buf)
        got = 0
        try:
            while got < nr_bytes:
                n = raw.recv_into(view[got:], nr_bytes - got)
                if n == 0:  # the peer closed: return what arrived, as pynetdicom does
                    break
                got += n
        finally:
            view.release()
        if got < nr_bytes:
            del buf[got:]
        return buf


class EventDrivenRequestHandler(RequestHandler):
    """Builds pynetdicom's acceptor association, then swaps in the event-driven reactors
    (before either thread starts)."""

    def handle(self) -> None:
        try:
            super().handle()
        except BaseException:
            # the association never ran: give back the host's connection slot here
            release = getattr(self.server, "release_host", None)
            if release is not None:
                release(str(self.client_address[0]))
            raise

    def _create_association(self) -> Any:
        assoc = super()._create_association()
        old = assoc.dul
        assoc.__class__ = EventDrivenAssociation
        # the thread's target was bound to pynetdicom's run_reactor before the class swap
        target = make_target(assoc.run_reactor)
        assoc._target = target  # type: ignore[attr-defined]
        assoc.acse.__class__ = GatewayACSE
        new = EventDrivenDUL(assoc)
        # carry over what was already set up: the socket, its "connection open" event (Evt5)
        # and the ARTIM / network timers configured from the AE
        sock = old.socket
        assert sock is not None  # pynetdicom sets it when it builds the association
        sock.__class__ = LargeReadSocket
        new.socket = sock
        new.event_queue = old.event_queue
        new.artim_timer = old.artim_timer
        new._idle_timer = old._idle_timer
        assoc.dul = new
        factory: ReceiverFactory | None = getattr(self.server, "store_receiver", None)
        if factory is not None:
            new.receiver = factory(assoc, sock.send)
        return assoc

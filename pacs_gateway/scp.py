"""The gateway's DICOM side: a pynetdicom Storage SCP that spools before it answers Success.

The handler never decodes the dataset: it writes the bytes as received behind a File Meta
header (which records the calling AE title) and returns the DIMSE status. Errors become
statuses here, at the edge: out of spool or disk space is 0xA700, so the modality retries;
a calling AE without the store right gets 0x0124 (Refused: Not Authorized).

Who may connect and associate is the access policy (:mod:`pacs_gateway.access`): the server
refuses peers outside the allowed networks and past a host's connection limit before any PDU
is read; :class:`pacs_gateway.reactor.GatewayACSE` checks the called and calling AE titles,
the calling AE's host and the association limit, and offers Query/Retrieve only to AEs with
the query right. A connection that never associates ends after the ACSE timeout, or as soon
as its peer closes it. Each accepted association is logged with its calling AE, peer host and
port, and its end (released or aborted) again with its length, so a hospital can audit which
modality sent from where.
"""

from __future__ import annotations

import contextlib
import errno
import functools
import logging
import socket
import socketserver
import ssl
import tempfile
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydicom.dataset import FileMetaDataset
from pynetdicom import AE, ALL_TRANSFER_SYNTAXES, _config, evt
from pynetdicom.dsutils import encode_file_meta
from pynetdicom.presentation import AllStoragePresentationContexts
from pynetdicom.sop_class import (  # type: ignore[attr-defined]
    PatientRootQueryRetrieveInformationModelFind,
    PatientRootQueryRetrieveInformationModelGet,
    PatientRootQueryRetrieveInformationModelMove,
    StudyRootQueryRetrieveInformationModelFind,
    StudyRootQueryRetrieveInformationModelGet,
    StudyRootQueryRetrieveInformationModelMove,
    Verification,
)
from pynetdicom.transport import ThreadedAssociationServer

from image_store.errors import InvalidDicom
from image_store.keys import is_valid_uid
from image_store.metadata import check_instance
from image_store.ports import Index, ObjectStore
from pacs_gateway import pynetdicom_fixes
from pacs_gateway.access import AccessPolicy, AeRule, Rights, host_allowed, parse_networks
from pacs_gateway.errors import SpoolFull
from pacs_gateway.fast_store import StoreReceiver, StoreRequest
from pacs_gateway.metrics import StoreCounters
from pacs_gateway.qr import (
    AuditLog,
    PriorsSource,
    QrSettings,
    handle_find,
    handle_get,
    handle_move,
    local_source,
)
from pacs_gateway.reactor import EventDrivenRequestHandler, ReceiverFactory, may
from pacs_gateway.spool import Spool, SpoolUsage

pynetdicom_fixes.install()
logger = logging.getLogger(__name__)

QR_MODELS = (
    PatientRootQueryRetrieveInformationModelFind,
    PatientRootQueryRetrieveInformationModelGet,
    PatientRootQueryRetrieveInformationModelMove,
    StudyRootQueryRetrieveInformationModelFind,
    StudyRootQueryRetrieveInformationModelGet,
    StudyRootQueryRetrieveInformationModelMove,
)

STATUS_SUCCESS = 0x0000
STATUS_OUT_OF_RESOURCES = 0xA700
STATUS_CANNOT_UNDERSTAND = 0xC210
STATUS_DATASET_MISMATCH = 0xA900
STATUS_NOT_AUTHORIZED = 0x0124
"""PS3.7 C.4 general status "Refused: Not Authorized"."""
_PREAMBLE = b"\x00" * 128 + b"DICM"
CONNECTIONS_PER_SLOT = 4
"""Open connections (associated or not) a process holds at most, per association slot: a
flood from many hosts costs threads only up to this, and only for the ACSE timeout."""


@dataclass(frozen=True, slots=True)
class ScpSettings:
    ae_title: str = "CLOUDFILM"
    host: str = "127.0.0.1"
    port: int = 11112
    maximum_pdu_size: int = 131072
    """The largest PDU peers may send us. DCMTK sends at most 131072 anyway; never 0
    (unlimited): a peer could then send a whole instance as one PDU, held in memory."""
    maximum_associations: int = 16
    """Established associations at once (per SCP process); connections that have not
    associated yet do not count (they are capped at CONNECTIONS_PER_SLOT times this)."""
    maximum_associations_per_host: int = 8
    """Open connections (associated or not) from one peer address, per SCP process: past it a
    connection is closed before any PDU is read, and an A-ASSOCIATE-RQ is rejected (local
    limit exceeded), so one host cannot take every slot."""
    acse_timeout_s: float = 10.0
    """How long a connection may take to send its A-ASSOCIATE-RQ (and a peer to answer a
    release); a connection that closes before it is freed at once."""
    network_timeout_s: float = 60.0
    """An established association idle this long is aborted."""
    allowed_calling_aes: frozenset[str] = frozenset()
    """Calling AE titles accepted with every right (kept for callers of the simple form;
    ``ae_rules`` gives per-AE rights and hosts); both empty: any AE, with ``open_rights``."""
    ae_rules: tuple[AeRule, ...] = ()
    """The calling-AE allow-list: each AE's rights and the hosts/networks it calls from."""
    open_rights: Rights = Rights.BOTH
    """What any calling AE may do while the allow-list is empty."""
    allowed_networks: tuple[str, ...] = ()
    """Peer addresses accepted, as CIDRs (e.g. '10.1.0.0/16'); empty accepts any."""
    tls: TlsSettings | None = None
    stream_to_disk: bool = False
    """Write each incoming dataset to a file on the spool's disk as it arrives, so instances
    of any size (multi-frame, >= 1 GB) are never held whole in memory. Sets pynetdicom's
    process-wide STORE_RECV_CHUNKED_DATASET: meant for the gateway's own process."""
    fast_store: bool = True
    """Receive C-STORE data sets on the DUL thread straight into spool files
    (pacs_gateway/fast_store.py; always streamed, whatever ``stream_to_disk`` says); False
    leaves every message to pynetdicom's own path."""

    def policy(self) -> AccessPolicy:
        """The access policy these settings describe."""
        rules = {ae: AeRule(ae, Rights.BOTH) for ae in self.allowed_calling_aes}
        rules.update({r.ae_title: r for r in self.ae_rules})
        return AccessPolicy(
            ae_title=self.ae_title,
            rules=rules,
            networks=parse_networks(self.allowed_networks, "allowed networks"),
            open_rights=self.open_rights,
            max_associations=self.maximum_associations,
            max_associations_per_host=self.maximum_associations_per_host,
        )


@dataclass(frozen=True, slots=True)
class TlsSettings:
    """DICOM TLS (PS3.15 B.1): the gateway's certificate, and the CA its peers must present."""

    cert_file: Path
    key_file: Path
    client_ca_file: Path | None = None
    """When set, peers must present a certificate signed by this CA (mutual TLS)."""

    def context(self) -> ssl.SSLContext:
        ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        ctx.minimum_version = ssl.TLSVersion.TLSv1_2
        ctx.load_cert_chain(self.cert_file, self.key_file)
        if self.client_ca_file is not None:
            ctx.load_verify_locations(self.client_ca_file)
            ctx.verify_mode = ssl.CERT_REQUIRED
        return ctx


class _SharedContexts(list[Any]):
    """The server's supported presentation contexts, shared by its associations.

    pynetdicom deep-copies the list for every association it accepts: with every storage SOP
    class in every transfer syntax that is ~60 ms of CPU before the first PDU is answered.
    Negotiation only reads them (it builds new contexts for its results), so a shallow copy
    of the list is enough."""

    def __deepcopy__(self, memo: dict[int, Any]) -> list[Any]:
        return list(self)


class GatewayServer(ThreadedAssociationServer):
    """pynetdicom's threaded server, refusing connections from outside the allowed networks,
    and past a host's connection limit, before any PDU is read (the rest of the policy is
    applied at association time: :class:`pacs_gateway.reactor.GatewayACSE`)."""

    policy: AccessPolicy | None = None
    store_receiver: ReceiverFactory | None = None
    """Gives each association a C-STORE fast path (read by EventDrivenRequestHandler)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self._host_lock = threading.Lock()
        self._host_connections: dict[str, int] = {}
        super().__init__(*args, **kwargs)

    def server_bind(self) -> None:
        # several gateway processes accept on one port; the kernel spreads the associations
        if self.socket is not None:
            self.socket.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        super().server_bind()

    def shutdown(self) -> None:
        """Stop serving and close the socket (the AE's list of servers is not used here:
        start_scp owns the thread)."""
        socketserver.BaseServer.shutdown(self)
        self.server_close()

    def verify_request(self, request: Any, client_address: Any) -> bool:
        policy = self.policy
        if policy is None:
            return True
        host = str(client_address[0])
        if not host_allowed(policy, host):
            logger.warning("connection from %s refused: not in the allowed networks", host)
            return False
        with self._host_lock:
            open_now = self._host_connections.get(host, 0)
            total = sum(self._host_connections.values())
            refused = (
                open_now >= policy.max_associations_per_host
                or total >= policy.max_associations * CONNECTIONS_PER_SLOT
            )
            if not refused:
                self._host_connections[host] = open_now + 1
        if refused:
            logger.warning(
                "connection from %s refused: %d open from it, %d in all", host, open_now, total
            )
            return False
        _keepalive(request)
        return True

    def release_host(self, host: str) -> None:
        """A connection from ``host`` has ended (called once per accepted connection)."""
        with self._host_lock:
            left = self._host_connections.get(host, 0) - 1
            if left > 0:
                self._host_connections[host] = left
            else:
                self._host_connections.pop(host, None)


def _keepalive(sock: Any) -> None:
    """TCP keepalive probes after 30 s of silence: a peer that vanished without closing (power
    loss, a cut cable) frees its slot within about a minute, not at the kernel's two hours."""
    with contextlib.suppress(OSError, AttributeError):
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPIDLE, 30)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPINTVL, 10)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPCNT, 3)


def handle_store(event: Any, spool: Spool, counters: StoreCounters, streamed: bool = False) -> int:
    """EVT_C_STORE (pynetdicom's path): check the dataset, spool it durably, return the status."""
    req = event.request
    sop_uid = str(req.AffectedSOPInstanceUID or "")
    sop_class = str(req.AffectedSOPClassUID or "")
    if not may(event.assoc, Rights.STORE):
        return _refuse(counters, STATUS_NOT_AUTHORIZED, sop_uid, "the calling AE may not store")
    if not is_valid_uid(sop_uid):
        return _refuse(counters, STATUS_CANNOT_UNDERSTAND, sop_uid, "invalid Affected SOP UID")
    source: bytes | Path
    if streamed:
        source = Path(event.dataset_path)  # pynetdicom wrote preamble, file meta and dataset
    else:
        meta: FileMetaDataset = event.file_meta
        meta.SourceApplicationEntityTitle = event.assoc.requestor.ae_title
        body = req.DataSet.getbuffer()
        try:
            source = b"".join((_PREAMBLE, encode_file_meta(meta), body))
        finally:
            body.release()
    return store_instance(source, sop_uid, sop_class, spool, counters)


def store_instance(
    source: bytes | memoryview | Path,
    sop_uid: str,
    sop_class: str,
    spool: Spool,
    counters: StoreCounters,
    later: list[Callable[[], None]] | None = None,
) -> int:
    """Check a received Part 10 instance (in memory, or a file in the spool's incoming/ that
    is then adopted), spool it durably and return the DIMSE status for its C-STORE.
    ``later``: see :meth:`Spool.accept`."""
    if not is_valid_uid(sop_uid):
        return _refuse(counters, STATUS_CANNOT_UNDERSTAND, sop_uid, "invalid Affected SOP UID")
    try:
        ident = check_instance(source)
    except InvalidDicom as exc:
        return _refuse(counters, STATUS_CANNOT_UNDERSTAND, sop_uid, str(exc))
    if ident.sop_instance_uid != sop_uid:
        return _refuse(
            counters,
            STATUS_CANNOT_UNDERSTAND,
            sop_uid,
            f"the dataset's SOP Instance UID {ident.sop_instance_uid} is not the request's",
        )
    if ident.sop_class_uid != sop_class:
        return _refuse(
            counters,
            STATUS_DATASET_MISMATCH,
            sop_uid,
            f"the dataset's SOP Class {ident.sop_class_uid} is not the context's {sop_class}",
        )
    try:
        if isinstance(source, Path):
            entry = spool.accept_file(source, sop_uid)
        else:
            entry = spool.accept([source], sop_uid, later=later)
    except SpoolFull as exc:
        logger.warning("C-STORE %s refused, out of resources: %s", sop_uid, exc)
        counters.add_refused(resources=True)
        return STATUS_OUT_OF_RESOURCES
    except OSError as exc:
        level = logging.WARNING if exc.errno in (errno.ENOSPC, errno.EDQUOT) else logging.ERROR
        logger.log(level, "C-STORE %s refused, spool write failed: %s", sop_uid, exc)
        counters.add_refused(resources=True)
        return STATUS_OUT_OF_RESOURCES
    counters.add_accepted(entry.size)
    return STATUS_SUCCESS


def _store_received(
    source: memoryview | Path,
    request: StoreRequest,
    later: list[Callable[[], None]],
    spool: Spool,
    counters: StoreCounters,
    assoc: Any,
) -> int:
    if not may(assoc, Rights.STORE):
        return _refuse(
            counters,
            STATUS_NOT_AUTHORIZED,
            request.sop_instance_uid,
            "the calling AE may not store",
        )
    return store_instance(
        source, request.sop_instance_uid, request.sop_class_uid, spool, counters, later
    )


def _fast_receiver(
    assoc: Any, send: Callable[[bytes], None], spool: Spool, counters: StoreCounters
) -> StoreReceiver:
    return StoreReceiver(
        assoc,
        send,
        new_file=spool.new_incoming,
        store=functools.partial(_store_received, spool=spool, counters=counters, assoc=assoc),
    )


def _refuse(counters: StoreCounters, status: int, sop_uid: str, reason: str) -> int:
    logger.warning("C-STORE %s refused (0x%04X): %s", sop_uid[:80], status, reason)
    counters.add_refused(resources=False)
    return status


def handle_echo(event: Any) -> int:
    return STATUS_SUCCESS


def _peer(assoc: Any) -> str:
    requestor = assoc.requestor
    return (
        f"calling_ae={str(requestor.ae_title).strip()!r} host={requestor.address} "
        f"port={requestor.port} called_ae={str(assoc.acceptor.ae_title).strip()!r}"
    )


def log_accepted(event: Any, usage: SpoolUsage) -> None:
    """One line per accepted association (who called, from where), counted as open in
    ``usage`` until it ends (the uploader waits while modalities are sending)."""
    event.assoc.accepted_at = event.timestamp
    usage.association_opened()
    logger.info("association accepted: %s", _peer(event.assoc))


def log_ended(event: Any, how: str, usage: SpoolUsage) -> None:
    started = getattr(event.assoc, "accepted_at", None)
    if started is not None and not getattr(event.assoc, "ended", False):
        event.assoc.ended = True
        usage.association_closed()
    took = (event.timestamp - started).total_seconds() if started is not None else 0.0
    logger.info("association %s: %s after %.1f s", how, _peer(event.assoc), took)


def build_ae(settings: ScpSettings) -> Any:
    """An AE that accepts every storage SOP class pynetdicom knows in every transfer syntax."""
    ae = AE(ae_title=settings.ae_title)
    ae.maximum_pdu_size = settings.maximum_pdu_size
    # the limits are the policy's (GatewayACSE): pynetdicom's own count includes connections
    # that never associate, so a few idle sockets would lock every modality out
    ae.maximum_associations = 1 << 30
    ae.acse_timeout = settings.acse_timeout_s
    ae.network_timeout = settings.network_timeout_s
    for cx in AllStoragePresentationContexts:
        if cx.abstract_syntax is not None:
            # scp_role/scu_role: also accept C-GET requestors acting as Storage SCP
            ae.add_supported_context(
                cx.abstract_syntax, ALL_TRANSFER_SYNTAXES, scp_role=True, scu_role=False
            )
    ae.add_supported_context(Verification, ALL_TRANSFER_SYNTAXES)
    return ae


@dataclass(frozen=True, slots=True)
class QrContext:
    """What Query/Retrieve answers from: ``source`` (e.g. the cloud over HTTP) or else an
    index and store on this machine, and who may see what."""

    index: Index | None
    store: ObjectStore | None
    settings: QrSettings
    audit: AuditLog | None = None
    """Where every C-FIND, C-GET and C-MOVE is recorded."""
    source: PriorsSource | None = None

    def priors(self) -> PriorsSource:
        if self.source is not None:
            return self.source
        if self.index is None or self.store is None:
            raise ValueError("QrContext needs a source, or an index and a store")
        return local_source(self.index, self.store, self.settings)


def start_scp(
    settings: ScpSettings,
    spool: Spool,
    counters: StoreCounters | None = None,
    qr: QrContext | None = None,
) -> Any:
    """Start the SCP in background threads; returns pynetdicom's server (call .shutdown())."""
    ae = build_ae(settings)
    counters = counters or StoreCounters()
    spool.start_journal()
    if settings.stream_to_disk:
        # the temporary files land beside the spool, so adopting one is a rename, not a copy
        _config.STORE_RECV_CHUNKED_DATASET = True
        tempfile.tempdir = str(spool.incoming)
    handlers: list[Any] = [
        (
            evt.EVT_C_STORE,
            handle_store,
            [spool, counters, settings.stream_to_disk],
        ),
        (evt.EVT_C_ECHO, handle_echo),
        (evt.EVT_ACCEPTED, log_accepted, [spool.usage]),
        (evt.EVT_RELEASED, log_ended, ["released", spool.usage]),
        (evt.EVT_ABORTED, log_ended, ["aborted", spool.usage]),
    ]
    if qr is not None:
        for model in QR_MODELS:
            ae.add_supported_context(model)
        source = qr.priors()
        handlers += [
            (evt.EVT_C_FIND, handle_find, [source, qr.settings, qr.audit]),
            (evt.EVT_C_GET, handle_get, [source, qr.settings, qr.audit]),
            (evt.EVT_C_MOVE, handle_move, [source, qr.settings, qr.audit]),
        ]
    policy = settings.policy()
    server = ae.make_server(
        (settings.host, settings.port),
        evt_handlers=handlers,
        ssl_context=settings.tls.context() if settings.tls else None,
        server_class=GatewayServer,
        request_handler=EventDrivenRequestHandler,
    )
    server.policy = policy
    if not policy.rules:
        logger.warning(
            "DICOM SCP %s: no calling-AE allow-list, any AE may associate (rights: %s)",
            settings.ae_title,
            policy.open_rights.name,
        )
    server.contexts = _SharedContexts(server.contexts)
    if settings.fast_store:
        server.store_receiver = functools.partial(_fast_receiver, spool=spool, counters=counters)
    thread = threading.Thread(target=server.serve_forever, name="dicom-scp", daemon=True)
    thread.start()
    logger.info("DICOM SCP %s listening on %s:%d", settings.ae_title, settings.host, settings.port)
    return server

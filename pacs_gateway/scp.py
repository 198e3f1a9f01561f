"""The gateway's DICOM side: a pynetdicom Storage SCP that spools before it answers Success.

The handler never decodes the dataset: it writes the bytes as received behind a File Meta
header (which records the calling AE title) and returns the DIMSE status. Errors become
statuses here, at the edge: out of spool or disk space is 0xA700, so the modality retries.
"""

from __future__ import annotations

import errno
import functools
import ipaddress
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
from pacs_gateway.errors import SpoolFull
from pacs_gateway.fast_store import StoreReceiver, StoreRequest
from pacs_gateway.metrics import StoreCounters
from pacs_gateway.qr import QrSettings, handle_find, handle_get, handle_move
from pacs_gateway.reactor import EventDrivenRequestHandler, ReceiverFactory
from pacs_gateway.spool import Spool

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
_PREAMBLE = b"\x00" * 128 + b"DICM"


@dataclass(frozen=True, slots=True)
class ScpSettings:
    ae_title: str = "CLOUDFILM"
    host: str = "127.0.0.1"
    port: int = 11112
    maximum_pdu_size: int = 131072
    """The largest PDU peers may send us. DCMTK sends at most 131072 anyway; never 0
    (unlimited): a peer could then send a whole instance as one PDU, held in memory."""
    maximum_associations: int = 16
    network_timeout_s: float = 60.0
    allowed_calling_aes: frozenset[str] = frozenset()
    """Calling AE titles accepted; empty accepts any."""
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
    """pynetdicom's threaded server, refusing connections from outside the allowed networks
    before any PDU is read."""

    allowed_networks: tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...] = ()
    store_receiver: ReceiverFactory | None = None
    """Gives each association a C-STORE fast path (read by EventDrivenRequestHandler)."""

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
        if not self.allowed_networks:
            return True
        try:
            peer = ipaddress.ip_address(client_address[0])
        except ValueError:
            return False
        if any(peer in net for net in self.allowed_networks):
            return True
        logger.warning("connection from %s refused: not in the allowed networks", peer)
        return False


def handle_store(event: Any, spool: Spool, counters: StoreCounters, streamed: bool = False) -> int:
    """EVT_C_STORE (pynetdicom's path): check the dataset, spool it durably, return the status."""
    req = event.request
    sop_uid = str(req.AffectedSOPInstanceUID or "")
    sop_class = str(req.AffectedSOPClassUID or "")
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
) -> int:
    return store_instance(
        source, request.sop_instance_uid, request.sop_class_uid, spool, counters, later
    )


def _refuse(counters: StoreCounters, status: int, sop_uid: str, reason: str) -> int:
    logger.warning("C-STORE %s refused (0x%04X): %s", sop_uid[:80], status, reason)
    counters.add_refused(resources=False)
    return status


def handle_echo(event: Any) -> int:
    return STATUS_SUCCESS


def build_ae(settings: ScpSettings) -> Any:
    """An AE that accepts every storage SOP class pynetdicom knows in every transfer syntax."""
    ae = AE(ae_title=settings.ae_title)
    ae.maximum_pdu_size = settings.maximum_pdu_size
    ae.maximum_associations = settings.maximum_associations
    ae.network_timeout = settings.network_timeout_s
    for cx in AllStoragePresentationContexts:
        if cx.abstract_syntax is not None:
            # scp_role/scu_role: also accept C-GET requestors acting as Storage SCP
            ae.add_supported_context(
                cx.abstract_syntax, ALL_TRANSFER_SYNTAXES, scp_role=True, scu_role=False
            )
    ae.add_supported_context(Verification, ALL_TRANSFER_SYNTAXES)
    if settings.allowed_calling_aes:
        ae.require_calling_aet = sorted(settings.allowed_calling_aes)
    return ae


@dataclass(frozen=True, slots=True)
class QrContext:
    """What Query/Retrieve answers from: the cloud's index and store, and who may see what."""

    index: Index
    store: ObjectStore
    settings: QrSettings


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
    ]
    if qr is not None:
        for model in QR_MODELS:
            ae.add_supported_context(model)
        handlers += [
            (evt.EVT_C_FIND, handle_find, [qr.index, qr.settings]),
            (evt.EVT_C_GET, handle_get, [qr.index, qr.store, qr.settings]),
            (evt.EVT_C_MOVE, handle_move, [qr.index, qr.store, qr.settings]),
        ]
    networks = tuple(ipaddress.ip_network(n, strict=False) for n in settings.allowed_networks)
    server = ae.make_server(
        (settings.host, settings.port),
        evt_handlers=handlers,
        ssl_context=settings.tls.context() if settings.tls else None,
        server_class=GatewayServer,
        request_handler=EventDrivenRequestHandler,
    )
    server.allowed_networks = networks
    server.contexts = _SharedContexts(server.contexts)
    if settings.fast_store:
        server.store_receiver = functools.partial(
            StoreReceiver,
            new_file=spool.new_incoming,
            store=functools.partial(_store_received, spool=spool, counters=counters),
        )
    thread = threading.Thread(target=server.serve_forever, name="dicom-scp", daemon=True)
    thread.start()
    logger.info("DICOM SCP %s listening on %s:%d", settings.ae_title, settings.host, settings.port)
    return server

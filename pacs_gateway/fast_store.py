"""C-STORE requests received on the DUL thread, straight into the spool.

pynetdicom hands every P-DATA-TF PDU through four copies (socket buffer, PDU object, DIMSE
message buffer, the handler's join), a pydicom Dataset for each command, an event object, a
thread switch to the association's reactor and a pydicom-encoded response: about 1.5 ms of CPU
per CT slice, five times what the disk needs to make the slice durable (bench/ingest_compare.py).

For the one message that is the gateway's hot path (a C-STORE-RQ on an accepted storage
context) the DUL reactor (:class:`pacs_gateway.reactor.EventDrivenDUL`) gives each P-DATA-TF
PDU to a :class:`StoreReceiver` instead. The receiver decodes the command set with pydicom,
gathers the data set's fragments in a reused buffer (a spool file past SPILL_BYTES), asks the
same :func:`pacs_gateway.scp.store_instance` as the pynetdicom handler for the status (the
instance is durable by then, see pacs_gateway/journal.py) and answers on the socket; the
spool file of a journalled instance is then written on a writer thread while the next data
set arrives in the other buffer. Everything else (association negotiation, release, abort,
C-ECHO, C-FIND, C-GET, C-MOVE, a command split over several PDUs, a C-STORE on a context or
SOP class we do not serve that way) stays on pynetdicom's path, untouched.
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import io
import logging
import os
import struct
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydicom.dataset import Dataset
from pynetdicom import PYNETDICOM_IMPLEMENTATION_UID, PYNETDICOM_IMPLEMENTATION_VERSION
from pynetdicom.dsutils import decode
from pynetdicom.service_class import StorageServiceClass
from pynetdicom.sop_class import uid_to_service_class

from image_store.keys import is_valid_uid

logger = logging.getLogger(__name__)

_C_STORE_RQ = 0x0001
_C_STORE_RSP = 0x8001
_NO_DATASET = 0x0101
_HANDLER_FAILED = 0xC211
_PREAMBLE = b"\x00" * 128 + b"DICM"
_COMMAND = 0x01
_LAST = 0x02


class ProtocolError(Exception):
    """The peer broke the DIMSE framing; the association is aborted."""


def split_pdvs(body: memoryview) -> Iterator[tuple[int, int, memoryview]]:
    """The presentation data values of a P-DATA-TF PDU body (PS3.8 9.3.5): (context ID,
    message control header, fragment) each, the fragment a view into ``body``."""
    pos = 0
    end = len(body)
    while pos < end:
        if end - pos < 6:
            raise ProtocolError(f"PDV item header cut short at {pos} of {end}")
        (length,) = struct.unpack_from(">I", body, pos)
        if length < 2 or pos + 4 + length > end:
            raise ProtocolError(f"PDV item length {length} at {pos} overruns the PDU ({end})")
        yield body[pos + 4], body[pos + 5], body[pos + 6 : pos + 4 + length]
        pos += 4 + length


def _explicit(element: int, vr: bytes, value: bytes, pad: bytes) -> bytes:
    if len(value) % 2:
        value += pad
    if vr == b"OB":
        return struct.pack("<HH2sHI", 0x0002, element, vr, 0, len(value)) + value
    return struct.pack("<HH2sH", 0x0002, element, vr, len(value)) + value


_IMPLEMENTATION = _explicit(
    0x0012, b"UI", PYNETDICOM_IMPLEMENTATION_UID.encode("ascii"), b"\x00"
) + _explicit(0x0013, b"SH", PYNETDICOM_IMPLEMENTATION_VERSION.encode("ascii"), b" ")


def file_meta_bytes(
    sop_class: str, sop_instance: str, transfer_syntax: str, source_ae: str
) -> bytes:
    """Preamble, prefix and File Meta Information of a Part 10 file, byte for byte what
    pynetdicom's ``create_file_meta`` + ``SourceApplicationEntityTitle`` + ``encode_file_meta``
    give (checked in tests/pacs_gateway/test_fast_store.py) in a hundredth of the time: the
    pydicom datasets were a third of the C-STORE path's CPU. Raises UnicodeEncodeError for a
    value that is not ASCII."""
    group = b"".join(
        (
            _explicit(0x0001, b"OB", b"\x00\x01", b"\x00"),
            _explicit(0x0002, b"UI", sop_class.encode("ascii"), b"\x00"),
            _explicit(0x0003, b"UI", sop_instance.encode("ascii"), b"\x00"),
            _explicit(0x0010, b"UI", transfer_syntax.encode("ascii"), b"\x00"),
            _IMPLEMENTATION,
            _explicit(0x0016, b"AE", source_ae.encode("ascii"), b" "),
        )
    )
    return _PREAMBLE + _explicit(0x0000, b"UL", struct.pack("<I", len(group)), b"") + group


def _ui(tag_group: int, tag_elem: int, uid: str) -> bytes:
    value = uid.encode("ascii")
    if len(value) % 2:
        value += b"\x00"
    return struct.pack("<HHI", tag_group, tag_elem, len(value)) + value


def _us(tag_group: int, tag_elem: int, value: int) -> bytes:
    return struct.pack("<HHIH", tag_group, tag_elem, 2, value)


def encode_store_response(
    context_id: int, message_id: int, sop_class: str, sop_instance: str, status: int
) -> bytes:
    """The P-DATA-TF PDU of a C-STORE-RSP, byte for byte what pynetdicom would send for the
    same response (checked in tests/pacs_gateway/test_fast_store.py): an implicit VR little
    endian command set in one last command fragment."""
    elements = b"".join(
        (
            _ui(0x0000, 0x0002, sop_class),
            _us(0x0000, 0x0100, _C_STORE_RSP),
            _us(0x0000, 0x0120, message_id),
            _us(0x0000, 0x0800, _NO_DATASET),
            _us(0x0000, 0x0900, status),
            _ui(0x0000, 0x1000, sop_instance),
        )
    )
    command = struct.pack("<HHII", 0x0000, 0x0000, 4, len(elements)) + elements
    pdv = struct.pack(">IBB", len(command) + 2, context_id, _COMMAND | _LAST) + command
    return struct.pack(">BBI", 0x04, 0x00, len(pdv)) + pdv


@dataclass(frozen=True, slots=True)
class StoreRequest:
    """What the handler needs of a C-STORE-RQ (pynetdicom's C_STORE primitive has more)."""

    context_id: int
    message_id: int
    sop_class_uid: str
    sop_instance_uid: str
    transfer_syntax: str
    calling_ae: str


StoreFunction = Callable[[memoryview | Path, StoreRequest, list[Callable[[], None]]], int]
"""Given the complete Part 10 instance (in memory, or a file in the spool's incoming/ that it
adopts or leaves to be deleted), the request and a list for work that may wait until the
response is sent (while the instance's memory is still untouched): the DIMSE status."""

SPILL_BYTES = 16 * 1024 * 1024
"""A data set is gathered in memory (two buffers per association, reused in turn) up to this
size, then streamed to a spool file: a 1 GB multi-frame never sits in memory."""


WRITEBACK_BYTES = 32 * 1024 * 1024
"""A spilled data set's bytes are handed to the disk in windows of this size as they arrive
(:func:`start_writeback`), so the fsync before Success waits for the last window only, not
for a whole 1 GB instance sitting dirty in the page cache."""

_SYNC_FILE_RANGE_WAIT_BEFORE = 1
_SYNC_FILE_RANGE_WRITE = 2


def _load_sync_file_range() -> Callable[[int, int, int, int], int] | None:
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True)
        fn = libc.sync_file_range
    except (OSError, AttributeError):  # not Linux
        return None
    fn.argtypes = (ctypes.c_int, ctypes.c_int64, ctypes.c_int64, ctypes.c_uint)
    fn.restype = ctypes.c_int
    return fn


_sync_file_range = _load_sync_file_range()


def start_writeback(fd: int, start: int, end: int, previous_start: int) -> None:
    """Start writing ``[start, end)`` of a file to disk without waiting for it, after waiting
    for the window before it (``[previous_start, start)``) to be under way: the dirty pages
    of one spilled instance stay within about two windows and the disk works while the
    network does. Durability is still the fsync's (sync_file_range is a hint: no metadata, no
    disk cache flush); without sync_file_range (not Linux) this does nothing."""
    if _sync_file_range is None:
        return
    if start > previous_start:
        _sync_file_range(fd, previous_start, start - previous_start, _SYNC_FILE_RANGE_WAIT_BEFORE)
    _sync_file_range(fd, start, end - start, _SYNC_FILE_RANGE_WRITE)


@dataclass(slots=True)
class _Receiving:
    request: StoreRequest
    keep: bool = True
    """False once the data set is refused (invalid UID, a failed write): the rest of it is
    read and dropped, and the response carries ``status``."""
    status: int | None = None
    path: Path | None = None
    """The spool file a large data set spilled to."""
    fd: int | None = None
    written: int = 0
    """Bytes written to ``fd`` so far."""
    flushed: int = 0
    """Where the last writeback window (:func:`start_writeback`) ended."""
    flushed_before: int = 0
    """Where the window before it started."""


def _run_later(work: list[Callable[[], None]], view: memoryview, sop_uid: str) -> None:
    try:
        for w in work:
            try:
                w()
            except Exception:
                logger.exception("C-STORE %s: after the response", sop_uid[:80])
    finally:
        view.release()  # only now: the work wrote from it


class StoreReceiver:
    """One association's C-STORE fast path (owned by its DUL thread, not thread-safe)."""

    def __init__(
        self,
        assoc: Any,
        send: Callable[[bytes], None],
        *,
        new_file: Callable[[], Path],
        store: StoreFunction,
        spill_bytes: int = SPILL_BYTES,
    ) -> None:
        self._assoc = assoc
        self._new_file = new_file
        self._store = store
        self._send = send
        self._spill_bytes = spill_bytes
        self._current: _Receiving | None = None
        # two buffers: one fills with the next data set while the other's "later" work
        # (writing the spool file) runs on the writer thread
        self._buffers = (bytearray(), bytearray())
        self._after: list[Future[None] | None] = [None, None]
        self._which = 0
        self._buffer = self._buffers[0]
        self._length = 0
        self._writer: ThreadPoolExecutor | None = None

    @property
    def busy(self) -> bool:
        """True while a C-STORE taken by this receiver is still arriving."""
        return self._current is not None

    def take(self, body: memoryview) -> bool:
        """Handle a P-DATA-TF PDU body if it belongs to a C-STORE this receiver serves;
        False leaves the PDU, unread, to pynetdicom."""
        if self._current is None:
            pdvs = list(split_pdvs(body))
            if not pdvs or not self._starts_store(*pdvs[0]):
                return False
            pdvs = pdvs[1:]
        else:
            pdvs = list(split_pdvs(body))
        for context_id, control, fragment in pdvs:
            self._data(context_id, control, fragment)
        return True

    def close(self) -> None:
        """The association ended: drop a partly received data set (never acknowledged) and
        let the writer thread finish."""
        current, self._current = self._current, None
        if current is not None:
            self._discard(current)
        if self._writer is not None:
            self._writer.shutdown(wait=True)

    # -- the command -----------------------------------------------------------------------

    def _starts_store(self, context_id: int, control: int, fragment: memoryview) -> bool:
        if control != _COMMAND | _LAST or self._assoc.dimse.message is not None:
            return False  # a command over several PDVs, or pynetdicom mid-message: its path
        cx = self._assoc._accepted_cx.get(context_id)
        if cx is None or not cx.as_scp:
            return False
        try:
            command = decode(io.BytesIO(bytes(fragment)), True, True)
            request = self._request(command, context_id, str(cx.transfer_syntax[0]))
        except Exception:
            return False  # pynetdicom decodes it again and answers as it would
        if request is None:
            return False
        self._current = self._open(request)
        return True

    def _request(self, command: Dataset, context_id: int, syntax: str) -> StoreRequest | None:
        if command.get("CommandField") != _C_STORE_RQ:
            return None
        if command.get("CommandDataSetType", _NO_DATASET) == _NO_DATASET:
            return None
        sop_class = str(command.get("AffectedSOPClassUID") or "")
        message_id = command.get("MessageID")
        if not sop_class or not isinstance(message_id, int):
            return None
        extended = self._assoc.acceptor.accepted_common_extended.get(sop_class)
        service_uid = extended[0] if extended else sop_class
        if uid_to_service_class(service_uid) is not StorageServiceClass:
            return None
        return StoreRequest(
            context_id=context_id,
            message_id=message_id,
            sop_class_uid=sop_class,
            sop_instance_uid=str(command.get("AffectedSOPInstanceUID") or "").rstrip("\0 "),
            transfer_syntax=syntax,
            calling_ae=str(self._assoc.requestor.ae_title),
        )

    def _open(self, request: StoreRequest) -> _Receiving:
        receiving = _Receiving(request)
        after = self._after[self._which]
        if after is not None:  # this buffer's last data set is still being written out
            after.result()
            self._after[self._which] = None
        self._buffer = self._buffers[self._which]
        self._length = 0
        if not is_valid_uid(request.sop_instance_uid):
            receiving.keep = False  # the store function refuses it (0xC210)
            return receiving
        try:
            meta = file_meta_bytes(
                request.sop_class_uid,
                request.sop_instance_uid,
                request.transfer_syntax,
                request.calling_ae,
            )
        except ValueError as exc:  # not ASCII
            self._refuse_rest(receiving, exc)
            return receiving
        self._append(receiving, meta)
        return receiving

    # -- the data set ----------------------------------------------------------------------

    def _data(self, context_id: int, control: int, fragment: memoryview) -> None:
        current = self._current
        if current is None or control & _COMMAND:
            raise ProtocolError("a command fragment arrived inside a C-STORE data set")
        if context_id != current.request.context_id:
            raise ProtocolError(
                f"a data fragment on context {context_id} inside a C-STORE on context "
                f"{current.request.context_id}"
            )
        if current.keep:
            self._append(current, fragment)
        if control & _LAST:
            self._current = None
            self._finish(current)

    def _append(self, receiving: _Receiving, data: bytes | memoryview) -> None:
        """Gather in the (reused) buffer; past the spill size, stream to a spool file."""
        end = self._length + len(data)
        buf = self._buffer
        if receiving.fd is None and len(buf) < end <= self._spill_bytes:
            buf.extend(bytes(min(max(end, 2 * len(buf)), self._spill_bytes) - len(buf)))
        if receiving.fd is None and end <= len(buf):
            buf[self._length : end] = data
            self._length = end
            return
        try:
            if receiving.fd is None:
                receiving.path = self._new_file()
                receiving.fd = os.open(receiving.path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            view = memoryview(buf)[: self._length]
            try:
                self._write(receiving.fd, view)
            finally:
                view.release()
            receiving.written += self._length + len(data)
            self._length = 0
            self._write(receiving.fd, data)
            if receiving.written - receiving.flushed >= WRITEBACK_BYTES:
                start_writeback(
                    receiving.fd, receiving.flushed, receiving.written, receiving.flushed_before
                )
                receiving.flushed_before, receiving.flushed = receiving.flushed, receiving.written
        except OSError as exc:
            self._refuse_rest(receiving, exc)

    @staticmethod
    def _write(fd: int, data: bytes | memoryview) -> None:
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view) :]

    def _refuse_rest(self, receiving: _Receiving, exc: Exception) -> None:
        from pacs_gateway.scp import STATUS_OUT_OF_RESOURCES

        logger.warning(
            "C-STORE %s: cannot spool it, refusing: %s",
            receiving.request.sop_instance_uid[:80],
            exc,
        )
        receiving.keep = False
        receiving.status = STATUS_OUT_OF_RESOURCES
        self._discard(receiving)

    def _finish(self, receiving: _Receiving) -> None:
        request = receiving.request
        later: list[Callable[[], None]] = []
        view = memoryview(self._buffer)[: self._length]
        handed_over = False
        try:
            status = receiving.status
            if status is None:
                status = self._stored(receiving, view, later)
            self._send(
                encode_store_response(
                    request.context_id,
                    request.message_id,
                    request.sop_class_uid,
                    request.sop_instance_uid,
                    status,
                )
            )
            if later:  # on the writer thread, while the next data set fills the other buffer
                try:
                    if self._writer is None:
                        self._writer = ThreadPoolExecutor(1, thread_name_prefix="c-store-after")
                    self._after[self._which] = self._writer.submit(
                        _run_later, later, view, request.sop_instance_uid
                    )
                except RuntimeError:  # the interpreter is shutting down: do it here
                    _run_later(later, view, request.sop_instance_uid)
                handed_over = True
                self._which ^= 1
        finally:
            if not handed_over:
                view.release()
            self._discard(receiving)

    def _stored(
        self, receiving: _Receiving, view: memoryview, later: list[Callable[[], None]]
    ) -> int:
        request = receiving.request
        try:
            if receiving.fd is None:
                return self._store(view, request, later)
            fd, receiving.fd = receiving.fd, None
            os.close(fd)
            assert receiving.path is not None
            return self._store(receiving.path, request, later)  # an adopted file moved away
        except Exception:  # as pynetdicom does for a handler that fails
            logger.exception("C-STORE %s: the store failed", request.sop_instance_uid[:80])
            return _HANDLER_FAILED

    def _discard(self, receiving: _Receiving) -> None:
        self._length = 0
        fd, receiving.fd = receiving.fd, None
        if fd is not None:
            with contextlib.suppress(OSError):
                os.close(fd)
        if receiving.path is not None:
            receiving.path.unlink(missing_ok=True)

"""The C-STORE fast path (pacs_gateway/fast_store.py): same bytes on the wire and on disk as
pynetdicom's own path, and the framing errors and large data sets it must handle."""

from __future__ import annotations

import io
import logging
import struct
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pydicom
import pytest
from pydicom.data import get_testdata_file
from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian
from pynetdicom import AE, _config
from pynetdicom.dimse_messages import C_STORE_RSP
from pynetdicom.dimse_primitives import C_STORE
from pynetdicom.dsutils import create_file_meta, encode_file_meta
from pynetdicom.pdu import P_DATA_TF
from pynetdicom.sop_class import CTImageStorage, MRImageStorage

from pacs_gateway.fast_store import (
    ProtocolError,
    StoreReceiver,
    StoreRequest,
    encode_store_response,
    file_meta_bytes,
    split_pdvs,
)
from pacs_gateway.scp import ScpSettings, start_scp
from pacs_gateway.spool import Spool
from tests.pacs_gateway.helpers import gateway_process

CT = "1.2.840.10008.5.1.4.1.1.2"


def _testdata(name: str) -> Path:
    p = get_testdata_file(name)
    assert p is not None
    return Path(p)


def _pynetdicom_response(
    context_id: int, message_id: int, sop_class: str, sop_uid: str, status: int
) -> bytes:
    rsp = C_STORE()
    rsp.MessageIDBeingRespondedTo = message_id
    rsp.AffectedSOPClassUID = sop_class
    rsp.AffectedSOPInstanceUID = sop_uid
    rsp.Status = status
    msg = C_STORE_RSP()
    msg.primitive_to_message(rsp)
    (pdata,) = list(msg.encode_msg(context_id, 16384))
    pdu = P_DATA_TF()
    pdu.from_primitive(pdata)
    return bytes(pdu.encode())


@pytest.mark.parametrize("status", [0x0000, 0xA700, 0xA900, 0xC210, 0xB000])
@pytest.mark.parametrize("sop_uid", ["1.2.3", "1.2.34", "2.25." + "9" * 59])
def test_store_response_is_byte_identical_to_pynetdicoms(status: int, sop_uid: str) -> None:
    for context_id, message_id, sop_class in [
        (1, 1, CT),
        (255, 65535, "1.2.840.10008.5.1.4.1.1.4"),
    ]:
        ours = encode_store_response(context_id, message_id, sop_class, sop_uid, status)
        assert ours == _pynetdicom_response(context_id, message_id, sop_class, sop_uid, status)


@pytest.mark.parametrize("ae", ["A", "MODALITY", "STORESCU_CT_01234"[:16]])
@pytest.mark.parametrize("sop_uid", ["1.2.3", "1.2.34"])
@pytest.mark.parametrize("syntax", ["1.2.840.10008.1.2", "1.2.840.10008.1.2.4.80"])
def test_file_meta_is_byte_identical_to_pynetdicoms(ae: str, sop_uid: str, syntax: str) -> None:
    meta = create_file_meta(
        sop_class_uid=CT,  # type: ignore[arg-type]
        sop_instance_uid=sop_uid,  # type: ignore[arg-type]
        transfer_syntax=syntax,  # type: ignore[arg-type]
    )
    meta.SourceApplicationEntityTitle = ae
    expected = b"\x00" * 128 + b"DICM" + encode_file_meta(meta)
    assert file_meta_bytes(CT, sop_uid, syntax, ae) == expected


def test_pdv_items_that_overrun_their_pdu_are_a_protocol_error() -> None:
    good = struct.pack(">IBB", 5, 1, 0x02) + b"abc"
    assert [(c, h, bytes(f)) for c, h, f in split_pdvs(memoryview(good))] == [(1, 2, b"abc")]
    with pytest.raises(ProtocolError):
        list(split_pdvs(memoryview(struct.pack(">IBB", 50, 1, 0x02) + b"abc")))
    with pytest.raises(ProtocolError):
        list(split_pdvs(memoryview(good + b"\x00\x00")))


# -- the receiver against a stand-in for pynetdicom's association ------------------------


def _command(message_id: int, sop_uid: str) -> bytes:
    from pynetdicom.dimse_messages import C_STORE_RQ
    from pynetdicom.dsutils import encode

    req = C_STORE()
    req.MessageID = message_id
    req.AffectedSOPClassUID = CT
    req.AffectedSOPInstanceUID = sop_uid
    req.Priority = 0
    req.DataSet = io.BytesIO(b"x")
    msg = C_STORE_RQ()
    msg.primitive_to_message(req)
    return bytes(encode(msg.command_set, True, True))


def _pdu(*pdvs: tuple[int, int, bytes]) -> memoryview:
    body = b"".join(struct.pack(">IBB", len(f) + 2, cx, h) + f for cx, h, f in pdvs)
    return memoryview(body)


class _Recorder:
    def __init__(self, tmp: Path) -> None:
        self.tmp = tmp
        self.stored: list[tuple[bytes, StoreRequest, bool]] = []
        self.sent: list[bytes] = []
        self.after: list[tuple[int, bool, bool]] = []
        self.slow_s = 0.0
        self.n = 0

    def new_file(self) -> Path:
        self.n += 1
        return self.tmp / f"{self.n}.part"

    def store(
        self, source: memoryview | Path, request: StoreRequest, later: list[Callable[[], None]]
    ) -> int:
        on_disk = isinstance(source, Path)
        data = source.read_bytes() if isinstance(source, Path) else bytes(source)
        self.stored.append((data, request, on_disk))
        if not on_disk:  # work after the response still sees the data set's memory intact
            n = len(self.stored)

            def after() -> None:
                time.sleep(self.slow_s)  # a disk slower than the network
                self.after.append((n, len(self.sent) >= n, bytes(source) == data))

            later.append(after)
        return 0x0000


def _receiver(tmp: Path, spill_bytes: int = 1 << 20) -> tuple[StoreReceiver, _Recorder]:
    cx = SimpleNamespace(as_scp=True, transfer_syntax=["1.2.840.10008.1.2.1"])
    assoc = SimpleNamespace(
        dimse=SimpleNamespace(message=None),
        _accepted_cx={1: cx, 3: cx},
        acceptor=SimpleNamespace(accepted_common_extended={}),
        requestor=SimpleNamespace(ae_title="MODALITY"),
    )
    rec = _Recorder(tmp)
    receiver = StoreReceiver(
        assoc, rec.sent.append, new_file=rec.new_file, store=rec.store, spill_bytes=spill_bytes
    )
    return receiver, rec


def test_a_data_set_larger_than_the_spill_size_is_stored_whole_from_a_file(tmp_path: Path) -> None:
    receiver, rec = _receiver(tmp_path, spill_bytes=1000)
    chunks = [bytes([i]) * 700 for i in range(5)]
    assert receiver.take(_pdu((1, 0x03, _command(7, "1.2.3")), (1, 0x00, chunks[0])))
    for chunk in chunks[1:-1]:
        assert receiver.take(_pdu((1, 0x00, chunk)))
    assert receiver.take(_pdu((1, 0x02, chunks[-1])))
    ((data, request, on_disk),) = rec.stored
    assert on_disk
    assert data == file_meta_bytes(CT, "1.2.3", "1.2.840.10008.1.2.1", "MODALITY") + b"".join(
        chunks
    )
    assert (request.message_id, request.sop_instance_uid) == (7, "1.2.3")
    assert rec.sent == [encode_store_response(1, 7, CT, "1.2.3", 0x0000)]
    assert list(tmp_path.iterdir()) == []  # the recorder did not adopt it: deleted


def test_small_data_sets_are_stored_from_memory_one_after_another(tmp_path: Path) -> None:
    receiver, rec = _receiver(tmp_path)
    for i in range(3):
        assert receiver.take(_pdu((1, 0x03, _command(i, f"1.2.{i}")), (1, 0x02, b"ab" * (i + 1))))
    assert [(data, on_disk) for data, _, on_disk in rec.stored] == [
        (
            file_meta_bytes(CT, f"1.2.{i}", "1.2.840.10008.1.2.1", "MODALITY") + b"ab" * (i + 1),
            False,
        )
        for i in range(3)
    ]
    assert rec.sent == [encode_store_response(1, i, CT, f"1.2.{i}", 0) for i in range(3)]
    receiver.close()  # waits for the writer thread
    # each ran after its own response, with its data set's memory untouched by the next one
    assert sorted(rec.after) == [(1, True, True), (2, True, True), (3, True, True)]


def test_a_data_set_arriving_while_the_last_is_still_written_out_never_overwrites_it(
    tmp_path: Path,
) -> None:
    receiver, rec = _receiver(tmp_path)
    rec.slow_s = 0.005
    for i in range(40):
        data = bytes([i]) * (1000 + 37 * i)
        assert receiver.take(_pdu((1, 0x03, _command(i, f"1.2.{i}")), (1, 0x02, data)))
    receiver.close()
    assert sorted(rec.after) == [(i + 1, True, True) for i in range(40)]


def test_a_command_fragment_inside_a_data_set_is_a_protocol_error(tmp_path: Path) -> None:
    receiver, rec = _receiver(tmp_path)
    assert receiver.take(_pdu((1, 0x03, _command(1, "1.2.3")), (1, 0x00, b"ab")))
    with pytest.raises(ProtocolError):
        receiver.take(_pdu((1, 0x03, _command(2, "1.2.4"))))
    assert rec.stored == [] and rec.sent == []


def test_a_data_fragment_on_another_context_is_a_protocol_error(tmp_path: Path) -> None:
    receiver, rec = _receiver(tmp_path)
    assert receiver.take(_pdu((1, 0x03, _command(1, "1.2.3")), (1, 0x00, b"ab")))
    with pytest.raises(ProtocolError):
        receiver.take(_pdu((3, 0x02, b"cd")))
    assert rec.stored == []


def _echo_command() -> bytes:
    from pynetdicom.dimse_messages import C_ECHO_RQ
    from pynetdicom.dimse_primitives import C_ECHO
    from pynetdicom.dsutils import encode

    req = C_ECHO()
    req.MessageID = 1
    req.AffectedSOPClassUID = "1.2.840.10008.1.1"
    msg = C_ECHO_RQ()
    msg.primitive_to_message(req)
    return bytes(encode(msg.command_set, True, True))


def test_messages_it_does_not_serve_are_left_to_pynetdicom(tmp_path: Path) -> None:
    receiver, rec = _receiver(tmp_path)
    store = _command(1, "1.2.3")
    assert not receiver.take(_pdu((1, 0x01, store)))  # the command continues in the next PDU
    assert not receiver.take(_pdu((9, 0x03, store)))  # a context that was not accepted
    assert not receiver.take(_pdu((1, 0x03, _echo_command())))  # not a C-STORE
    assert not receiver.take(_pdu((1, 0x03, b"\xff\xff\x01")))  # a command it cannot decode
    assert not receiver.busy and rec.stored == [] and rec.sent == []


# -- end to end: the same files as pynetdicom's path ----------------------------------------


@pytest.fixture
def gateways(tmp_path: Path) -> Iterator[tuple[Any, Spool, Any, Spool, Any, Spool]]:
    spools = [Spool(tmp_path / name) for name in ("fast", "slow", "tiny")]
    servers = [
        start_scp(ScpSettings(ae_title="GW", port=0), spools[0]),
        start_scp(ScpSettings(ae_title="GW", port=0, fast_store=False), spools[1]),
        # a PDU too small for the command set: every message goes pynetdicom's way
        start_scp(ScpSettings(ae_title="GW", port=0, maximum_pdu_size=96), spools[2]),
    ]
    yield servers[0], spools[0], servers[1], spools[1], servers[2], spools[2]
    for server in servers:
        server.shutdown()


def _send(server: Any, paths: list[Path]) -> list[int]:
    ae = AE(ae_title="MODALITY")
    for sop_class in (CTImageStorage, MRImageStorage):
        for syntax in (ImplicitVRLittleEndian, ExplicitVRLittleEndian):
            ae.add_requested_context(sop_class, syntax)
    assoc = ae.associate("127.0.0.1", server.server_address[1], ae_title="GW")
    assert assoc.is_established
    try:
        return [int(assoc.send_c_store(p).Status) for p in paths]
    finally:
        assoc.release()


def test_the_fast_path_spools_the_same_bytes_as_pynetdicoms_path(
    gateways: tuple[Any, Spool, Any, Spool, Any, Spool],
) -> None:
    fast, fast_spool, slow, slow_spool, tiny, tiny_spool = gateways
    paths = [_testdata("CT_small.dcm"), _testdata("MR_small.dcm")]
    for server in (fast, slow, tiny):
        assert _send(server, paths) == [0, 0]
    files = [
        [e.path.read_bytes() for e in s.pending()] for s in (fast_spool, slow_spool, tiny_spool)
    ]
    assert files[0] == files[1] == files[2]
    ds = pydicom.dcmread(io.BytesIO(files[0][0]))
    assert ds.file_meta.SourceApplicationEntityTitle == "MODALITY"
    assert ds.SOPInstanceUID == pydicom.dcmread(paths[0]).SOPInstanceUID


def test_the_fast_path_refuses_truncated_and_mismatched_datasets_with_a_reason(
    gateways: tuple[Any, Spool, Any, Spool, Any, Spool],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    fast, fast_spool, *_ = gateways
    monkeypatch.setattr(_config, "STORE_SEND_CHUNKED_DATASET", True)  # send the bytes as they are
    raw = _testdata("CT_small.dcm").read_bytes()
    truncated = tmp_path / "truncated.dcm"
    truncated.write_bytes(raw[:-100])
    ds = pydicom.dcmread(_testdata("CT_small.dcm"))
    ds.SOPClassUID = MRImageStorage  # the file meta (and so the request) still say CT
    mismatched = tmp_path / "mismatched.dcm"
    ds.save_as(mismatched)
    with caplog.at_level(logging.WARNING):
        assert _send(fast, [truncated, mismatched]) == [0xC210, 0xA900]
    assert "cut short" in caplog.text and "is not the context's" in caplog.text
    assert fast_spool.pending() == []
    assert list(fast_spool.incoming.iterdir()) == []


def test_a_gateway_told_to_stop_aborts_open_associations_instead_of_waiting_for_them(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    spool = Spool(tmp_path / "spool")
    gw = gateway_process(spool, ScpSettings(ae_title="GW", port=0), journal_bytes=64 << 20)
    port = gw.start()
    ae = AE(ae_title="MODALITY")
    ae.add_requested_context(CTImageStorage)
    assoc = ae.associate("127.0.0.1", port, ae_title="GW")
    assert assoc.is_established
    assert assoc.send_c_store(_testdata("CT_small.dcm")).Status == 0
    with caplog.at_level(logging.ERROR, logger="pacs_gateway.process"):
        gw.stop(timeout=15)  # the association stays open: the modality never releases it
    assert "did not stop" not in caplog.text
    assoc.dul.join(10)
    assert assoc.is_aborted
    assert len(spool.pending()) == 1

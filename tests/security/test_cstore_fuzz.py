"""Fuzz the gateway's C-STORE path (#14): malformed and deflated data sets, sent as raw bytes
over real associations to the real SCP (fast path and journal on), from a seeded generator
(bounded: a few hundred cases, well under a minute). Every one gets a clear status, no handler
exception escapes as a traceback, the association stays usable, and everything answered
Success is in the spool with the bytes that were sent."""

from __future__ import annotations

import copy
import io
import logging
import random
import zlib
from collections.abc import Iterator
from pathlib import Path

import pydicom
import pytest
from pydicom.data import get_testdata_file
from pydicom.uid import (
    UID,
    DeflatedExplicitVRLittleEndian,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    generate_uid,
)
from pynetdicom import AE, _config
from pynetdicom.dsutils import encode_file_meta
from pynetdicom.sop_class import CTImageStorage, MRImageStorage  # type: ignore[attr-defined]

from image_store.structure import file_meta_end
from pacs_gateway.scp import ScpSettings, start_scp
from pacs_gateway.spool import Spool

SEED = 14
CASES = 240
CLEAR_STATUSES = {0x0000, 0xC210, 0xA900, 0xA700}
SYNTAXES = (ExplicitVRLittleEndian, ImplicitVRLittleEndian, DeflatedExplicitVRLittleEndian)


@pytest.fixture
def chunked_send() -> Iterator[None]:
    """pynetdicom sends a file's data set bytes as they are (never decoded and re-encoded)."""
    old = _config.STORE_SEND_CHUNKED_DATASET
    _config.STORE_SEND_CHUNKED_DATASET = True
    yield
    _config.STORE_SEND_CHUNKED_DATASET = old


def _part10(ds: pydicom.Dataset, syntax: str, sop: str, dataset_sop: str) -> tuple[bytes, bytes]:
    """``ds`` in ``syntax``: (a file meta naming ``sop``, the data set naming
    ``dataset_sop``)."""
    ds.file_meta.TransferSyntaxUID = UID(syntax)
    ds.SOPInstanceUID = UID(dataset_sop)
    ds.file_meta.MediaStorageSOPInstanceUID = UID(dataset_sop)
    buf = io.BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    part10 = buf.getvalue()
    end = file_meta_end(part10)
    assert end is not None
    meta = copy.deepcopy(ds.file_meta)
    meta.MediaStorageSOPInstanceUID = UID(sop)
    return b"\0" * 128 + b"DICM" + encode_file_meta(meta), part10[end[0] :]


def _mutate(rng: random.Random, dataset: bytes, deflated: bool) -> bytes:
    """One of: cut short, bytes flipped, garbage inserted, a length field broken, a value
    duplicated, a huge zero run (deflated: a bomb), or random bytes; deflated data sets are
    mutated before or after deflating."""
    raw = zlib.decompress(dataset, -zlib.MAX_WBITS) if deflated else dataset
    kind = rng.randrange(8)
    data = bytearray(raw)
    if kind == 0:
        data = data[: rng.randrange(len(data))]
    elif kind == 1:
        for _ in range(rng.randint(1, 16)):
            data[rng.randrange(len(data))] = rng.randrange(256)
    elif kind == 2:
        at = rng.randrange(len(data))
        data[at:at] = rng.randbytes(rng.randint(1, 64))
    elif kind == 3:
        at = rng.randrange(0, max(1, len(data) - 8), 2)
        broken = (b"\xff\xff\xff\xff", b"\xff\xff\x00\x00", b"\0\0\0\x7f")
        data[at + 4 : at + 8] = rng.choice(broken)
    elif kind == 4:
        at = rng.randrange(len(data))
        data += data[at : at + rng.randint(8, 256)]
    elif kind == 5:  # a run of zeros: deflated, a bomb (~1000x)
        run = (32 if deflated else 1) * 1024 * 1024
        data += b"\x09\x00\x11\x10OB\0\0" + run.to_bytes(4, "little") + b"\0" * run
    elif kind == 6:
        data = bytearray(rng.randbytes(rng.randint(0, 2048)))
    out = bytes(data)
    if deflated:
        packer = zlib.compressobj(6, zlib.DEFLATED, -zlib.MAX_WBITS)
        out = packer.compress(out) + packer.flush()
        if kind == 7:  # broken deflate stream
            cut = bytearray(out[: max(1, rng.randrange(len(out)))])
            cut[rng.randrange(len(cut))] ^= 0xFF
            out = bytes(cut)
    return out


def _cases(tmp: Path) -> Iterator[tuple[Path, str, bytes, bool]]:
    """(file to send, its SOP Instance UID, the data set bytes sent, whether deflated)."""
    rng = random.Random(SEED)
    bases = [pydicom.dcmread(str(get_testdata_file(n))) for n in ("CT_small.dcm", "MR_small.dcm")]
    for i in range(CASES):
        ds, syntax = rng.choice(bases), rng.choice(SYNTAXES)
        sop = generate_uid()
        # most carry the request's UID; the rest another (a mismatch to refuse)
        meta, body = _part10(ds, syntax, sop, sop if rng.random() < 0.85 else generate_uid())
        sent = _mutate(rng, body, syntax == DeflatedExplicitVRLittleEndian)
        path = tmp / f"{i:04d}.dcm"
        path.write_bytes(meta + sent)
        yield path, sop, sent, syntax == DeflatedExplicitVRLittleEndian


def test_malformed_and_deflated_data_sets_get_clear_statuses_and_nothing_acked_is_lost(
    tmp_path: Path,
    chunked_send: None,
    caplog: pytest.LogCaptureFixture,
) -> None:
    spool = Spool(tmp_path / "spool", journal_bytes=64 * 1024 * 1024)
    server = start_scp(ScpSettings(ae_title="GW", port=0), spool)
    (tmp_path / "cases").mkdir()
    cases = list(_cases(tmp_path / "cases"))
    acked: dict[str, bytes] = {}
    deflated: dict[str, bool] = {}
    statuses: dict[int, int] = {}
    caplog.set_level(logging.WARNING)
    try:
        ae = AE(ae_title="FUZZER")
        for cx in (CTImageStorage, MRImageStorage):
            for syntax in SYNTAXES:  # one context each: the acceptor takes one syntax per context
                ae.add_requested_context(cx, syntax)
        assoc = ae.associate("127.0.0.1", server.server_address[1], ae_title="GW")
        assert assoc.is_established
        for path, sop, sent, is_deflated in cases:
            if not assoc.is_established:  # a case the gateway aborted: a new association
                assoc = ae.associate("127.0.0.1", server.server_address[1], ae_title="GW")
                assert assoc.is_established
            rsp = assoc.send_c_store(path)
            assert "Status" in rsp, f"no answer for {path.name}"
            status = int(rsp.Status)
            assert status in CLEAR_STATUSES, f"{path.name}: 0x{status:04X}"
            statuses[status] = statuses.get(status, 0) + 1
            if status == 0:
                acked[sop] = sent
                deflated[sop] = is_deflated
        assoc.release()
    finally:
        server.shutdown()
        spool.close()
    assert statuses.get(0, 0) > 10 and statuses.get(0xC210, 0) > 10, statuses
    spooled = {e.sop_uid: e.path.read_bytes() for e in spool.pending()}
    for sop, sent in acked.items():
        assert sop in spooled, f"{sop} acknowledged but not spooled"
        assert spooled[sop].endswith(sent)
        if deflated[sop]:  # no deflate bomb was taken (the zero runs inflate to 32 MiB)
            inflater = zlib.decompressobj(-zlib.MAX_WBITS)
            assert len(inflater.decompress(sent, 16 * 1024 * 1024)) < 16 * 1024 * 1024
    for record in caplog.records:
        assert record.exc_info is None, record.getMessage()
        assert "Traceback" not in record.getMessage()

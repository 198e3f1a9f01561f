"""Every DICOM file shipped with pydicom is stored byte-exact or refused with a reason."""

from __future__ import annotations

import io
import logging
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pydicom
import pydicom.data
import pytest
from pydicom.dataset import FileMetaDataset

from pacs_gateway.access import Rights
from pacs_gateway.metrics import StoreCounters
from pacs_gateway.scp import STATUS_SUCCESS, handle_store
from pacs_gateway.spool import Spool
from tests.corpus import CORPUS, check_corpus
from tests.e2e.fault_harness import dataset_bytes


@dataclass
class _Requestor:
    ae_title: str = "MODALITY"


@dataclass
class _Assoc:
    requestor: _Requestor = field(default_factory=_Requestor)
    rights: Rights = Rights.BOTH  # what the gateway's ACSE grants an allowed calling AE


@dataclass
class _Request:
    AffectedSOPInstanceUID: str
    AffectedSOPClassUID: str
    DataSet: io.BytesIO


@dataclass
class StoreEvent:
    """What pynetdicom hands the C-STORE handler: the request and the context's file meta."""

    request: _Request
    file_meta: FileMetaDataset
    assoc: _Assoc = field(default_factory=_Assoc)


def _event_for(path: str) -> tuple[StoreEvent, bytes]:
    raw = Path(path).read_bytes()
    fp = io.BytesIO(raw)
    preamble = pydicom.filereader.read_preamble(fp, True)
    if preamble is None:
        fp.seek(0)
    meta = pydicom.filereader._read_file_meta_info(fp)
    body = fp.read()
    with warnings.catch_warnings():  # some files are deliberately odd (e.g. the wrong VR mode)
        warnings.simplefilter("ignore")
        ds: Any = pydicom.dcmread(path, force=True, stop_before_pixels=True)
        # a sending SCU takes the UIDs from the dataset (the files' meta does not always agree)
        sop = str(ds.get("SOPInstanceUID") or meta.get("MediaStorageSOPInstanceUID") or "1.2.3.4")
        cls = str(ds.get("SOPClassUID") or meta.get("MediaStorageSOPClassUID") or "1.2.3")
    out = FileMetaDataset()
    with warnings.catch_warnings():  # pynetdicom passes on whatever UIDs the SCU sent
        warnings.simplefilter("ignore")
        out.MediaStorageSOPClassUID = cls
        out.MediaStorageSOPInstanceUID = sop
        out.TransferSyntaxUID = meta.get("TransferSyntaxUID") or "1.2.840.10008.1.2"
    out.ImplementationClassUID = "1.2.826.0.1.3680043.9.3811.3.0.4"
    return StoreEvent(_Request(sop, cls, io.BytesIO(body)), out), body


@pytest.mark.parametrize("path", CORPUS, ids=[Path(p).name for p in CORPUS])
def test_stored_byte_exact_or_refused_with_a_reason(
    path: str, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    spool = Spool(tmp_path)
    event, body = _event_for(path)
    with caplog.at_level(logging.WARNING, logger="pacs_gateway.scp"):
        status = handle_store(event, spool, StoreCounters())
    if status == STATUS_SUCCESS:
        (entry,) = spool.pending()
        assert dataset_bytes(entry.path.read_bytes()) == body
    else:
        assert spool.pending() == []
        assert any("refused" in r.getMessage() for r in caplog.records)


def test_most_of_the_corpus_is_accepted(tmp_path: Path) -> None:
    check_corpus()
    accepted = 0
    for n, path in enumerate(CORPUS):
        event, _ = _event_for(path)
        accepted += handle_store(event, Spool(tmp_path / str(n)), StoreCounters()) == 0
    assert accepted >= 0.8 * len(CORPUS)


def test_a_truncated_dataset_is_refused(tmp_path: Path) -> None:
    (path,) = [p for p in CORPUS if p.endswith("/CT_small.dcm")]
    event, body = _event_for(path)
    event.request.DataSet = io.BytesIO(body[:-100])
    assert handle_store(event, Spool(tmp_path), StoreCounters()) == 0xC210


def test_a_dataset_that_is_not_the_requested_instance_is_refused(tmp_path: Path) -> None:
    (path,) = [p for p in CORPUS if p.endswith("/CT_small.dcm")]
    event, _ = _event_for(path)
    event.request.AffectedSOPInstanceUID = "1.2.3.4.5"
    assert handle_store(event, Spool(tmp_path), StoreCounters()) == 0xC210
    event, _ = _event_for(path)
    event.request.AffectedSOPClassUID = "1.2.840.10008.5.1.4.1.1.4"
    assert handle_store(event, Spool(tmp_path), StoreCounters()) == 0xA900

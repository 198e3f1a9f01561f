"""An outside host at the gateway's DICOM port (#14 item 4), against the real stack
(`cloudfilm serve`, two SCP processes): unknown calling AEs and wrong called AEs get the
A-ASSOCIATE-RJ reasons, an allowed AE calling from the wrong host too, a store-only AE gets no
Query/Retrieve, universal matches are refused with an error comment, every query and retrieve
lands in the audit log without patient identifiers, and idle connections cannot lock
modalities out (a liveness bound, far under pynetdicom's own ACSE timeout set here)."""

from __future__ import annotations

import socket
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pydicom
import pytest
from pydicom.dataset import Dataset
from pynetdicom import AE, evt
from pynetdicom.presentation import build_role
from pynetdicom.sop_class import (  # type: ignore[attr-defined]
    CTImageStorage,
    MRImageStorage,
    PatientRootQueryRetrieveInformationModelGet,
    StudyRootQueryRetrieveInformationModelFind,
    StudyRootQueryRetrieveInformationModelGet,
    Verification,
)

from cloudfilm.synth import synthesize_study
from image_store.audit import SqlAuditLog
from tests.e2e.conftest import Server, start_server, stop_server
from tests.e2e.test_end_to_end import storescu, wait_indexed

pytestmark = pytest.mark.e2e

ACSE_TIMEOUT_S = 120
"""The stack's ACSE timeout here: a slot can only come back sooner by the gateway noticing
the peer left (pynetdicom kept it for the whole ACSE timeout)."""
LIVENESS_S = 20.0
PER_HOST = 4


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Server, list[Path]]]:
    root = tmp_path_factory.mktemp("outside")
    env = {
        "CLOUDFILM_DICOM_ALLOWED_AES": "MODALITY:store,WS1:both@127.0.0.1,WS2:query@127.0.0.9",
        "CLOUDFILM_DICOM_ACSE_TIMEOUT_S": str(ACSE_TIMEOUT_S),
        "CLOUDFILM_DICOM_MAX_ASSOCIATIONS_PER_HOST": str(PER_HOST),
    }
    proc, srv = start_server(root / "data", root / "serve.log", env)
    study = synthesize_study(root / "study", modality="MR", images=3, seed=33)
    storescu(srv, root / "study")
    ds = pydicom.dcmread(study[0], stop_before_pixels=True)
    wait_indexed(srv, srv.token(), ds.StudyInstanceUID, len(study))
    yield srv, study
    stop_server(proc)


def _associate(
    srv: Server,
    calling: str,
    *contexts: str,
    called: str | None = None,
    source: str = "127.0.0.1",
    **kw: Any,
) -> Any:
    ae = AE(ae_title=calling)
    for cx in contexts or (Verification,):
        ae.add_requested_context(cx)
    assoc = ae.associate(
        srv.dicom_host,
        srv.dicom_port,
        ae_title=called or srv.ae,
        bind_address=(source, 0),
        **kw,
    )
    if not assoc.is_established:
        # pynetdicom's requestor leaves its socket open when the peer refuses
        assoc.dul.join(5)
        raw = getattr(assoc.dul.socket, "socket", None)
        if raw is not None:
            raw.close()
    return assoc


def _reject_reason(assoc: Any) -> tuple[int, int, int]:
    assert assoc.is_rejected
    rj = assoc.acceptor.primitive
    return int(rj.result), int(rj.result_source), int(rj.diagnostic)


def test_an_unknown_calling_ae_is_rejected_as_not_recognized(
    stack: tuple[Server, list[Path]],
) -> None:
    srv, _ = stack
    assert _reject_reason(_associate(srv, "INTRUDER")) == (0x01, 0x01, 0x03)


def test_a_wrong_called_ae_is_rejected_as_not_recognized(
    stack: tuple[Server, list[Path]],
) -> None:
    srv, _ = stack
    assert _reject_reason(_associate(srv, "MODALITY", called="ANY-SCP")) == (0x01, 0x01, 0x07)


def test_an_allowed_ae_calling_from_another_host_is_rejected(
    stack: tuple[Server, list[Path]],
) -> None:
    srv, _ = stack
    assert _reject_reason(_associate(srv, "WS2")) == (0x01, 0x01, 0x03)  # WS2 is at .9
    ok = _associate(srv, "WS2", source="127.0.0.9")
    assert ok.is_established
    ok.release()


def test_a_store_only_ae_gets_no_query_retrieve_context(
    stack: tuple[Server, list[Path]],
) -> None:
    srv, _ = stack
    assoc = _associate(
        srv,
        "MODALITY",
        StudyRootQueryRetrieveInformationModelFind,
        StudyRootQueryRetrieveInformationModelGet,
        CTImageStorage,
    )
    try:
        assert assoc.is_established
        accepted = {str(cx.abstract_syntax) for cx in assoc.accepted_contexts}
        assert accepted == {str(CTImageStorage)}
    finally:
        assoc.release()


def test_a_query_only_ae_may_not_store(stack: tuple[Server, list[Path]]) -> None:
    srv, study = stack
    assoc = _associate(srv, "WS2", MRImageStorage, source="127.0.0.9")
    try:
        status = assoc.send_c_store(pydicom.dcmread(study[0]))
        assert status.Status == 0x0124  # Refused: Not Authorized
    finally:
        assoc.release()


def _find(srv: Server, identifier: Dataset, calling: str = "WS1") -> list[tuple[Any, Any]]:
    assoc = _associate(srv, calling, StudyRootQueryRetrieveInformationModelFind)
    assert assoc.is_established
    try:
        return list(assoc.send_c_find(identifier, StudyRootQueryRetrieveInformationModelFind))
    finally:
        assoc.release()


def _get(srv: Server, identifier: Dataset, model: str) -> tuple[list[Any], list[Any]]:
    """(the final statuses, the instances received) of a C-GET by WS1."""
    received: list[Any] = []

    def on_store(event: Any) -> int:
        received.append(event.dataset)
        return 0

    ae = AE(ae_title="WS1")
    ae.add_requested_context(model)
    ae.add_requested_context(MRImageStorage)
    assoc = ae.associate(
        srv.dicom_host,
        srv.dicom_port,
        ae_title=srv.ae,
        ext_neg=[build_role(MRImageStorage, scp_role=True)],
        evt_handlers=[(evt.EVT_C_STORE, on_store)],
    )
    assert assoc.is_established
    try:
        statuses = [s for s, _ in assoc.send_c_get(identifier, model) if s is not None]
    finally:
        assoc.release()
    return statuses, received


def _ident(level: str, **keys: str) -> Dataset:
    ds = Dataset()
    ds.QueryRetrieveLevel = level
    for k, v in keys.items():
        setattr(ds, k, v)
    return ds


@pytest.mark.parametrize(
    ("level", "keys"),
    [
        ("PATIENT", {"PatientID": "*"}),
        ("PATIENT", {"PatientID": ""}),
        ("STUDY", {"PatientID": "*"}),
    ],
)
def test_universal_match_retrieves_are_refused_with_a_reason(
    stack: tuple[Server, list[Path]], level: str, keys: dict[str, str]
) -> None:
    srv, _ = stack
    model = (
        PatientRootQueryRetrieveInformationModelGet
        if level == "PATIENT"
        else StudyRootQueryRetrieveInformationModelGet
    )
    statuses, received = _get(srv, _ident(level, StudyInstanceUID="", **keys), model)
    assert received == []
    assert [int(s.Status) for s in statuses] == [0xA900], statuses
    assert "universal match refused" in str(statuses[-1].ErrorComment)


def test_a_bare_wildcard_find_over_the_hospital_is_refused_and_a_dated_one_answers(
    stack: tuple[Server, list[Path]],
) -> None:
    srv, study = stack
    ds = pydicom.dcmread(study[0], stop_before_pixels=True)
    refused = _find(srv, _ident("STUDY", PatientName="*", StudyInstanceUID=""))
    assert [int(s.Status) for s, _ in refused] == [0xA900], refused
    assert "universal match refused" in str(refused[0][0].ErrorComment)
    dated = _find(srv, _ident("STUDY", StudyDate=str(ds.StudyDate), StudyInstanceUID=""))
    assert [i.StudyInstanceUID for s, i in dated if i is not None] == [ds.StudyInstanceUID]


def test_queries_and_retrieves_are_audited_without_patient_identifiers(
    stack: tuple[Server, list[Path]],
) -> None:
    srv, study = stack
    ds = pydicom.dcmread(study[0], stop_before_pixels=True)
    _find(srv, _ident("STUDY", PatientID=str(ds.PatientID), StudyInstanceUID=""))
    statuses, received = _get(
        srv,
        _ident("STUDY", StudyInstanceUID=ds.StudyInstanceUID),
        StudyRootQueryRetrieveInformationModelGet,
    )
    assert len(received) == len(study) and int(statuses[-1].Status) == 0
    log = SqlAuditLog(srv.data / "index.sqlite")  # the region's state is in the index database
    try:
        events = [e for e in log.iter_events() if e.role == "dicom"]
    finally:
        log.close()
    finds = [e for e in events if e.action == "C-FIND" and "PatientID" in e.resource]
    gets = [e for e in events if e.action == "C-GET" and ds.StudyInstanceUID in e.resource]
    assert finds and gets
    find, get = finds[-1], gets[-1]
    assert (find.actor, find.remote, find.status) == ("WS1", "127.0.0.1", 0)
    assert "level=STUDY" in find.resource and "matched=1" in find.resource
    assert get.resource.startswith(f"/dicom/C-GET/studies/{ds.StudyInstanceUID}?")
    assert f"matched={len(study)}" in get.resource and get.status == 0
    for e in events:
        text = repr(e)
        assert str(ds.PatientID) not in text
        assert str(ds.PatientName).split("^")[0] not in text


def _store_one(srv: Server, path: Path, source: str) -> int:
    assoc = _associate(srv, "MODALITY", MRImageStorage, source=source)
    if not assoc.is_established:
        return -1
    try:
        return int(assoc.send_c_store(pydicom.dcmread(path)).Status)
    finally:
        assoc.release()


def test_idle_connections_from_one_host_lock_no_modality_out(
    stack: tuple[Server, list[Path]],
) -> None:
    srv, study = stack
    idle = []
    for _ in range(60):
        s = socket.socket()
        s.bind(("127.0.0.1", 0))
        try:
            s.connect((srv.dicom_host, srv.dicom_port))
        except OSError:
            s.close()
            continue
        idle.append(s)
    try:
        assert len(idle) >= 2 * PER_HOST
        time.sleep(0.5)  # let both gateway processes take the connections they accept
        assert _store_one(srv, study[0], "127.0.0.2") == 0  # another host stores meanwhile
    finally:
        for s in idle:
            s.close()
    # the same host stores again as soon as its connections are gone, not after the ACSE
    # timeout (a liveness bound well under it)
    deadline = time.monotonic() + LIVENESS_S
    status = _store_one(srv, study[1], "127.0.0.1")
    while status != 0 and time.monotonic() < deadline:
        time.sleep(0.2)
        status = _store_one(srv, study[1], "127.0.0.1")
    assert status == 0

"""Priors to the workstation: DCMTK findscu, getscu and movescu against the gateway."""

from __future__ import annotations

import os
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pydicom
import pytest
from pynetdicom import AE, AllStoragePresentationContexts, evt

from cloudfilm.synth import synthesize_study
from tests.e2e.conftest import Server, start_server, stop_server
from tests.e2e.test_end_to_end import storescu, wait_indexed

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def workstation() -> Iterator[tuple[int, list[Any]]]:
    """A C-MOVE destination: a pynetdicom Storage SCP on 127.0.0.1 that keeps what it gets."""
    received: list[Any] = []

    def on_store(event: Any) -> int:
        received.append(event.dataset)
        return 0

    ae = AE(ae_title="WS1")
    ae.supported_contexts = AllStoragePresentationContexts
    server = ae.start_server(
        ("127.0.0.1", 0), block=False, evt_handlers=[(evt.EVT_C_STORE, on_store)]
    )
    yield int(server.server_address[1]), received
    server.shutdown()


@pytest.fixture(scope="module")
def qr_server(
    tmp_path_factory: pytest.TempPathFactory, workstation: tuple[int, list[Any]]
) -> Iterator[tuple[Server, list[Path]]]:
    root = tmp_path_factory.mktemp("qr")
    env = {"CLOUDFILM_MOVE_DESTINATIONS": f"WS1@127.0.0.1:{workstation[0]}"}
    proc, srv = start_server(root / "data", root / "serve.log", env)
    study = synthesize_study(root / "study", modality="MR", images=4, seed=21)
    storescu(srv, root / "study")
    ds = pydicom.dcmread(study[0], stop_before_pixels=True)
    wait_indexed(srv, srv.token(), ds.StudyInstanceUID, len(study))
    yield srv, study
    stop_server(proc)


def _run(tool: str, srv: Server, *args: str, cwd: Path | None = None) -> str:
    out = subprocess.run(
        [tool, "-aet", "WS1", "-aec", srv.ae, *args, srv.dicom_host, str(srv.dicom_port)],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=cwd,
        env={**os.environ, "TCP_NODELAY": "1"},
    )
    assert out.returncode == 0, out.stdout + out.stderr
    return out.stdout + out.stderr


def test_findscu_finds_the_study_its_series_and_images(
    qr_server: tuple[Server, list[Path]], tmp_path: Path
) -> None:
    srv, study = qr_server
    ds = pydicom.dcmread(study[0], stop_before_pixels=True)
    _run(
        "findscu",
        srv,
        "-S",
        "-X",
        "-od",
        str(tmp_path),
        "-k",
        "QueryRetrieveLevel=STUDY",
        "-k",
        f"PatientID={ds.PatientID}",
        "-k",
        "StudyInstanceUID",
        "-k",
        "ModalitiesInStudy",
        "-k",
        "NumberOfStudyRelatedInstances",
    )
    (rsp,) = [pydicom.dcmread(p) for p in sorted(tmp_path.glob("rsp*.dcm"))]
    assert rsp.StudyInstanceUID == ds.StudyInstanceUID
    assert rsp.ModalitiesInStudy == "MR" and int(rsp.NumberOfStudyRelatedInstances) == 4
    images = tmp_path / "images"
    images.mkdir()
    _run(
        "findscu",
        srv,
        "-S",
        "-X",
        "-od",
        str(images),
        "-k",
        "QueryRetrieveLevel=IMAGE",
        "-k",
        f"StudyInstanceUID={ds.StudyInstanceUID}",
        "-k",
        f"SeriesInstanceUID={ds.SeriesInstanceUID}",
        "-k",
        "SOPInstanceUID",
    )
    assert len(list(images.glob("rsp*.dcm"))) == 4


def test_findscu_with_a_wildcard_name_and_date_range(
    qr_server: tuple[Server, list[Path]], tmp_path: Path
) -> None:
    srv, study = qr_server
    ds = pydicom.dcmread(study[0], stop_before_pixels=True)
    alpha = str(ds.PatientName).split("=")[0]
    _run(
        "findscu",
        srv,
        "-P",
        "-X",
        "-od",
        str(tmp_path),
        "-k",
        "QueryRetrieveLevel=PATIENT",
        "-k",
        f"PatientName={alpha[:3]}*",
        "-k",
        "PatientID",
    )
    assert [pydicom.dcmread(p).PatientID for p in tmp_path.glob("rsp*.dcm")] == [ds.PatientID]
    none = tmp_path / "none"
    none.mkdir()
    _run(
        "findscu",
        srv,
        "-S",
        "-X",
        "-od",
        str(none),
        "-k",
        "QueryRetrieveLevel=STUDY",
        "-k",
        "StudyDate=19000101-19001231",
        "-k",
        "StudyInstanceUID",
    )
    assert list(none.glob("rsp*.dcm")) == []


def test_getscu_retrieves_the_series(qr_server: tuple[Server, list[Path]], tmp_path: Path) -> None:
    srv, study = qr_server
    ds = pydicom.dcmread(study[0], stop_before_pixels=True)
    _run(
        "getscu",
        srv,
        "-S",
        "-od",
        str(tmp_path),
        "-k",
        "QueryRetrieveLevel=SERIES",
        "-k",
        f"StudyInstanceUID={ds.StudyInstanceUID}",
        "-k",
        f"SeriesInstanceUID={ds.SeriesInstanceUID}",
    )
    got = {pydicom.dcmread(p).SOPInstanceUID: pydicom.dcmread(p) for p in tmp_path.iterdir()}
    assert len(got) == 4
    for path in study:
        original = pydicom.dcmread(path)
        assert got[original.SOPInstanceUID].PixelData == original.PixelData


def test_movescu_sends_the_study_to_a_known_destination(
    qr_server: tuple[Server, list[Path]], workstation: tuple[int, list[Any]]
) -> None:
    srv, study = qr_server
    ds = pydicom.dcmread(study[0], stop_before_pixels=True)
    _, received = workstation
    received.clear()
    _run(
        "movescu",
        srv,
        "-S",
        "-aem",
        "WS1",
        "-k",
        "QueryRetrieveLevel=STUDY",
        "-k",
        f"StudyInstanceUID={ds.StudyInstanceUID}",
    )
    assert sorted(r.SOPInstanceUID for r in received) == sorted(
        pydicom.dcmread(p, stop_before_pixels=True).SOPInstanceUID for p in study
    )
    out = subprocess.run(
        [
            "movescu",
            "-aet",
            "WS1",
            "-aec",
            srv.ae,
            "-S",
            "-aem",
            "NOWHERE",
            "-k",
            "QueryRetrieveLevel=STUDY",
            "-k",
            f"StudyInstanceUID={ds.StudyInstanceUID}",
            srv.dicom_host,
            str(srv.dicom_port),
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert "Refused: MoveDestinationUnknown" in out.stdout + out.stderr


def test_movescu_of_every_patient_is_refused(
    qr_server: tuple[Server, list[Path]], workstation: tuple[int, list[Any]]
) -> None:
    srv, _ = qr_server
    _, received = workstation
    received.clear()
    out = subprocess.run(
        [
            "movescu",
            "-aet",
            "WS1",
            "-aec",
            srv.ae,
            "-P",
            "-aem",
            "WS1",
            "-k",
            "QueryRetrieveLevel=PATIENT",
            "-k",
            "PatientID=*",
            srv.dicom_host,
            str(srv.dicom_port),
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert "DataSetDoesNotMatchSOPClass" in out.stdout + out.stderr  # 0xA900
    assert received == []

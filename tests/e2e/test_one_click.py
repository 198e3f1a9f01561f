"""The master patient index end to end: a modality at hospital 1 (DCMTK storescu) and a STOW-RS
upload at hospital 2 carry the same resident ID. The gateway's delivery links hospital 1's
patient; the upload links nothing until an administrator links it; a clinician at hospital 1
opens everything in one click once the patient consents on their own link, and the gateway's
C-FIND finds the prior."""

from __future__ import annotations

import io
import subprocess
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pydicom
import pytest
from pydicom.dataset import Dataset

from cloudfilm.synth import synthesize_study
from tests.e2e.conftest import Server, http, start_server, stop_server
from tests.e2e.test_end_to_end import storescu, wait_indexed

RESIDENT_ID = "44030519800101123X"


def _tag_with_resident_id(path: Path, patient_id: str) -> None:
    ds = pydicom.dcmread(path)
    ds.PatientID = patient_id
    item = Dataset()
    item.PatientID = RESIDENT_ID
    item.IssuerOfPatientID = "CN_RESIDENT_ID"
    ds.OtherPatientIDsSequence = [item]
    ds.save_as(path)


@pytest.fixture(scope="module")
def region(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Server, Path, str]]:
    root = tmp_path_factory.mktemp("mpi")
    proc, server = start_server(root / "data", root / "serve.log")
    try:
        ct = synthesize_study(root / "ct", modality="CT", images=2, seed=71)
        for p in ct:
            _tag_with_resident_id(p, "A-0001")
        storescu(server, root / "ct")
        wait_indexed(server, server.token(), str(pydicom.dcmread(ct[0]).StudyInstanceUID), 3)
        (mr,) = synthesize_study(root / "mr", modality="MR", images=1, seed=72)
        _tag_with_resident_id(mr, "B-0777")
        boundary = "cloudfilmboundary"
        body = (
            f"--{boundary}\r\nContent-Type: application/dicom\r\n\r\n".encode()
            + mr.read_bytes()
            + f"\r\n--{boundary}--\r\n".encode()
        )
        request = urllib.request.Request(
            f"{server.base}/dicom-web/studies",
            data=body,
            method="POST",
            headers={
                "Authorization": f"Bearer {server.token(hospital='HOSP2', role='radiologist')}",
                "Content-Type": f'multipart/related; type="application/dicom"; boundary={boundary}',
            },
        )
        with urllib.request.urlopen(request) as r:  # STOW-RS as hospital 2
            assert r.status == 200
        yield server, root, str(pydicom.dcmread(mr).StudyInstanceUID)
    finally:
        stop_server(proc)


def _admin_links_hospital_2(server: Server) -> None:
    r = http(
        f"{server.base}/api/patients/links",
        method="POST",
        token=server.token(role="admin"),
        body={
            "hospital": "HOSP2",
            "patient_id": "B-0777",
            "issuer": "CLOUDFILM-SYNTH",
            "id_issuer": "CN_RESIDENT_ID",
            "id": RESIDENT_ID,
        },
    )
    assert r.status == 201, r.body


def _patient_grants_hospital_1(server: Server) -> None:
    """The patient's own link (made by hospital 2) grants hospital 1 consent."""
    r = http(
        f"{server.base}/api/admin/hospitals",
        method="POST",
        token=server.token(role="admin"),
        body={"id": "HOSP1", "name": "市第一人民医院"},
    )
    assert r.status == 201, r.body
    link = http(
        f"{server.base}/api/shares",
        method="POST",
        token=server.token(hospital="HOSP2"),
        body={"scope": "patient", "patient_id": "B-0777", "issuer": "CLOUDFILM-SYNTH"},
    )
    assert link.status == 201, link.body
    token = link.json()["token"]  # type: ignore[index]
    grant = http(
        f"{server.base}/film/{token}/api/consents", method="POST", body={"hospital": "HOSP1"}
    )
    assert grant.status == 201, grant.body


def test_one_click_withholds_the_other_hospital_until_the_patient_consents(
    region: tuple[Server, Path, str],
) -> None:
    server, _, mr_study = region
    url = f"{server.base}/patients/A-0001/studies"
    before = http(url, token=server.token()).json()
    assert before["linked"] is True  # type: ignore[index]  # by the gateway's delivery
    assert [s["hospital"] for s in before["studies"]] == ["HOSP1"]  # type: ignore[index]
    assert before["withheld"] == 0  # type: ignore[index]  # the STOW-RS upload linked nothing
    _admin_links_hospital_2(server)
    linked = http(url, token=server.token()).json()
    assert linked["withheld"] == 1  # type: ignore[index]
    staff = http(
        f"{server.base}/api/consents",
        method="POST",
        token=server.token(hospital="HOSP2"),
        body={
            "patient": {"hospital": "HOSP2", "patient_id": "B-0777", "issuer": "CLOUDFILM-SYNTH"},
            "grantee_hospital": "HOSP1",
        },
    )
    assert staff.status == 403, staff.body  # staff do not grant consent
    meta = http(f"{server.base}/dicom-web/studies/{mr_study}/metadata", token=server.token())
    assert meta.status == 404
    _patient_grants_hospital_1(server)
    after = http(url, token=server.token()).json()
    assert {s["hospital"] for s in after["studies"]} == {"HOSP1", "HOSP2"}  # type: ignore[index]
    meta = http(f"{server.base}/dicom-web/studies/{mr_study}/metadata", token=server.token())
    assert meta.status == 200


def test_the_gateway_finds_the_consented_prior_for_a_workstation(
    region: tuple[Server, Path, str], tmp_path: Path
) -> None:
    server, _, mr_study = region
    _admin_links_hospital_2(server)  # both idempotent, whichever test ran first
    _patient_grants_hospital_1(server)
    out = subprocess.run(
        [
            "findscu", "-S", "-aet", "WS1", "-aec", server.ae, "-X", "-od", str(tmp_path),
            "-k", "QueryRetrieveLevel=STUDY", "-k", "PatientID=A-0001", "-k", "StudyInstanceUID",
            server.dicom_host, str(server.dicom_port),
        ],
        capture_output=True, timeout=60,
    )  # fmt: skip
    assert out.returncode == 0, out.stderr
    found = {str(pydicom.dcmread(io.BytesIO(p.read_bytes())).StudyInstanceUID)
             for p in tmp_path.glob("rsp*.dcm")}  # fmt: skip
    assert mr_study in found and len(found) == 2

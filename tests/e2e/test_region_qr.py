"""Priors across hospitals at real `cloudfilm gateway run` processes: hospital H1's gateway
delivers a patient's CT; H2's workstation asks H2's gateway (DCMTK findscu, getscu, movescu),
which answers only through the cloud's priors API with H2's credential. Nothing of H1's study
comes back until the patient consents to H2 on their own link; then it is found and fetched
pixel-identical."""

from __future__ import annotations

import os
import re
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pydicom
import pytest
from pydicom.dataset import Dataset
from pynetdicom import AE, AllStoragePresentationContexts, evt

from cloudfilm.synth import synthesize_study
from tests.e2e.conftest import http, register_user
from tests.e2e.test_region import Gateway, Region, _stop, each_gateway, storescu

pytestmark = pytest.mark.e2e

RESIDENT_ID = "44030519800101123X"
ISSUER = "CLOUDFILM-SYNTH"


@dataclass
class Priors:
    region: Region
    h1_study: str
    h1_files: list[Path]
    h2_study: str
    workstation_port: int
    received: list[Dataset] = field(default_factory=list)


def _patient_study(root: Path, name: str, patient_id: str, seed: int) -> tuple[str, list[Path]]:
    """A CT of the one patient, known at this hospital as ``patient_id``, carrying the
    resident ID a gateway's delivery links to the regional person."""
    paths = sorted(
        synthesize_study(root / name, modality="CT", images=3, seed=seed, patient_id=patient_id)
    )
    for path in paths:
        ds = pydicom.dcmread(path)
        item = Dataset()
        item.PatientID = RESIDENT_ID
        item.IssuerOfPatientID = "CN_RESIDENT_ID"
        ds.OtherPatientIDsSequence = [item]
        ds.PatientBirthDate, ds.PatientSex = "19800101", "M"  # one person's, at either hospital
        ds.save_as(path)
    return str(pydicom.dcmread(paths[0], stop_before_pixels=True).StudyInstanceUID), paths


@pytest.fixture(scope="module")
def priors(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Priors]:
    root = tmp_path_factory.mktemp("region-qr")
    received: list[Dataset] = []

    def on_store(event: Any) -> int:
        received.append(event.dataset)
        return 0

    ws = AE(ae_title="WS2")
    ws.supported_contexts = AllStoragePresentationContexts
    server = ws.start_server(
        ("127.0.0.1", 0), block=False, evt_handlers=[(evt.EVT_C_STORE, on_store)]
    )
    assert server is not None
    ws_port = int(server.server_address[1])
    reg = Region(root, root / "cloud")
    try:
        reg.start_cloud()
        for h in ("H1", "H2"):
            register_user(reg.data, f"t.clinician.{h}", h, "clinician")  # and the hospital
            gw = Gateway(h, root / f"gw-{h}", root / f"cred-{h}.json", root / f"gw-{h}.log")
            gw.data.mkdir(mode=0o700)
            (gw.data / "cloudfilm.toml").write_text(
                f'move_destinations = "WS2@127.0.0.1:{ws_port}"\n'
            )
            reg.issue(h, gw.credential)
            reg.gateways[h] = gw
        each_gateway(lambda gw: gw.start(reg.url), reg.gateways.values())
        h1_study, h1_files = _patient_study(root, "h1", "A-0001", 601)
        h2_study, h2_files = _patient_study(root, "h2", "B-0002", 602)
        storescu(reg.gateways["H1"].port, "GWH1", root / "h1")
        storescu(reg.gateways["H2"].port, "GWH2", root / "h2")
        reg.wait_instances(reg.token("H1"), h1_study, len(h1_files))
        reg.wait_instances(reg.token("H2"), h2_study, len(h2_files))
        yield Priors(reg, h1_study, h1_files, h2_study, ws_port, received)
    finally:
        each_gateway(Gateway.stop, reg.gateways.values())
        if reg.proc is not None:
            _stop(reg.proc)
        server.shutdown()


def _dcmtk(tool: str, port: int, *args: str, cwd: Path | None = None) -> str:
    out = subprocess.run(
        [tool, "-v", "-aet", "WS2", "-aec", "GWH2", *args, "127.0.0.1", str(port)],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=cwd,
        env={**os.environ, "TCP_NODELAY": "1"},
    )
    return out.stdout + out.stderr


def _find_studies(port: int, out: Path, *keys: str) -> set[str]:
    out.mkdir()
    log = _dcmtk(
        "findscu", port, "-S", "-X", "-od", str(out), "-k", "QueryRetrieveLevel=STUDY",
        "-k", "StudyInstanceUID", *(a for k in keys for a in ("-k", k)),
    )  # fmt: skip
    assert "Received Final Find Response (Success)" in log, log
    return {str(pydicom.dcmread(p).StudyInstanceUID) for p in out.glob("rsp*.dcm")}


def _get(port: int, out: Path, study_uid: str) -> tuple[str, dict[str, Dataset]]:
    out.mkdir()
    log = _dcmtk(
        "getscu", port, "-S", "-od", str(out), "-k", "QueryRetrieveLevel=STUDY",
        "-k", f"StudyInstanceUID={study_uid}",
    )  # fmt: skip
    got: dict[str, Dataset] = {
        str(ds.SOPInstanceUID): ds for ds in map(pydicom.dcmread, out.iterdir())
    }
    return log, got


def _completed(getscu_log: str) -> int:
    """The Number of Completed Suboperations of getscu's final C-GET response."""
    found = re.search(r"Number of Completed Suboperations\s*:\s*(\d+)", getscu_log)
    assert found is not None, getscu_log
    return int(found[1])


def _move(port: int, study_uid: str) -> str:
    return _dcmtk(
        "movescu", port, "-S", "-aem", "WS2", "-k", "QueryRetrieveLevel=STUDY",
        "-k", f"StudyInstanceUID={study_uid}",
    )  # fmt: skip


def _grant_h2(region: Region) -> None:
    """The patient, on the link H1 gave them, consents to H2 (staff cannot grant it)."""
    link = http(
        f"{region.url}/api/shares",
        method="POST",
        token=region.token("H1"),
        body={"scope": "patient", "patient_id": "A-0001", "issuer": ISSUER},
    )
    assert link.status == 201, link.body
    token = link.json()["token"]  # type: ignore[index]
    grant = http(f"{region.url}/film/{token}/api/consents", method="POST", body={"hospital": "H2"})
    assert grant.status == 201, grant.body


def test_h2s_gateway_finds_and_fetches_h1s_study_only_after_the_patient_consents(
    priors: Priors, tmp_path: Path
) -> None:
    reg, port = priors.region, priors.region.gateways["H2"].port
    pid = "PatientID=B-0002"

    # no consent: H2 sees its own study, nothing of H1's, however it asks
    assert _find_studies(port, tmp_path / "f1", pid) == {priors.h2_study}
    assert _find_studies(port, tmp_path / "f2", f"StudyInstanceUID={priors.h1_study}") == set()
    log, got = _get(port, tmp_path / "g1", priors.h1_study)
    assert got == {} and _completed(log) == 0, log  # like a study that does not exist
    priors.received.clear()
    log = _move(port, priors.h1_study)
    assert "Received Final Move Response" in log, log
    assert priors.received == [], log

    _grant_h2(reg)

    assert _find_studies(port, tmp_path / "f3", pid) == {priors.h1_study, priors.h2_study}
    log, got = _get(port, tmp_path / "g2", priors.h1_study)
    assert _completed(log) == len(priors.h1_files), log
    originals = {
        str(pydicom.dcmread(p).SOPInstanceUID): pydicom.dcmread(p) for p in priors.h1_files
    }
    assert set(got) == set(originals), log
    for sop, original in originals.items():
        assert got[sop].PixelData == original.PixelData
    priors.received.clear()
    log = _move(port, priors.h1_study)
    moved = {str(ds.SOPInstanceUID): ds for ds in priors.received}
    assert set(moved) == set(originals), log
    for sop, original in originals.items():
        assert moved[sop].PixelData == original.PixelData


def test_each_gateway_logs_who_associated_from_where(priors: Priors, tmp_path: Path) -> None:
    h1, h2 = priors.region.gateways["H1"], priors.region.gateways["H2"]
    _find_studies(h2.port, tmp_path / "f", "PatientID=B-0002")
    sent = h1.log.read_text()
    assert "association accepted: calling_ae='MODALITY' host=127.0.0.1 port=" in sent
    assert "association released: calling_ae='MODALITY' host=127.0.0.1" in sent
    asked = h2.log.read_text()
    assert "association accepted: calling_ae='WS2' host=127.0.0.1 port=" in asked
    assert "called_ae='GWH2'" in asked
    assert "calling_ae='WS2'" not in sent  # each gateway logs its own associations only

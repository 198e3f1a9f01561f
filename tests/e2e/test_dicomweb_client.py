"""The API with a real DICOMweb client (dicomweb-client, the Python client OHIF's authors use)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pydicom
import pytest
from dicomweb_client.api import DICOMwebClient

from cloudfilm.synth import synthesize_study
from tests.e2e.conftest import Server, start_server, stop_server

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    root = tmp_path_factory.mktemp("dw")
    proc, srv = start_server(root / "data", root / "serve.log")
    yield srv
    stop_server(proc)


def _client(srv: Server, hospital: str = "HOSP1") -> DICOMwebClient:
    return DICOMwebClient(
        url=f"{srv.base}/dicom-web",
        headers={"Authorization": f"Bearer {srv.token(hospital=hospital)}"},
    )


def test_stow_then_search_retrieve_and_metadata(stack: Server, tmp_path: Path) -> None:
    paths = synthesize_study(tmp_path, modality="MR", images=3, seed=51)
    datasets = [pydicom.dcmread(p) for p in paths]
    client = _client(stack)
    response = client.store_instances(datasets)
    stored = response.ReferencedSOPSequence
    assert sorted(i.ReferencedSOPInstanceUID for i in stored) == sorted(
        d.SOPInstanceUID for d in datasets
    )
    assert "FailedSOPSequence" not in response
    study_uid = datasets[0].StudyInstanceUID
    (study,) = client.search_for_studies(search_filters={"PatientID": datasets[0].PatientID})
    assert study["0020000D"]["Value"] == [study_uid]
    series = client.search_for_series(study_uid)
    assert [s["0020000E"]["Value"][0] for s in series] == [datasets[0].SeriesInstanceUID]
    got = client.retrieve_instance(
        study_uid, datasets[1].SeriesInstanceUID, datasets[1].SOPInstanceUID
    )
    assert got.PixelData == datasets[1].PixelData
    meta = client.retrieve_series_metadata(study_uid, datasets[0].SeriesInstanceUID)
    assert len(meta) == 3
    everything = client.retrieve_study(study_uid)
    assert sorted(d.SOPInstanceUID for d in everything) == sorted(
        d.SOPInstanceUID for d in datasets
    )


def test_another_hospital_cannot_read_it(stack: Server, tmp_path: Path) -> None:
    (path,) = synthesize_study(tmp_path, modality="MR", images=1, seed=52)
    ds = pydicom.dcmread(path)
    _client(stack).store_instances([ds])
    assert (
        _client(stack, "HOSP2").search_for_studies(
            search_filters={"StudyInstanceUID": ds.StudyInstanceUID}
        )
        == []
    )


def test_bulk_data_uris_in_the_metadata_retrieve_the_values(stack: Server, tmp_path: Path) -> None:
    (path,) = synthesize_study(tmp_path, modality="MR", images=1, seed=53)
    ds = pydicom.dcmread(path)
    client = _client(stack)
    client.store_instances([ds])
    meta = client.retrieve_instance_metadata(
        ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.SOPInstanceUID
    )
    uri = meta["7FE00010"]["BulkDataURI"]
    assert uri.startswith(stack.base + "/dicom-web/studies/")
    (pixels,) = client.retrieve_bulkdata(uri)
    assert pixels == ds.PixelData

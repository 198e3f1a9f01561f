"""The API with a real DICOMweb client (dicomweb-client, the Python client OHIF's authors use)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
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
    """A radiologist's client (radiologists may store as well as read)."""
    token = srv.token(hospital=hospital, role="radiologist")
    return DICOMwebClient(url=f"{srv.base}/dicom-web", headers={"Authorization": f"Bearer {token}"})


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


EXPLICIT_LE = "1.2.840.10008.1.2.1"
STORED_SYNTAXES = {
    "CT_small.dcm": "1.2.840.10008.1.2.1",  # explicit VR little endian
    "MR_small_implicit.dcm": "1.2.840.10008.1.2",  # implicit VR little endian
    "image_dfl.dcm": "1.2.840.10008.1.2.1.99",  # deflate
    "emri_small_RLE.dcm": "1.2.840.10008.1.2.5",  # RLE, 10 frames
    "emri_small_jpeg_ls_lossless.dcm": "1.2.840.10008.1.2.4.80",  # JPEG-LS, 10 frames
    "MR_small_jpeg_ls_lossless.dcm": "1.2.840.10008.1.2.4.80",  # JPEG-LS, signed
    "MR_small_jp2klossless.dcm": "1.2.840.10008.1.2.4.90",  # JPEG 2000
    "SC_rgb_jpeg_dcmtk.dcm": "1.2.840.10008.1.2.4.50",  # JPEG baseline, YBR_FULL
}


def _stored_copy(name: str, client: DICOMwebClient) -> tuple[pydicom.Dataset, pydicom.Dataset]:
    """(the original, its copy under new UIDs as stored by STOW-RS): pydicom's files share
    UIDs, so each test stores its own."""
    from pydicom.data import get_testdata_file
    from pydicom.uid import generate_uid

    path = get_testdata_file(name)
    assert path is not None
    original = pydicom.dcmread(path)
    ds = pydicom.dcmread(path)
    ds.StudyInstanceUID, ds.SeriesInstanceUID = generate_uid(), generate_uid()
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    ds.PatientID = "DW-" + name[:20]
    response = client.store_instances([ds])
    assert "FailedSOPSequence" not in response
    return original, ds


def _frame(original: pydicom.Dataset, n: int) -> bytes:
    """Frame ``n`` (0-based) of the original decoded by pydicom, as native little endian."""
    arr = original.pixel_array
    frames = int(original.get("NumberOfFrames") or 1)
    one = arr[n] if frames > 1 else arr
    return bytes(one.astype(one.dtype.newbyteorder("<")).tobytes())


@pytest.mark.parametrize("name", sorted(STORED_SYNTAXES))
def test_every_retrieve_call_with_its_default_arguments(stack: Server, name: str) -> None:
    client = _client(stack)
    original, ds = _stored_copy(name, client)
    study, series, sop = ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.SOPInstanceUID
    stored = STORED_SYNTAXES[name]
    assert original.file_meta.TransferSyntaxUID == stored
    # study and series: the PS3.18 default, Explicit VR Little Endian, whatever is stored
    for got in (*client.retrieve_study(study), *client.retrieve_series(study, series)):
        assert got.file_meta.TransferSyntaxUID == EXPLICIT_LE
        assert np.array_equal(got.pixel_array, original.pixel_array)
        assert got.SOPInstanceUID == sop
    # retrieve_instance's default asks for transfer-syntax=* (as stored)
    got = client.retrieve_instance(study, series, sop)
    assert got.file_meta.TransferSyntaxUID == stored
    assert np.array_equal(got.pixel_array, original.pixel_array)
    # frames and pixel bulk data: uncompressed little endian
    assert client.retrieve_instance_frames(study, series, sop, [1]) == [_frame(original, 0)]
    frames = int(original.get("NumberOfFrames") or 1)
    everything = b"".join(_frame(original, n) for n in range(frames))
    meta = client.retrieve_instance_metadata(study, series, sop)
    (pixels,) = client.retrieve_bulkdata(meta["7FE00010"]["BulkDataURI"])
    assert pixels in (everything, everything + b"\0")
    assert [m["00080018"]["Value"] for m in client.retrieve_series_metadata(study, series)] == [
        [sop]
    ]
    assert len(client.retrieve_study_metadata(study)) == 1
    # rendered: JPEG
    assert client.retrieve_instance_rendered(study, series, sop)[:3] == b"\xff\xd8\xff"
    assert client.retrieve_instance_frames_rendered(study, series, sop, [1])[:3] == b"\xff\xd8\xff"
    # a series renders as multipart/related, which this call hands back undecoded
    series_body = client.retrieve_series_rendered(study, series)
    assert b"\r\nContent-Type: image/jpeg\r\n\r\n\xff\xd8\xff" in series_body


@pytest.mark.parametrize("name", ["emri_small_jpeg_ls_lossless.dcm", "MR_small_jp2klossless.dcm"])
def test_explicit_syntaxes_and_any_syntax_are_honoured(stack: Server, name: str) -> None:
    client = _client(stack)
    original, ds = _stored_copy(name, client)
    study, series, sop = ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.SOPInstanceUID
    stored = STORED_SYNTAXES[name]
    for asked, expected in (
        ("*", stored),
        (EXPLICIT_LE, EXPLICIT_LE),
        ("1.2.840.10008.1.2.5", "1.2.840.10008.1.2.5"),  # re-encoded as RLE
    ):
        (got,) = client.retrieve_series(study, series, media_types=(("application/dicom", asked),))
        assert got.file_meta.TransferSyntaxUID == expected
        assert np.array_equal(got.pixel_array, original.pixel_array)
    # frames as stored (the compressed bitstream) and uncompressed
    from pydicom.encaps import get_frame

    frames = int(original.get("NumberOfFrames") or 1)
    as_stored = client.retrieve_instance_frames(
        study, series, sop, [1], media_types=(("application/octet-stream", "*"),)
    )
    assert as_stored == [get_frame(original.PixelData, 0, number_of_frames=frames)]
    native = client.retrieve_instance_frames(
        study, series, sop, [1], media_types=(("application/octet-stream", EXPLICIT_LE),)
    )
    assert native == [_frame(original, 0)]


def test_a_syntax_that_cannot_be_produced_is_406(stack: Server) -> None:
    from requests import HTTPError

    client = _client(stack)
    _, ds = _stored_copy("emri_small_jpeg_ls_lossless.dcm", client)
    with pytest.raises(HTTPError) as err:
        client.retrieve_study(
            ds.StudyInstanceUID, media_types=(("application/dicom", "1.2.840.10008.1.2.4.50"),)
        )
    response = err.value.response
    assert response is not None and response.status_code == 406
    assert response.json()["status"] == 406

"""WADO-RS: stored bytes as multipart/related, metadata, thumbnails, access and failures."""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

import aiohttp
import numpy as np
import pydicom
import pytest
from aiohttp import BodyPartReader, MultipartReader
from pydicom.encaps import get_frame

from cloudfilm.synth import synthesize_study
from image_store.ingest import LocalIngest
from image_store.records import InstanceQuery
from tests.viewer_api.conftest import Api, Regional, uids

CT_SMALL = uids("CT_small.dcm")
EXPLICIT_LE = "1.2.840.10008.1.2.1"
JPEG_BASELINE = "1.2.840.10008.1.2.4.50"
RLE = "1.2.840.10008.1.2.5"


async def _parts(response: aiohttp.ClientResponse, syntax: str = EXPLICIT_LE) -> list[bytes]:
    """The bodies of a multipart/related response, checking that each part's type names the
    transfer syntax ``syntax``."""
    ctype = response.headers["Content-Type"]
    assert ctype.startswith('multipart/related; type="application/dicom"; boundary=')
    reader = MultipartReader.from_response(response)
    out = []
    while (part := await reader.next()) is not None:
        assert isinstance(part, BodyPartReader)
        assert part.headers["Content-Type"] == f"application/dicom; transfer-syntax={syntax}"
        out.append(bytes(await part.read()))
    return out


def _study_url(regional: Regional) -> str:
    return f"/dicom-web/studies/{regional.ct[0].StudyInstanceUID}"


async def test_a_study_comes_back_as_the_ingested_bytes_one_part_each(regional: Regional) -> None:
    api = regional.api
    r = await api.client.get(_study_url(regional), headers=api.token())
    assert r.status == 200
    parts = await _parts(r)
    assert sorted(parts) == sorted(regional.ct_bytes)


async def test_a_series_and_an_instance_come_back_as_stored(regional: Regional) -> None:
    api, axial = regional.api, regional.ct[1]
    series_url = f"{_study_url(regional)}/series/{axial.SeriesInstanceUID}"
    r = await api.client.get(series_url, headers=api.token())
    assert sorted(await _parts(r)) == sorted(regional.ct_bytes[1:])
    # stored bytes: the length is known before the first byte, no chunked framing
    again = await api.client.get(series_url, headers=api.token())
    assert "Transfer-Encoding" not in again.headers
    assert int(again.headers["Content-Length"]) == len(await again.read())
    r = await api.client.get(
        f"{series_url}/instances/{regional.ct[2].SOPInstanceUID}", headers=api.token()
    )
    assert await _parts(r) == [regional.ct_bytes[2]]


async def test_the_stream_reads_one_object_at_a_time_and_no_more(regional: Regional) -> None:
    api = regional.api
    api.store.calls.clear()
    r = await api.client.get(_study_url(regional), headers=api.token())
    assert len(await _parts(r)) == 4
    assert api.store.calls == ["get"] * 4


@pytest.mark.parametrize(
    "accept",
    [
        None,
        "*/*",
        "multipart/related; type=application/dicom",
        'multipart/related; type="application/dicom"',
        'multipart/related; type="application/dicom"; transfer-syntax=*',
        f'multipart/related; type="application/dicom"; transfer-syntax={EXPLICIT_LE}',
        f'multipart/related; type="application/dicom"; transfer-syntax={JPEG_BASELINE}, */*',
    ],
)
async def test_accept_headers_that_get_the_stored_bytes(
    regional: Regional, accept: str | None
) -> None:
    api = regional.api
    headers = api.token() | ({"Accept": accept} if accept else {})
    r = await api.client.get(_study_url(regional), headers=headers)
    assert r.status == 200, accept
    assert sorted(await _parts(r)) == sorted(regional.ct_bytes)


@pytest.mark.parametrize(
    "accept",
    [
        f'multipart/related; type="application/dicom"; transfer-syntax={JPEG_BASELINE}',
        "image/jpeg",
        "application/json",
    ],
)
async def test_accept_headers_we_cannot_serve_are_406_json(regional: Regional, accept: str) -> None:
    api = regional.api
    r = await api.client.get(_study_url(regional), headers=api.token() | {"Accept": accept})
    assert r.status == 406
    assert (await r.json())["status"] == 406


async def test_metadata_at_each_level_is_an_array_of_the_stored_json(regional: Regional) -> None:
    api, ct = regional.api, regional.ct
    study = _study_url(regional)
    series = f"{study}/series/{ct[1].SeriesInstanceUID}"
    instance = f"{series}/instances/{ct[3].SOPInstanceUID}"
    api.store.calls.clear()
    for url, expected in (
        (study, {d.SOPInstanceUID for d in ct}),
        (series, {d.SOPInstanceUID for d in ct[1:]}),
        (instance, {ct[3].SOPInstanceUID}),
    ):
        api.index.calls.clear()
        r = await api.client.get(f"{url}/metadata", headers=api.token())
        assert r.status == 200
        assert r.headers["Content-Type"].startswith("application/dicom+json")
        docs = await r.json()
        assert isinstance(docs, list) and len(docs) == len(expected)
        assert {d["00080018"]["Value"][0] for d in docs} == expected
        assert all(d["0020000D"]["Value"] == [ct[0].StudyInstanceUID] for d in docs)
        assert api.index.calls.count("instance_metadata") == 1
    assert api.store.calls == []


async def test_series_thumbnails_are_jpegs(regional: Regional) -> None:
    api = regional.api
    for ds in (regional.ct[0], regional.ct[1]):
        r = await api.client.get(
            f"{_study_url(regional)}/series/{ds.SeriesInstanceUID}/thumbnail",
            headers=api.token(),
        )
        assert r.status == 200 and r.headers["Content-Type"] == "image/jpeg"
        assert (await r.read())[:3] == b"\xff\xd8\xff"


async def test_another_hospitals_study_is_404_to_retrieve_and_empty_to_search(
    regional: Regional,
) -> None:
    api, mr = regional.api, regional.mr_h2[0]
    study = f"/dicom-web/studies/{mr.StudyInstanceUID}"
    series = f"{study}/series/{mr.SeriesInstanceUID}"
    retrievals = [
        study,
        f"{study}/metadata",
        series,
        f"{series}/metadata",
        f"{series}/thumbnail",
        f"{series}/instances/{mr.SOPInstanceUID}",
        f"{series}/instances/{mr.SOPInstanceUID}/metadata",
    ]
    searches = [f"{study}/series", f"{study}/instances", f"{series}/instances"]
    for url in retrievals:
        r = await api.client.get(url, headers=api.token())
        assert r.status == 404, url
        assert (await r.json())["status"] == 404
    for url in searches:
        r = await api.client.get(url, headers=api.token())
        assert r.status == 200, url
        assert await r.json() == []
    for url in retrievals + searches:
        r = await api.client.get(url, headers=api.token(role="admin"))
        assert r.status == 200, url
        r = await api.client.get(url, headers=api.token(hospital="H2"))
        assert r.status == 200, url


async def test_unknown_or_mismatched_uids_are_404_json(regional: Regional) -> None:
    api, ct = regional.api, regional.ct
    study = _study_url(regional)
    urls = [
        "/dicom-web/studies/1.2.3.4.5/metadata",
        f"{study}/series/1.2.3.4.5",
        f"{study}/series/1.2.3.4.5/thumbnail",
        f"{study}/series/{CT_SMALL.SeriesInstanceUID}",  # a series of another study
        # an instance of the other series
        f"{study}/series/{ct[0].SeriesInstanceUID}/instances/{ct[1].SOPInstanceUID}",
        f"{study}/series/{ct[1].SeriesInstanceUID}/instances/1.2.3.4.5/metadata",
    ]
    for url in urls:
        r = await api.client.get(url, headers=api.token())
        assert r.status == 404, url
        body = await r.json()
        assert body["status"] == 404 and body["error"], url


async def test_an_unexpected_failure_is_500_json_without_details(api: Api) -> None:
    api.index.fail("find_studies")
    r = await api.client.get("/dicom-web/studies", headers=api.token())
    assert r.status == 500
    assert await r.json() == {"error": "internal error", "status": 500}
    assert [e.status for e in api.audit.iter_events()] == [500]


async def test_a_store_failing_mid_stream_cuts_the_response(regional: Regional) -> None:
    api = regional.api
    api.store.fail("get", after=2)
    r = await api.client.get(_study_url(regional), headers=api.token())
    assert r.status == 200  # the headers and two parts were already sent
    with pytest.raises(aiohttp.ClientPayloadError):
        await r.read()
    assert [e.status for e in api.audit.iter_events()][-1] == 500


async def test_a_store_failing_before_the_first_part_is_500_json(regional: Regional) -> None:
    api = regional.api
    api.store.fail("get")
    r = await api.client.get(_study_url(regional), headers=api.token())
    assert r.status == 500
    assert await r.json() == {"error": "internal error", "status": 500}


async def test_every_access_is_audited_with_its_status(regional: Regional) -> None:
    api = regional.api
    mr = regional.mr_h2[0]
    calls: list[tuple[str, dict[str, Any]]] = [
        (f"{_study_url(regional)}/metadata", api.token()),
        (f"/dicom-web/studies/{mr.StudyInstanceUID}", api.token()),
        ("/dicom-web/studies/1.2.3.4.5", api.token()),
        ("/dicom-web/studies/1.2.x", api.token()),
        ("/dicom-web/studies", {}),
        ("/healthz", {}),
    ]
    for url, headers in calls:
        await api.client.get(url, headers=headers)
    events = list(api.audit.iter_events())
    assert [e.status for e in events] == [200, 404, 404, 400, 401]
    assert [e.actor for e in events][-1] == "anonymous"
    assert all(e.hospital == "H1" and e.role == "clinician" for e in events[:4])
    assert all(e.action == "GET" for e in events)
    assert api.audit.verify() is None
    text = repr(events)
    for ds in (*regional.ct, mr):
        assert ds.PatientID not in text and str(ds.PatientName) not in text


async def test_wado_transcodes_to_explicit_vr_little_endian_on_request(api: Api) -> None:
    sc = uids("SC_rgb_rle.dcm")
    accept = 'multipart/related; type="application/dicom"; transfer-syntax=1.2.840.10008.1.2.1'
    r = await api.client.get(
        f"/dicom-web/studies/{sc.StudyInstanceUID}",
        headers={**api.token("H2"), "Accept": accept},
    )
    assert r.status == 200
    assert r.headers.get("Transfer-Encoding") == "chunked"  # transcoded: length unknown
    ctype = r.headers["Content-Type"]
    boundary = ctype.rsplit("boundary=", 1)[1]
    body = await r.read()
    payload = body.split(b"\r\n\r\n", 1)[1].rsplit(f"\r\n--{boundary}--".encode(), 1)[0]
    got = pydicom.dcmread(io.BytesIO(payload))
    assert got.file_meta.TransferSyntaxUID == "1.2.840.10008.1.2.1"
    original = pydicom.dcmread(io.BytesIO(api.files["SC_rgb_rle.dcm"]))
    np.testing.assert_array_equal(got.pixel_array, original.pixel_array)


async def test_damaged_objects_are_never_served(api: Api) -> None:
    ct = uids("CT_small.dcm")
    (inst,) = api.index.find_instances(InstanceQuery(sop_uids=(ct.SOPInstanceUID,)), limit=1)
    path = api.store._inner.root / inst.object_key
    data = bytearray(path.read_bytes())
    data[-10] ^= 0xFF
    path.write_bytes(bytes(data))
    r = await api.client.get(f"/dicom-web/studies/{ct.StudyInstanceUID}", headers=api.token())
    assert r.status == 500 and (await r.json())["error"] == "internal error"
    assert bytes(data) not in await r.read()


def _frame_parts(body: bytes, ctype: str) -> list[bytes]:
    boundary = ctype.rsplit("boundary=", 1)[1].encode()
    chunks = body.split(b"--" + boundary)[1:-1]
    return [c.split(b"\r\n\r\n", 1)[1].removesuffix(b"\r\n") for c in chunks]


async def test_frames_are_served_without_decoding(api: Api, tmp_path: Path) -> None:
    (path,) = synthesize_study(tmp_path, modality="US", images=1, frames=4, seed=6)
    ds = pydicom.dcmread(path)
    (out,) = LocalIngest(api.store._inner, api.index._inner).ingest("H1", [path.read_bytes()])
    assert out.ok
    base = (
        f"/dicom-web/studies/{ds.StudyInstanceUID}/series/{ds.SeriesInstanceUID}"
        f"/instances/{ds.SOPInstanceUID}/frames"
    )
    accept = "multipart/related; type=application/octet-stream; transfer-syntax=*"
    r = await api.client.get(f"{base}/2,4", headers={**api.token(), "Accept": accept})
    assert r.status == 200
    assert r.headers["Content-Type"].startswith(
        'multipart/related; type="application/octet-stream"'
    )
    size = ds.Rows * ds.Columns * 3
    assert _frame_parts(await r.read(), r.headers["Content-Type"]) == [
        ds.PixelData[size : 2 * size],
        ds.PixelData[3 * size : 4 * size],
    ]
    assert (await api.client.get(f"{base}/9", headers=api.token())).status == 400
    assert (await api.client.get(f"{base}/x", headers=api.token())).status == 400
    assert (await api.client.get(f"{base}/0", headers=api.token())).status == 400


async def test_an_encapsulated_frame_comes_out_as_stored_for_any_syntax(api: Api) -> None:
    sc = uids("SC_rgb_rle.dcm")
    ds = pydicom.dcmread(io.BytesIO(api.files["SC_rgb_rle.dcm"]))
    url = (
        f"/dicom-web/studies/{sc.StudyInstanceUID}/series/{sc.SeriesInstanceUID}"
        f"/instances/{sc.SOPInstanceUID}/frames/1"
    )
    accept = "multipart/related; type=application/octet-stream; transfer-syntax=*"
    r = await api.client.get(url, headers=api.token("H2") | {"Accept": accept})
    assert r.status == 200
    body = await r.read()
    assert f"Content-Type: application/octet-stream; transfer-syntax={RLE}\r\n".encode() in body
    (frame,) = _frame_parts(body, r.headers["Content-Type"])
    assert frame == get_frame(ds.PixelData, 0, number_of_frames=1)


@pytest.mark.parametrize(
    "accept",
    [
        None,
        "*/*",
        'multipart/related; type="*/*"',
        "multipart/related; type=application/octet-stream",
        f"multipart/related; type=application/octet-stream; transfer-syntax={EXPLICIT_LE}",
        f"multipart/related; type=image/jls; transfer-syntax={JPEG_BASELINE}, "
        "multipart/related; type=application/octet-stream; q=0.5",
    ],
)
async def test_frames_and_pixel_bulk_data_come_uncompressed_by_default(
    api: Api, accept: str | None
) -> None:
    sc = uids("SC_rgb_rle.dcm")
    ds = pydicom.dcmread(io.BytesIO(api.files["SC_rgb_rle.dcm"]))
    inst = (
        f"/dicom-web/studies/{sc.StudyInstanceUID}/series/{sc.SeriesInstanceUID}"
        f"/instances/{sc.SOPInstanceUID}"
    )
    headers = api.token("H2") | ({"Accept": accept} if accept else {})
    for url in (f"{inst}/frames/1", f"{inst}/bulkdata/7FE00010"):
        r = await api.client.get(url, headers=headers)
        assert r.status == 200, (url, accept)
        assert r.headers["Content-Type"].startswith(
            'multipart/related; type="application/octet-stream"; boundary='
        )
        body = await r.read()
        part_type = f"application/octet-stream; transfer-syntax={EXPLICIT_LE}"
        assert f"Content-Type: {part_type}\r\n".encode() in body
        (frame,) = _frame_parts(body, r.headers["Content-Type"])
        assert frame == ds.pixel_array.tobytes()


async def test_a_compressed_frame_comes_under_its_image_type(api: Api) -> None:
    sc = uids("SC_rgb_rle.dcm")
    ds = pydicom.dcmread(io.BytesIO(api.files["SC_rgb_rle.dcm"]))
    url = (
        f"/dicom-web/studies/{sc.StudyInstanceUID}/series/{sc.SeriesInstanceUID}"
        f"/instances/{sc.SOPInstanceUID}/frames/1"
    )
    for accept in ("multipart/related; type=image/dicom-rle", "image/x-dicom-rle"):
        r = await api.client.get(url, headers=api.token("H2") | {"Accept": accept})
        assert r.status == 200
        assert r.headers["Content-Type"].startswith('multipart/related; type="image/dicom-rle"')
        body = await r.read()
        assert f"Content-Type: image/dicom-rle; transfer-syntax={RLE}\r\n".encode() in body
        assert _frame_parts(body, r.headers["Content-Type"]) == [
            get_frame(ds.PixelData, 0, number_of_frames=1)
        ]


@pytest.mark.parametrize(
    ("path", "accept"),
    [
        ("frames/1", f"multipart/related; type=image/jpeg; transfer-syntax={JPEG_BASELINE}"),
        ("frames/1", "multipart/related; type=image/jp2"),
        ("frames/1", "multipart/related; type=application/octet-stream; q=0"),
        ("bulkdata/7FE00010", "multipart/related; type=image/jpeg"),
        ("", f'multipart/related; type="application/dicom"; transfer-syntax={JPEG_BASELINE}'),
        ("rendered", "image/gif"),
    ],
)
async def test_a_syntax_that_cannot_be_produced_is_406_json_for_every_resource(
    api: Api, path: str, accept: str
) -> None:
    sc = uids("SC_rgb_rle.dcm")
    url = (
        f"/dicom-web/studies/{sc.StudyInstanceUID}/series/{sc.SeriesInstanceUID}"
        f"/instances/{sc.SOPInstanceUID}/{path}"
    ).rstrip("/")
    r = await api.client.get(url, headers=api.token("H2") | {"Accept": accept})
    assert r.status == 406, (path, accept)
    body = await r.json()
    assert body["status"] == 406 and body["error"]


async def test_bulkdata_of_a_missing_attribute_is_404_and_a_bad_tag_400(regional: Regional) -> None:
    api, ds = regional.api, regional.ct[2]
    inst = f"{_study_url(regional)}/series/{ds.SeriesInstanceUID}/instances/{ds.SOPInstanceUID}"
    r = await api.client.get(f"{inst}/bulkdata/00091001", headers=api.token())
    assert r.status == 404
    r = await api.client.get(f"{inst}/bulkdata/xyz", headers=api.token())
    assert r.status == 400
    r = await api.client.get(f"{inst}/bulkdata/7FE00010", headers=api.token(hospital="H2"))
    assert r.status == 404

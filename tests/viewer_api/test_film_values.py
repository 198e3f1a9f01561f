"""The cloud-film page's pure rules: the lossless packing of stored values, the series to open
first, each series' presets and what its pixel spacing means."""

from __future__ import annotations

import gzip
import io
import re
import subprocess
import zipfile
from pathlib import Path
from typing import Any

import numpy as np
import pydicom
import pytest

from cloudfilm.synth import synthesize_study
from tests.viewer_api.conftest import Regional
from tests.viewer_api.test_film import manifest_of
from tests.viewer_api.test_film_links import _page, _path, _share
from viewer_api.film_manifest import main_series, presets_for, series_facts
from viewer_api.film_pixels import NotGreyPixels, pack_frame, pack_values, unpack_values


@pytest.mark.parametrize(
    ("dtype", "signed"), [(np.uint16, False), (np.int16, True), (np.uint8, False)]
)
def test_packed_values_come_back_exactly_including_the_extremes(
    dtype: type[np.integer], signed: bool
) -> None:
    info = np.iinfo(dtype)
    rng = np.random.default_rng(5)
    arr = rng.integers(info.min, info.max, size=(23, 31), endpoint=True).astype(dtype)
    arr[0, :4] = [info.min, info.max, info.min, info.max]  # the largest residuals there are
    arr[5:9, 5:9] = info.max
    packed = pack_values(arr, signed=signed, bits=arr.itemsize * 8, slope=1, intercept=0,
                         monochrome1=False)  # fmt: skip
    assert np.array_equal(unpack_values(packed), arr.astype(np.int32))


def test_a_ct_slice_packs_losslessly_to_well_under_half_its_raw_size(tmp_path: Path) -> None:
    paths = synthesize_study(tmp_path, modality="CT", images=1, seed=2, rows=128, columns=128)
    ds = pydicom.dcmread(paths[1])
    packed = pack_frame(paths[1].read_bytes(), 0)
    assert np.array_equal(unpack_values(packed), ds.pixel_array.astype(np.int32))
    assert len(gzip.compress(packed)) < 0.5 * ds.pixel_array.nbytes


def test_colour_images_and_frames_past_the_end_have_no_values(tmp_path: Path) -> None:
    us = synthesize_study(tmp_path / "us", modality="US", images=1, seed=2, frames=1)
    with pytest.raises(NotGreyPixels):
        pack_frame(us[0].read_bytes(), 0)
    ct = synthesize_study(tmp_path / "ct", modality="CT", images=1, seed=2, rows=64, columns=64)
    with pytest.raises(IndexError):
        pack_frame(ct[1].read_bytes(), 1)


def _series(n: int, localizer: bool = False) -> dict[str, object]:
    return {"images": [["1.2", 1]] * n, "localizer": localizer}


def test_the_main_series_has_the_most_images_and_is_never_a_localizer() -> None:
    assert main_series([_series(1, True), _series(60), _series(20)]) == 1
    assert main_series([_series(300, True), _series(60)]) == 1  # a long localizer is skipped
    assert main_series([_series(1), _series(30), _series(30)]) == 1  # the first on a tie
    assert main_series([_series(1, True)]) == 0  # nothing else to open
    assert main_series([]) == 0


def test_ct_presets_follow_the_body_part_and_other_modalities_get_no_ct_windows() -> None:
    ids = lambda presets: [p["id"] for p in presets]  # noqa: E731
    assert ids(presets_for("CT", "CHEST", ())) == ["lung", "mediastinum", "bone"]
    assert ids(presets_for("CT", "HEAD", ())) == ["brain", "subdural", "bone"]
    assert ids(presets_for("CT", "ABDOMEN", ())) == ["abdomen", "liver", "bone"]
    assert "brain" not in ids(presets_for("CT", "CHEST", ()))
    mr = presets_for("MR", "HEAD", ((600.0, 1200.0, "T1"),))
    assert ids(mr) == ["auto", "image1"] and mr[1]["window"] == [600.0, 1200.0]
    assert not {"lung", "bone", "brain"} & set(ids(presets_for("DX", "CHEST", ())))


def test_pixel_spacing_is_preferred_and_imager_spacing_is_marked_uncalibrated() -> None:
    both = {"00280030": {"Value": [0.5, 0.4]}, "00181164": {"Value": [0.2, 0.2]}}
    assert (series_facts(both).spacing, series_facts(both).spacing_kind) == ((0.5, 0.4), "pixel")
    imager = {"00181164": {"Value": [0.2, 0.25]}, "00080008": {"Value": ["ORIGINAL", "PRIMARY"]}}
    assert (series_facts(imager).spacing, series_facts(imager).spacing_kind) == (
        (0.2, 0.25),
        "imager",
    )
    scout = {"00080008": {"Value": ["ORIGINAL", "PRIMARY", "LOCALIZER"]}}
    facts = series_facts(scout)
    assert facts.localizer and facts.spacing is None and facts.spacing_kind == ""


# -- through a link (the real app over a filesystem store and SQLite index) ----------------------


def _frame_url(manifest: dict[str, Any], series: int, image: int, what: str) -> str:
    s = manifest["study"]["series"][series]
    sop, frame = s["images"][image]
    return (
        f"{manifest['base']}/studies/{manifest['study']['uid']}/series/{s['uid']}/instances/"
        f"{sop}/frames/{frame}/{what}"
    )


async def test_a_link_opens_on_the_axial_series_and_sends_its_exact_values(
    regional: Regional,
) -> None:
    api = regional.api
    share = await _share(api, study_uid=str(regional.ct[0].StudyInstanceUID))
    manifest = manifest_of((await _page(api, share["url"]))[1])
    study = manifest["study"]
    axial = study["series"][study["main"]]
    assert "AXIAL" in axial["description"] and study["start"] == len(axial["images"]) // 2
    assert axial["spacing_kind"] == "pixel" and axial["presets"][0]["id"] == "lung"
    assert study["series"][0]["localizer"] is True
    r = await api.client.get(_path(_frame_url(manifest, study["main"], 1, "values")))
    assert r.status == 200 and r.headers["Content-Encoding"] == "gzip"
    got = unpack_values(await r.read())  # aiohttp's client undid the gzip coding
    want = pydicom.dcmread(io.BytesIO(regional.ct_bytes[2])).pixel_array
    assert np.array_equal(got, want.astype(np.int32))


async def test_values_go_only_through_the_link_of_their_study(regional: Regional) -> None:
    api = regional.api
    share = await _share(api, study_uid=str(regional.ct[0].StudyInstanceUID))
    manifest = manifest_of((await _page(api, share["url"]))[1])
    own = _path(_frame_url(manifest, manifest["study"]["main"], 0, "values"))
    mr = regional.mr_h2[0]
    theirs = re.sub(
        r"/studies/[^/]+/series/[^/]+/instances/[^/]+/",
        f"/studies/{mr.StudyInstanceUID}/series/{mr.SeriesInstanceUID}"
        f"/instances/{mr.SOPInstanceUID}/",
        own,
    )
    assert (await api.client.get(theirs)).status == 404  # another hospital's study
    forged = own.replace(
        share["token"], share["token"][:-2] + ("AA" if share["token"][-2:] != "AA" else "BB")
    )
    assert (await api.client.get(forged)).status == 403
    assert (await api.client.get(own.replace("/frames/1/", "/frames/2/"))).status == 404
    assert (await api.client.get(own + "?window=1,2")).status == 400


async def test_values_come_as_a_gzip_body_the_page_keeps_compressed_and_nothing_else(
    regional: Regional,
) -> None:
    api = regional.api
    share = await _share(api, study_uid=str(regional.ct[0].StudyInstanceUID))
    manifest = manifest_of((await _page(api, share["url"]))[1])
    own = _path(_frame_url(manifest, manifest["study"]["main"], 1, "values"))
    r = await api.client.get(own + "?form=gzip", auto_decompress=False)
    assert r.status == 200 and r.headers["Content-Type"] == "application/gzip"
    assert "Content-Encoding" not in r.headers and r.headers["Cache-Control"] == "private, no-store"
    got = unpack_values(gzip.decompress(await r.read()))
    want = pydicom.dcmread(io.BytesIO(regional.ct_bytes[2])).pixel_array
    assert np.array_equal(got, want.astype(np.int32))
    for bad in (
        "?form=png",
        "?form=gzip&form=gzip",
        "?form=gzip&window=1,2",
        "?form=" + "g" * 5000,
    ):
        assert (await api.client.get(own + bad)).status == 400, bad
    forged = own.replace(share["token"], share["token"][:-4] + "AAAA")
    assert (await api.client.get(forged + "?form=gzip")).status == 403


async def test_the_zip_has_a_dicomdir_that_pydicom_and_dcmdump_read(
    regional: Regional, tmp_path: Path
) -> None:
    api = regional.api
    share = await _share(api, study_uid=str(regional.ct[0].StudyInstanceUID), allow_download=True)
    manifest = manifest_of((await _page(api, share["url"]))[1])
    r = await api.client.get(f"{manifest['base']}/studies/{manifest['study']['uid']}/download.zip")
    assert r.status == 200
    with zipfile.ZipFile(io.BytesIO(await r.read())) as zf:
        zf.extractall(tmp_path)
    records = pydicom.dcmread(tmp_path / "DICOMDIR").DirectoryRecordSequence
    kinds = [rec.DirectoryRecordType for rec in records]
    assert (kinds.count("PATIENT"), kinds.count("STUDY"), kinds.count("SERIES")) == (1, 1, 2)
    images = [rec for rec in records if rec.DirectoryRecordType == "IMAGE"]
    assert len(images) == len(regional.ct)
    for rec in images:  # each record names a file of the ZIP holding that instance
        ds = pydicom.dcmread(tmp_path.joinpath(*rec.ReferencedFileID), stop_before_pixels=True)
        assert ds.SOPInstanceUID == rec.ReferencedSOPInstanceUIDInFile
    out = subprocess.run(
        ["dcmdump", str(tmp_path / "DICOMDIR")], capture_output=True, text=True, timeout=60
    )
    assert out.returncode == 0, out.stderr
    assert "DirectoryRecordSequence" in out.stdout and "IMAGE" in out.stdout


async def test_the_page_previews_in_chat_without_patient_data(regional: Regional) -> None:
    api = regional.api
    ct = regional.ct[0]
    share = await _share(api, study_uid=str(ct.StudyInstanceUID))
    status, page = await _page(api, share["url"])
    assert status == 200
    head = page[: page.index("</head>")]
    og = dict(re.findall(r'<meta property="og:(\w+)" content="([^"]*)"', head))
    assert og["title"] == "云胶片 Cloud film" and og["description"]
    for personal in (str(ct.PatientID), str(ct.PatientName).split("^")[0], str(ct.StudyDate)):
        assert personal not in head

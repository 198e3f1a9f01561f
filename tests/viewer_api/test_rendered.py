"""WADO-RS rendered resources and thumbnails: JPEG/PNG, viewport, window, quality, errors."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pydicom
import pytest
from PIL import Image

from cloudfilm.synth import synthesize_study
from image_store.ingest import LocalIngest
from tests.viewer_api.conftest import Api, Regional


def _instance_url(regional: Regional, n: int = 2) -> str:
    ds = regional.ct[n]
    return (
        f"/dicom-web/studies/{ds.StudyInstanceUID}/series/{ds.SeriesInstanceUID}"
        f"/instances/{ds.SOPInstanceUID}"
    )


def _picture(body: bytes, fmt: str) -> Image.Image:
    img = Image.open(io.BytesIO(body))
    assert img.format == fmt
    img.load()
    return img


async def test_an_instance_renders_as_a_full_size_jpeg_by_default(regional: Regional) -> None:
    api, ds = regional.api, regional.ct[2]
    r = await api.client.get(f"{_instance_url(regional)}/rendered", headers=api.token())
    assert r.status == 200 and r.headers["Content-Type"] == "image/jpeg"
    img = _picture(await r.read(), "JPEG")
    assert img.size == (ds.Columns, ds.Rows)


async def test_png_viewport_and_window_are_honoured(regional: Regional) -> None:
    api = regional.api
    url = f"{_instance_url(regional)}/rendered"
    png = {**api.token(), "Accept": "image/png"}
    r = await api.client.get(url, params={"viewport": "128,100"}, headers=png)
    assert r.status == 200 and r.headers["Content-Type"] == "image/png"
    assert _picture(await r.read(), "PNG").size == (100, 100)
    means = []
    for window in ("-600,1500", "300,1500,linear", "40,400,sigmoid"):
        r = await api.client.get(url, params={"window": window}, headers=png)
        assert r.status == 200, await r.text()
        means.append(float(np.asarray(_picture(await r.read(), "PNG")).mean()))
    assert means[0] > means[1]  # a lung window shows more of the body bright than bone
    assert len(set(means)) == 3


async def test_lower_quality_is_fewer_bytes(regional: Regional) -> None:
    api = regional.api
    url = f"{_instance_url(regional)}/rendered"
    sizes = []
    for q in ("95", "20"):
        r = await api.client.get(url, params={"quality": q}, headers=api.token())
        sizes.append(len(await r.read()))
    assert sizes[1] < sizes[0]


@pytest.mark.parametrize(
    "params",
    [
        {"quality": "0"},
        {"quality": "abc"},
        {"viewport": "0,10"},
        {"viewport": "10"},
        {"window": "40"},
        {"window": "40,400,cubic"},
        {"window": "nan,400"},
        {"colour": "red"},
    ],
)
async def test_bad_parameters_are_400_json_before_any_storage_access(
    regional: Regional, params: dict[str, str]
) -> None:
    api = regional.api
    api.store.calls.clear()
    r = await api.client.get(
        f"{_instance_url(regional)}/rendered", params=params, headers=api.token()
    )
    assert r.status == 400
    assert (await r.json())["status"] == 400
    assert api.store.calls == []


async def test_a_media_type_other_than_jpeg_or_png_is_406(regional: Regional) -> None:
    api = regional.api
    r = await api.client.get(
        f"{_instance_url(regional)}/rendered", headers={**api.token(), "Accept": "image/gif"}
    )
    assert r.status == 406


async def test_a_frame_of_a_multiframe_instance_renders_and_a_missing_one_is_404(
    api: Api, tmp_path: Path
) -> None:
    (path,) = synthesize_study(tmp_path, modality="US", images=1, frames=4, seed=6)
    ds = pydicom.dcmread(path)
    (out,) = LocalIngest(api.store._inner, api.index._inner).ingest("H1", [path.read_bytes()])
    assert out.ok
    base = (
        f"/dicom-web/studies/{ds.StudyInstanceUID}/series/{ds.SeriesInstanceUID}"
        f"/instances/{ds.SOPInstanceUID}/frames"
    )
    first = await api.client.get(f"{base}/1/rendered", headers=api.token())
    last = await api.client.get(f"{base}/4/rendered", headers=api.token())
    assert first.status == last.status == 200
    a = np.asarray(_picture(await first.read(), "JPEG"), dtype=np.int16)
    b = np.asarray(_picture(await last.read(), "JPEG"), dtype=np.int16)
    assert a.shape == (ds.Rows, ds.Columns, 3) and np.abs(a - b).mean() > 1
    assert (await api.client.get(f"{base}/5/rendered", headers=api.token())).status == 404
    assert (await api.client.get(f"{base}/0/rendered", headers=api.token())).status == 400


async def test_instance_and_study_thumbnails_are_small_jpegs(regional: Regional) -> None:
    api = regional.api
    study = f"/dicom-web/studies/{regional.ct[0].StudyInstanceUID}"
    for url in (f"{_instance_url(regional)}/thumbnail", f"{study}/thumbnail"):
        r = await api.client.get(url, headers=api.token())
        assert r.status == 200 and r.headers["Content-Type"] == "image/jpeg", url
        assert max(_picture(await r.read(), "JPEG").size) <= 256


async def test_another_hospitals_instance_is_not_rendered_and_looks_unknown(
    regional: Regional,
) -> None:
    api, mr = regional.api, regional.mr_h2[0]
    study = f"/dicom-web/studies/{mr.StudyInstanceUID}"
    inst = f"{study}/series/{mr.SeriesInstanceUID}/instances/{mr.SOPInstanceUID}"
    for url in (
        f"{inst}/rendered",
        f"{inst}/frames/1/rendered",
        f"{inst}/thumbnail",
        f"{study}/thumbnail",
    ):
        r = await api.client.get(url, headers=api.token())
        assert r.status == 404, url
        assert (await api.client.get(url)).status == 401


async def test_a_series_renders_as_one_picture_per_instance(regional: Regional) -> None:
    api, ds = regional.api, regional.ct[1]
    url = f"/dicom-web/studies/{ds.StudyInstanceUID}/series/{ds.SeriesInstanceUID}/rendered"
    r = await api.client.get(url, params={"viewport": "64,64"}, headers=api.token())
    assert r.status == 200
    ctype = r.headers["Content-Type"]
    assert ctype.startswith('multipart/related; type="image/jpeg"')
    boundary = ctype.split("boundary=")[1].encode()
    parts = (await r.read()).split(b"--" + boundary)[1:-1]
    pictures = [_picture(p.split(b"\r\n\r\n", 1)[1].removesuffix(b"\r\n"), "JPEG") for p in parts]
    assert len(pictures) == 3 and all(p.size == (64, 64) for p in pictures)
    study = f"/dicom-web/studies/{ds.StudyInstanceUID}/rendered"
    r = await api.client.get(study, params={"viewport": "32,32"}, headers=api.token())
    assert (
        r.status == 200 and (await r.read()).count(boundary[:0] + b"Content-Type: image/jpeg") == 4
    )

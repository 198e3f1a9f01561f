from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pydicom
import pytest
from PIL import Image
from pydicom.data import get_testdata_file

from cloudfilm.synth import synthesize_study
from dicom_codecs.errors import RenderError
from dicom_codecs.render import RenderOptions, render_dataset, render_thumbnail, window_to_uint8


def _jpeg(data: bytes) -> Image.Image:
    img = Image.open(io.BytesIO(data))
    assert img.format == "JPEG"
    return img


def test_ct_thumbnail_is_a_256_jpeg_with_content(tmp_path: Path) -> None:
    paths = synthesize_study(tmp_path, modality="CT", images=3, seed=1)
    img = _jpeg(render_thumbnail(paths[2].read_bytes()))
    assert max(img.size) == 256
    assert np.asarray(img).std() > 10


def test_window_matches_the_standard_formula_within_one_grey_level() -> None:
    rng = np.random.default_rng(0)
    values = rng.uniform(-1200, 2000, 10_000).astype(np.float32)
    c, w = 40.0, 400.0
    ref = np.where(
        values <= c - 0.5 - (w - 1) / 2,
        0,
        np.where(values > c - 0.5 + (w - 1) / 2, 255, ((values - (c - 0.5)) / (w - 1) + 0.5) * 255),
    )
    assert np.abs(window_to_uint8(values, c, w).astype(float) - ref).max() <= 1.0


def test_monochrome1_is_the_inverse_of_monochrome2(tmp_path: Path) -> None:
    (path,) = synthesize_study(tmp_path, modality="MR", images=1, seed=1)
    ds = pydicom.dcmread(path)
    m2 = np.asarray(_jpeg(render_dataset(ds)), dtype=float)
    ds.PhotometricInterpretation = "MONOCHROME1"
    m1 = np.asarray(_jpeg(render_dataset(ds)), dtype=float)
    assert np.abs((255 - m1) - m2).mean() < 3


def test_rgb_ultrasound_renders_in_colour(tmp_path: Path) -> None:
    (path,) = synthesize_study(tmp_path, modality="US", images=1, frames=3, seed=1)
    img = _jpeg(render_thumbnail(path.read_bytes(), RenderOptions(size=128)))
    assert img.mode == "RGB" and max(img.size) == 128


@pytest.mark.parametrize("name", ["CT_small.dcm", "MR_small.dcm", "SC_rgb_rle.dcm"])
def test_pydicom_test_files_render(name: str) -> None:
    path = get_testdata_file(name)
    assert path is not None
    img = _jpeg(render_thumbnail(Path(path).read_bytes()))
    assert max(img.size) <= 256


def test_a_dataset_without_pixels_is_a_render_error() -> None:
    path = get_testdata_file("rtplan.dcm")
    assert path is not None
    with pytest.raises(RenderError, match="no pixel data"):
        render_thumbnail(Path(path).read_bytes())


def test_garbage_is_a_render_error() -> None:
    with pytest.raises(RenderError):
        render_thumbnail(b"\x00" * 10)

"""The fused Numba grey kernel against the numpy + Pillow reference it replaces."""

from __future__ import annotations

import io

import numpy as np
import pydicom
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from numpy.typing import NDArray
from PIL import Image
from pydicom.dataset import Dataset

from cloudfilm.synth import synthesize_study
from dicom_codecs.render import (
    RenderOptions,
    Window,
    box_weights,
    fused_grey,
    grey_to_uint8,
    render_dataset,
)


def _reference(
    frame: NDArray[np.generic], ds: Dataset, size: tuple[int, int], window: Window | None = None
) -> NDArray[np.int16]:
    img = Image.fromarray(grey_to_uint8(frame, ds, window), mode="L")
    if img.size != size:
        img = img.resize(size, Image.Resampling.BOX)
    return np.asarray(img, dtype=np.int16)


def _assert_within_one(frame: NDArray[np.generic], ds: Dataset, size: tuple[int, int]) -> None:
    fused = fused_grey(frame, ds, size)
    assert fused is not None
    assert fused.shape == (size[1], size[0])
    diff = np.abs(fused.astype(np.int16) - _reference(frame, ds, size))
    assert int(diff.max()) <= 1, f"max difference {int(diff.max())} grey levels"


def _grey(photometric: str = "MONOCHROME2", **attrs: object) -> Dataset:
    ds = Dataset()
    ds.PhotometricInterpretation = photometric
    for keyword, value in attrs.items():
        setattr(ds, keyword, value)
    return ds


@pytest.fixture(scope="module")
def ct_and_dx(tmp_path_factory: pytest.TempPathFactory) -> tuple[Dataset, Dataset]:
    d = tmp_path_factory.mktemp("render_kernel")
    ct = pydicom.dcmread(synthesize_study(d / "ct", modality="CT", images=3, seed=3)[2])
    dx = pydicom.dcmread(synthesize_study(d / "dx", modality="DX", images=1, seed=3)[0])
    return ct, dx


def test_box_weights_of_an_integer_factor_average_whole_blocks() -> None:
    starts, weights = box_weights(512, 256)
    assert starts[:3].tolist() == [0, 2, 4]
    assert np.allclose(weights.sum(axis=1), 1.0)
    assert np.allclose(weights[0, :2], 0.5)


def test_ct_thumbnail_is_within_one_grey_level_of_numpy_and_pillow(
    ct_and_dx: tuple[Dataset, Dataset],
) -> None:
    ct, _ = ct_and_dx
    _assert_within_one(ct.pixel_array, ct, (256, 256))


def test_dx_at_a_fractional_scale_is_within_one_grey_level(
    ct_and_dx: tuple[Dataset, Dataset],
) -> None:
    _, dx = ct_and_dx
    rows, cols = dx.pixel_array.shape
    _assert_within_one(dx.pixel_array, dx, (round(256 * cols / rows), 256))
    _assert_within_one(dx.pixel_array, dx, (333, 257))


@pytest.mark.parametrize("function", ["LINEAR", "LINEAR_EXACT", "SIGMOID"])
def test_every_voi_function_matches_the_reference(function: str) -> None:
    frame = np.random.default_rng(1).integers(-1024, 3000, size=(97, 131), dtype=np.int16)
    ds = _grey(RescaleSlope=1, RescaleIntercept=-1024, WindowCenter=40, WindowWidth=400)
    ds.VOILUTFunction = function
    _assert_within_one(frame, ds, (40, 31))


def test_monochrome1_is_inverted_like_the_reference() -> None:
    frame = np.random.default_rng(2).integers(0, 4096, size=(64, 64), dtype=np.uint16)
    ds = _grey("MONOCHROME1", WindowCenter=2048, WindowWidth=4096)
    _assert_within_one(frame, ds, (32, 32))
    plain = fused_grey(frame, _grey(WindowCenter=2048, WindowWidth=4096), (32, 32))
    inverted = fused_grey(frame, ds, (32, 32))
    assert plain is not None and inverted is not None
    assert int(np.abs(inverted.astype(np.int16) - (255 - plain.astype(np.int16))).max()) <= 1
    assert int(np.abs(inverted.astype(np.int16) - plain.astype(np.int16)).max()) > 100


def test_without_a_window_the_range_leaves_padding_out_like_the_reference() -> None:
    frame = np.full((50, 60), -2000, dtype=np.int16)
    frame[10:40, 10:50] = np.random.default_rng(3).integers(-100, 900, size=(30, 40))
    ds = _grey(PixelPaddingValue=-2000, RescaleSlope=2, RescaleIntercept=5)
    _assert_within_one(frame, ds, (30, 25))
    fused = fused_grey(frame, ds, (60, 50))
    assert fused is not None and int(fused[10:40, 10:50].max()) == 255


def test_a_flat_image_without_a_window_is_black() -> None:
    fused = fused_grey(np.full((8, 8), 7, dtype=np.uint16), _grey(), (4, 4))
    assert fused is not None and not fused.any()


def test_a_window_asked_for_replaces_the_datasets() -> None:
    frame = np.random.default_rng(4).integers(0, 4096, size=(64, 64), dtype=np.uint16)
    ds = _grey(WindowCenter=2048, WindowWidth=4096)
    bone = Window(3000, 500)
    fused = fused_grey(frame, ds, (32, 32), bone)
    assert fused is not None
    diff = np.abs(fused.astype(np.int16) - _reference(frame, ds, (32, 32), bone))
    assert int(diff.max()) <= 1
    default = fused_grey(frame, ds, (32, 32))
    assert default is not None and not np.array_equal(fused, default)


def test_big_endian_and_float_frames_take_the_kernel() -> None:
    ds = _grey(WindowCenter=100, WindowWidth=200)
    frame = np.arange(64 * 64, dtype=">i2").reshape(64, 64) % 300
    _assert_within_one(frame, ds, (16, 16))
    _assert_within_one(frame.astype(np.float32), ds, (16, 16))


def test_a_modality_lut_sequence_is_left_to_the_numpy_path() -> None:
    ds = _grey()
    ds.ModalityLUTSequence = [Dataset()]
    assert fused_grey(np.zeros((4, 4), dtype=np.uint16), ds, (2, 2)) is None


@settings(max_examples=40, deadline=None)
@given(
    rows=st.integers(1, 70),
    cols=st.integers(1, 70),
    out_w=st.integers(1, 70),
    out_h=st.integers(1, 70),
    center=st.floats(-500, 3000),
    width=st.floats(1, 5000),
    signed=st.booleans(),
    seed=st.integers(0, 2**16),
)
def test_random_images_and_sizes_stay_within_one_grey_level(
    rows: int,
    cols: int,
    out_w: int,
    out_h: int,
    center: float,
    width: float,
    signed: bool,
    seed: int,
) -> None:
    dtype = np.int16 if signed else np.uint16
    lo = -2048 if signed else 0
    frame = np.random.default_rng(seed).integers(lo, 4096, size=(rows, cols), dtype=dtype)
    ds = _grey(WindowCenter=center, WindowWidth=width)
    size = (min(out_w, cols), min(out_h, rows))
    _assert_within_one(frame, ds, size)


def test_rendered_frames_fit_the_viewport_and_come_as_png_when_asked(
    ct_and_dx: tuple[Dataset, Dataset],
) -> None:
    ct, _ = ct_and_dx
    png = render_dataset(ct, RenderOptions(viewport=(1024, 600), image_format="PNG"))
    img = Image.open(io.BytesIO(png))
    assert img.format == "PNG" and img.size == (600, 600)
    lung = render_dataset(ct, RenderOptions(window=Window(-600, 1500), image_format="PNG"))
    bone = render_dataset(ct, RenderOptions(window=Window(300, 1500), image_format="PNG"))
    assert (
        np.asarray(Image.open(io.BytesIO(lung))).mean()
        > np.asarray(Image.open(io.BytesIO(bone))).mean()
    )


def test_unusable_windows_and_viewports_are_render_errors() -> None:
    from dicom_codecs.errors import RenderError

    with pytest.raises(RenderError, match="width"):
        Window(40, 0)
    with pytest.raises(RenderError, match="finite"):
        Window(float("nan"), 400)
    with pytest.raises(RenderError, match="viewport"):
        RenderOptions(viewport=(0, 10))


def test_a_value_range_too_wide_for_a_lookup_table_takes_the_general_kernel() -> None:
    frame = np.random.default_rng(5).integers(-(2**30), 2**30, size=(40, 40), dtype=np.int32)
    ds = _grey(WindowCenter=0, WindowWidth=2**30)
    _assert_within_one(frame, ds, (17, 13))

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pydicom
import pytest
from numpy.typing import NDArray
from PIL import Image
from pydicom.data import get_testdata_file
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import (
    ExplicitVRLittleEndian,
    JPEG2000Lossless,
    JPEGLSLossless,
    SecondaryCaptureImageStorage,
    generate_uid,
)

from cloudfilm.synth import synthesize_study
from dicom_codecs.errors import CodecError, RenderError
from dicom_codecs.render import (
    RenderOptions,
    range_to_uint8,
    render_dataset,
    render_thumbnail,
    window_to_uint8,
)


def _jpeg(data: bytes) -> Image.Image:
    img = Image.open(io.BytesIO(data))
    assert img.format == "JPEG"
    img.load()
    return img


def _pixels(data: bytes) -> NDArray[np.float64]:
    return np.asarray(_jpeg(data), dtype=np.float64)


def _testdata(name: str) -> Path:
    path = get_testdata_file(name, download=False)
    assert path is not None, f"pydicom test file {name} is not bundled"
    return Path(path)


def _grey_frames(values: list[int], **attrs: object) -> Dataset:
    """8-bit MONOCHROME2 dataset whose frames are each one constant value."""
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.SOPClassUID = SecondaryCaptureImageStorage
    ds.SOPInstanceUID = generate_uid()
    ds.Rows, ds.Columns = 32, 48
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 8, 8, 7, 0
    frames = np.stack([np.full((32, 48), v, dtype=np.uint8) for v in values])
    if len(values) > 1:
        ds.NumberOfFrames = len(values)
    ds.PixelData = frames.tobytes()
    for keyword, value in attrs.items():
        setattr(ds, keyword, value)
    return ds


def test_ct_thumbnail_is_a_jpeg_256_on_its_longest_side_with_content(tmp_path: Path) -> None:
    paths = synthesize_study(tmp_path, modality="CT", images=3, seed=1)
    img = _jpeg(render_thumbnail(paths[2].read_bytes()))
    assert img.mode == "L" and max(img.size) == 256
    assert np.asarray(img).std() > 10


def test_window_matches_the_standard_linear_formula_within_one_grey_level() -> None:
    rng = np.random.default_rng(0)
    values = rng.uniform(-1200, 2000, 10_000).astype(np.float32)
    c, w = 40.0, 400.0
    ref = np.where(
        values <= c - 0.5 - (w - 1) / 2,
        0,
        np.where(values > c - 0.5 + (w - 1) / 2, 255, ((values - (c - 0.5)) / (w - 1) + 0.5) * 255),
    )
    assert np.abs(window_to_uint8(values, c, w).astype(float) - ref).max() <= 1.0


def test_linear_exact_and_sigmoid_windows_follow_their_definitions() -> None:
    values = np.array([-200.0, -160.0, 40.0, 240.0, 300.0], dtype=np.float32)
    exact = window_to_uint8(values, 40, 400, "LINEAR_EXACT")
    assert exact.tolist() == [0, 0, 128, 255, 255]
    sigmoid = window_to_uint8(values, 40, 400, "SIGMOID").astype(float)
    assert sigmoid[2] == pytest.approx(127.5, abs=1)
    assert np.all(np.diff(sigmoid) >= 0) and 0 < sigmoid[0] < sigmoid[-1] < 255


def test_a_window_narrower_than_one_is_a_render_error_naming_the_width() -> None:
    with pytest.raises(RenderError, match="width"):
        window_to_uint8(np.zeros(4, dtype=np.float32), 0, 0.5)


def test_range_mapping_stretches_the_valid_values_only() -> None:
    values = np.array([-2000.0, 0.0, 50.0, 100.0], dtype=np.float32)
    valid = values > -2000
    assert range_to_uint8(values, valid).tolist() == [0, 0, 128, 255]


def test_monochrome1_renders_as_the_inverse_of_monochrome2(tmp_path: Path) -> None:
    (path,) = synthesize_study(tmp_path, modality="MR", images=1, seed=1)
    ds = pydicom.dcmread(path)
    m2 = _pixels(render_dataset(ds))
    ds.PhotometricInterpretation = "MONOCHROME1"
    m1 = _pixels(render_dataset(ds))
    assert m2.std() > 10
    assert np.abs((255 - m1) - m2).mean() < 3


def test_without_a_window_the_frame_range_is_used_and_padding_left_out() -> None:
    ds = _grey_frames([0])
    pixels = np.zeros((32, 48), dtype=np.uint8)
    pixels[:, 16:32], pixels[:, 32:] = 100, 120
    ds.PixelData = pixels.tobytes()
    assert _pixels(render_dataset(ds))[:, 40:].mean() == pytest.approx(255, abs=3)
    ds.PixelPaddingValue = 0
    out = _pixels(render_dataset(ds))
    assert out[:, 20:28].mean() == pytest.approx(0, abs=3)
    assert out[:, 40:].mean() == pytest.approx(255, abs=3)


def test_rgb_ultrasound_renders_in_colour(tmp_path: Path) -> None:
    (path,) = synthesize_study(tmp_path, modality="US", images=1, frames=3, seed=1)
    img = _jpeg(render_thumbnail(path.read_bytes(), RenderOptions(size=128)))
    assert img.mode == "RGB" and max(img.size) == 128
    rgb = np.asarray(img, dtype=float)
    assert np.abs(rgb[..., 0] - rgb[..., 2]).max() > 100  # the yellow scale bar survived


def test_the_middle_frame_is_rendered_unless_another_is_asked_for() -> None:
    ds = _grey_frames([0, 100, 200], WindowCenter=127.5, WindowWidth=256)
    assert _pixels(render_dataset(ds)).mean() == pytest.approx(100, abs=2)
    assert _pixels(render_dataset(ds, RenderOptions(frame=2))).mean() == pytest.approx(200, abs=2)
    with pytest.raises(RenderError, match="frame"):
        render_dataset(ds, RenderOptions(frame=3))


def test_pixels_are_shown_at_their_physical_aspect(tmp_path: Path) -> None:
    localizer = synthesize_study(tmp_path, modality="CT", images=1, seed=1)[0]
    ds = pydicom.dcmread(localizer)
    row_mm, col_mm = (float(v) for v in ds.PixelSpacing)
    assert row_mm != col_mm
    width = round(256 * ds.Columns * col_mm / (ds.Rows * row_mm))
    assert _jpeg(render_dataset(ds)).size == (width, 256)


def test_small_images_are_not_enlarged() -> None:
    assert _jpeg(render_dataset(_grey_frames([7]))).size == (48, 32)


@pytest.mark.parametrize(
    ("name", "mode"),
    [
        ("CT_small.dcm", "L"),
        ("MR_small.dcm", "L"),
        ("MR_small_RLE.dcm", "L"),
        ("MR_small_bigendian.dcm", "L"),
        ("rtdose.dcm", "L"),
        ("SC_rgb_rle.dcm", "RGB"),
        ("SC_rgb_rle_16bit.dcm", "RGB"),
        ("SC_ybr_full_422_uncompressed.dcm", "RGB"),
        ("examples_palette.dcm", "RGB"),
        ("examples_ybr_color.dcm", "RGB"),
    ],
)
def test_pydicom_test_files_render(name: str, mode: str) -> None:
    img = _jpeg(render_thumbnail(_testdata(name).read_bytes()))
    assert img.mode == mode and max(img.size) <= 256
    assert np.asarray(img, dtype=float).std() > 5


@pytest.mark.parametrize(
    ("name", "mode"),
    [
        ("examples_jpeg2k.dcm", "RGB"),
        ("JPEG2000.dcm", "L"),
        ("SC_rgb_dcmtk_+eb+cy+np.dcm", "RGB"),
    ],
)
def test_compressed_test_files_render_when_pydicom_can_decode_them(name: str, mode: str) -> None:
    data = _testdata(name).read_bytes()
    try:
        pydicom.dcmread(io.BytesIO(data)).pixel_array  # noqa: B018
    except (RuntimeError, NotImplementedError) as exc:
        pytest.skip(f"no decoder for {name} here: {exc}")
    img = _jpeg(render_thumbnail(data))
    assert img.mode == mode and np.asarray(img, dtype=float).std() > 5


def test_ybr_jpeg_renders_with_the_colours_of_its_rgb_original() -> None:
    rgb = _pixels(render_thumbnail(_testdata("SC_rgb_rle.dcm").read_bytes()))
    ybr = _pixels(render_thumbnail(_testdata("SC_rgb_dcmtk_+eb+cy+np.dcm").read_bytes()))
    assert np.abs(rgb - ybr).mean() < 6


def test_palette_colour_goes_through_its_lookup_tables() -> None:
    rgb = _pixels(render_thumbnail(_testdata("examples_palette.dcm").read_bytes()))
    assert np.abs(rgb[..., 0] - rgb[..., 2]).mean() > 5


def test_a_dataset_without_pixels_is_a_render_error() -> None:
    with pytest.raises(RenderError, match="no pixel data"):
        render_thumbnail(_testdata("rtplan.dcm").read_bytes())


def test_truncated_pixel_data_is_a_render_error(tmp_path: Path) -> None:
    (path,) = synthesize_study(tmp_path, modality="MR", images=1, seed=1)
    ds = pydicom.dcmread(path)
    ds.PixelData = ds.PixelData[: len(ds.PixelData) // 2]
    with pytest.raises(RenderError, match="cannot decode"):
        render_dataset(ds)


def test_garbage_is_a_render_error_and_a_value_error() -> None:
    with pytest.raises(RenderError) as info:
        render_thumbnail(b"\x00" * 10)
    assert isinstance(info.value, CodecError) and isinstance(info.value, ValueError)


@pytest.mark.parametrize(
    ("kwargs", "word"),
    [
        ({"size": 0}, "size"),
        ({"quality": 0}, "quality"),
        ({"quality": 101}, "quality"),
        ({"frame": -1}, "frame"),
    ],
)
def test_bad_options_are_render_errors_naming_the_option(kwargs: dict[str, int], word: str) -> None:
    with pytest.raises(RenderError, match=word):
        RenderOptions(**kwargs)  # type: ignore[arg-type]


@pytest.mark.parametrize("syntax", [JPEGLSLossless, JPEG2000Lossless], ids=["jpeg-ls", "j2k"])
def test_compressed_instances_render_like_the_uncompressed_ones(
    tmp_path: Path, syntax: str
) -> None:
    path = synthesize_study(tmp_path, modality="CT", images=2, seed=4)[1]
    plain = _pixels(render_thumbnail(path.read_bytes()))
    ds = pydicom.dcmread(path)
    ds.compress(syntax)
    out = io.BytesIO()
    ds.save_as(out)
    assert np.abs(_pixels(render_thumbnail(out.getvalue())) - plain).max() <= 1

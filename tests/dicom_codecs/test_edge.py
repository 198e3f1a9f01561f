"""Lossless compression at the edge: smaller, bit-exact, or the original untouched."""

from __future__ import annotations

import io
import warnings
from pathlib import Path

import data_store  # type: ignore[import-untyped]
import numpy as np
import pydicom
import pydicom.data
import pytest
from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian, JPEGLSLossless, RLELossless

from cloudfilm.synth import synthesize_study
from dicom_codecs.edge import UploadCompression, compress_for_upload
from dicom_codecs.pydicom_plugin import register
from image_store.metadata import read_header

FOLDERS = (
    Path(pydicom.data.__file__).parent / "test_files",
    Path(data_store.__file__).parent / "data",
)


def _native_corpus() -> list[Path]:
    found = []
    for folder in FOLDERS:
        for path in sorted(folder.rglob("*.dcm")):
            try:
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")
                    ds = pydicom.dcmread(path, stop_before_pixels=True)
                    syntax = ds.file_meta.TransferSyntaxUID
                    if "PixelData" in pydicom.dcmread(path) and not syntax.is_compressed:
                        found.append(path)
            except Exception:  # files that are deliberately broken are not this test's subject
                continue
    return found


NATIVE = _native_corpus()


@pytest.fixture(scope="module", autouse=True)
def _plugin() -> None:
    register()


@pytest.fixture(scope="module")
def ct_slice(tmp_path_factory: pytest.TempPathFactory) -> bytes:
    d = tmp_path_factory.mktemp("edge")
    return synthesize_study(d, modality="CT", images=3, seed=7)[2].read_bytes()


def _pixels(data: bytes) -> bytes:
    ds = pydicom.dcmread(io.BytesIO(data))
    ds.decompress(generate_instance_uid=False)
    return bytes(ds.PixelData)


@pytest.mark.parametrize(
    ("codec", "syntax", "at_most"),
    [(UploadCompression.JPEG_LS, JPEGLSLossless, 0.40), (UploadCompression.RLE, RLELossless, 0.6)],
)
def test_a_ct_slice_shrinks_and_decodes_to_the_same_pixels(
    ct_slice: bytes, codec: UploadCompression, syntax: str, at_most: float
) -> None:
    result = compress_for_upload(ct_slice, codec)
    assert result.compressed, result.reason
    assert len(result.data) <= at_most * len(ct_slice)
    header = read_header(result.data)
    assert header.transfer_syntax_uid == syntax
    assert header.original_transfer_syntax_uid == ExplicitVRLittleEndian
    assert header.sop_uid == read_header(ct_slice).sop_uid
    assert _pixels(result.data) == bytes(pydicom.dcmread(io.BytesIO(ct_slice)).PixelData)


def test_compression_off_sends_the_original_bytes(ct_slice: bytes) -> None:
    result = compress_for_upload(ct_slice, UploadCompression.NONE)
    assert result.data is ct_slice and not result.compressed


def test_an_instance_that_arrived_compressed_goes_up_as_it_came() -> None:
    data = Path(pydicom.data.get_testdata_file("JPEG-LL.dcm")).read_bytes()  # type: ignore[arg-type]
    result = compress_for_upload(data, UploadCompression.JPEG_LS)
    assert result.data is data and "arrived in" in result.reason


def test_bits_above_bits_stored_survive_jpeg_ls_at_the_containers_precision(
    ct_slice: bytes,
) -> None:
    ds = pydicom.dcmread(io.BytesIO(ct_slice))
    assert ds.BitsStored == 12 and ds.PixelRepresentation == 0
    arr = ds.pixel_array.astype(np.uint16)
    arr[0, 0] |= 0x8000  # a bit above BitsStored (12): kept, the codestream has P = 16
    ds.PixelData = arr.tobytes()
    out = io.BytesIO()
    ds.save_as(out)
    result = compress_for_upload(out.getvalue(), UploadCompression.JPEG_LS)
    assert result.compressed
    assert _pixels(result.data) == arr.tobytes()


def test_garbage_goes_up_as_it_came_with_a_reason() -> None:
    result = compress_for_upload(b"not dicom at all", UploadCompression.JPEG_LS)
    assert result.data == b"not dicom at all" and result.reason


@pytest.mark.parametrize(
    "codec", [UploadCompression.JPEG_LS, UploadCompression.HTJ2K, UploadCompression.RLE]
)
@pytest.mark.parametrize("path", NATIVE, ids=[p.name for p in NATIVE])
def test_every_native_test_file_is_compressed_bit_exactly_or_left_alone(
    path: Path, codec: UploadCompression
) -> None:
    data = path.read_bytes()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        result = compress_for_upload(data, codec)
        if not result.compressed:
            assert result.data is data and result.reason
            return
        original = pydicom.dcmread(io.BytesIO(data))
        frames = int(original.get("NumberOfFrames") or 1)
        size = (
            original.Rows * original.Columns * original.SamplesPerPixel * original.BitsAllocated
        ) // 8
        assert _pixels(result.data)[: size * frames] == bytes(original.PixelData)[: size * frames]


def test_the_spliced_instance_is_what_pydicom_would_write(ct_slice: bytes) -> None:
    result = compress_for_upload(ct_slice, UploadCompression.JPEG_LS)
    assert result.compressed and isinstance(result.data, bytes)
    got = pydicom.dcmread(io.BytesIO(result.data))
    original = pydicom.dcmread(io.BytesIO(ct_slice))
    assert got.file_meta.TransferSyntaxUID == JPEGLSLossless
    assert got.file_meta.PrivateInformation.rstrip(b"\0") == ExplicitVRLittleEndian.encode()
    for elem in original:
        if elem.tag != 0x7FE00010:
            assert got[elem.tag] == elem
    assert _pixels(result.data) == bytes(original.PixelData)
    written = io.BytesIO()
    got.save_as(written, enforce_file_format=True)  # pydicom writes back the same bytes
    assert written.getvalue() == result.data


def test_an_implicit_vr_instance_is_rewritten_explicit_by_pydicom(ct_slice: bytes) -> None:
    ds = pydicom.dcmread(io.BytesIO(ct_slice))
    ds.file_meta.TransferSyntaxUID = ImplicitVRLittleEndian
    out = io.BytesIO()
    ds.save_as(out, enforce_file_format=True)
    result = compress_for_upload(out.getvalue(), UploadCompression.JPEG_LS)
    assert result.compressed and isinstance(result.data, bytes)
    got = pydicom.dcmread(io.BytesIO(result.data))
    assert got.file_meta.TransferSyntaxUID == JPEGLSLossless
    assert got.file_meta.PrivateInformation.rstrip(b"\0") == ImplicitVRLittleEndian.encode()
    assert _pixels(result.data) == bytes(ds.PixelData)


def test_elements_after_the_pixel_data_are_kept(ct_slice: bytes) -> None:
    ds = pydicom.dcmread(io.BytesIO(ct_slice))
    ds.add_new(0xFFFCFFFC, "OB", b"\0" * 16)  # Data Set Trailing Padding
    out = io.BytesIO()
    ds.save_as(out, enforce_file_format=True)
    result = compress_for_upload(out.getvalue(), UploadCompression.JPEG_LS)
    assert result.compressed and isinstance(result.data, bytes)
    got = pydicom.dcmread(io.BytesIO(result.data))
    assert got[0xFFFCFFFC].value == b"\0" * 16
    assert _pixels(result.data) == bytes(ds.PixelData)


@pytest.mark.parametrize("codec", [UploadCompression.JPEG_LS, UploadCompression.HTJ2K])
def test_pixels_that_do_not_compress_go_up_as_they_came(
    ct_slice: bytes, codec: UploadCompression
) -> None:
    ds = pydicom.dcmread(io.BytesIO(ct_slice))
    ds.BitsStored, ds.HighBit = 16, 15
    noise = np.random.default_rng(5).integers(0, 65535, (ds.Rows, ds.Columns), dtype=np.uint16)
    ds.PixelData = noise.tobytes()
    out = io.BytesIO()
    ds.save_as(out, enforce_file_format=True)
    result = compress_for_upload(out.getvalue(), codec)
    assert not result.compressed and result.reason  # "not smaller", or the codec gave up
    assert result.data == out.getvalue()


def test_colour_frames_go_up_as_jpeg_ls_when_htj2k_is_chosen() -> None:
    path = Path(pydicom.data.get_testdata_file("SC_rgb.dcm"))
    data = path.read_bytes()
    result = compress_for_upload(data, UploadCompression.HTJ2K)
    assert result.compressed and isinstance(result.data, bytes)
    got = pydicom.dcmread(io.BytesIO(result.data))
    assert got.file_meta.TransferSyntaxUID == JPEGLSLossless
    original = pydicom.dcmread(io.BytesIO(data))
    assert np.array_equal(got.pixel_array, original.pixel_array)

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom.data import get_testdata_file
from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian, JPEGLSLossless, RLELossless

from cloudfilm.synth import synthesize_study
from dicom_codecs.transcode import (
    TranscodeError,
    can_transcode,
    choose_syntax,
    to_explicit_vr_little_endian,
    transcode,
)


def _bytes(ds: pydicom.Dataset) -> bytes:
    out = io.BytesIO()
    ds.save_as(out, enforce_file_format=True)
    return out.getvalue()


@pytest.mark.parametrize("syntax", [JPEGLSLossless, RLELossless, ImplicitVRLittleEndian])
def test_any_little_endian_syntax_comes_back_as_explicit_vr_with_the_same_pixels(
    tmp_path: Path, syntax: str
) -> None:
    (path,) = synthesize_study(tmp_path, modality="MR", images=1, seed=8)
    original = pydicom.dcmread(path)
    ds = pydicom.dcmread(path)
    if syntax == ImplicitVRLittleEndian:
        ds.file_meta.TransferSyntaxUID = ImplicitVRLittleEndian
    else:
        ds.compress(syntax, generate_instance_uid=False)
    back = pydicom.dcmread(io.BytesIO(to_explicit_vr_little_endian(_bytes(ds))))
    assert back.file_meta.TransferSyntaxUID == ExplicitVRLittleEndian
    np.testing.assert_array_equal(back.pixel_array, original.pixel_array)
    assert back.SOPInstanceUID == original.SOPInstanceUID


def test_explicit_vr_little_endian_is_returned_untouched() -> None:
    path = get_testdata_file("CT_small.dcm")
    assert path is not None
    data = Path(path).read_bytes()
    assert to_explicit_vr_little_endian(data) is data


def test_unreadable_data_is_a_transcode_error() -> None:
    with pytest.raises(TranscodeError):
        to_explicit_vr_little_endian(b"\0" * 200)


@pytest.mark.parametrize("target", [ImplicitVRLittleEndian, JPEGLSLossless, RLELossless])
def test_an_instance_transcodes_into_every_target_and_back_with_the_same_pixels(
    tmp_path: Path, target: str
) -> None:
    (path,) = synthesize_study(tmp_path, modality="MR", images=1, seed=9)
    original = pydicom.dcmread(path)
    there = transcode(path.read_bytes(), target)
    assert pydicom.dcmread(io.BytesIO(there)).file_meta.TransferSyntaxUID == target
    back = pydicom.dcmread(io.BytesIO(transcode(there, ExplicitVRLittleEndian)))
    assert back.PixelData == original.PixelData
    assert back.SOPInstanceUID == original.SOPInstanceUID


def test_the_syntax_chosen_follows_the_clients_order_and_what_we_can_make() -> None:
    assert choose_syntax(JPEGLSLossless, ("*",)) == JPEGLSLossless
    assert choose_syntax(JPEGLSLossless, (RLELossless, "*")) == RLELossless
    assert choose_syntax(JPEGLSLossless, ("1.2.840.10008.1.2.4.50",)) is None
    assert choose_syntax("1.2.840.10008.1.2.2", (ExplicitVRLittleEndian,)) is None


def test_a_syntax_we_cannot_encode_is_a_transcode_error(tmp_path: Path) -> None:
    (path,) = synthesize_study(tmp_path, modality="MR", images=1, seed=9)
    with pytest.raises(TranscodeError, match="cannot transcode into"):
        transcode(path.read_bytes(), "1.2.840.10008.1.2.4.50")


def _pydicom_decompressed(data: bytes) -> bytes:
    ds = pydicom.dcmread(io.BytesIO(data))
    ds.decompress(generate_instance_uid=False)
    return _bytes(ds)


@pytest.mark.parametrize(
    "name",
    [
        "emri_small_jpeg_ls_lossless.dcm",  # 10 frames, 12 of 16 bits
        "MR_small_jpeg_ls_lossless.dcm",  # signed
        "JPEGLSNearLossless_08.dcm",
        "SC_rgb_jls_lossy_sample.dcm",  # colour
        "emri_small_RLE.dcm",
        "SC_rgb_rle_16bit_2frame.dcm",
    ],
)
def test_the_fast_decode_gives_the_bytes_pydicom_decompress_gives(name: str) -> None:
    path = get_testdata_file(name)
    assert path is not None
    data = Path(path).read_bytes()
    assert transcode(data, ExplicitVRLittleEndian) == _pydicom_decompressed(data)


def test_an_edge_compressed_series_decodes_back_to_the_arrival_bytes(tmp_path: Path) -> None:
    from dicom_codecs.edge import UploadCompression, compress_for_upload

    for path in synthesize_study(tmp_path, modality="CT", images=3, seed=4):
        original = path.read_bytes()
        for codec in (UploadCompression.JPEG_LS, UploadCompression.HTJ2K, UploadCompression.RLE):
            edge = compress_for_upload(original, codec)
            assert edge.compressed
            assert transcode(edge.data, ExplicitVRLittleEndian) == original


@pytest.mark.parametrize(
    ("stored", "target", "expected"),
    [
        ("1.2.840.10008.1.2.4.80", ExplicitVRLittleEndian, True),
        ("1.2.840.10008.1.2.4.90", ExplicitVRLittleEndian, True),  # openjpeg installed
        ("1.2.840.10008.1.2.4.50", RLELossless, True),
        ("1.2.840.10008.1.2.1.99", ExplicitVRLittleEndian, True),
        ("1.2.840.10008.1.2.2", ExplicitVRLittleEndian, False),  # big endian
        ("1.2.840.10008.1.2.2", "1.2.840.10008.1.2.2", True),
        (ExplicitVRLittleEndian, "1.2.840.10008.1.2.4.50", False),  # no JPEG encoder here
        ("1.2.840.10008.1.2.4.100", ExplicitVRLittleEndian, False),  # MPEG-2: no decoder
    ],
)
def test_what_can_be_transcoded(stored: str, target: str, expected: bool) -> None:
    assert can_transcode(stored, target) is expected

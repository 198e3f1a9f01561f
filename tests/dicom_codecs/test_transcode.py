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

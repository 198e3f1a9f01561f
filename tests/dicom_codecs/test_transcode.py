from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom.data import get_testdata_file
from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian, JPEGLSLossless, RLELossless

from cloudfilm.synth import synthesize_study
from dicom_codecs.transcode import TranscodeError, to_explicit_vr_little_endian


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

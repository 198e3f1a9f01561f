from __future__ import annotations

import struct
from pathlib import Path

import data_store  # type: ignore[import-untyped]
import numpy as np
import pydicom
import pydicom.data
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pydicom.pixels import pixel_array
from pydicom.pixels.decoders.rle import _rle_decode_frame
from pydicom.pixels.encoders.native import _encode_frame as pydicom_encode
from pydicom.uid import RLELossless

from cloudfilm.synth import synthesize_study
from dicom_codecs.pydicom_plugin import register, warm_up
from dicom_codecs.rle import CorruptRLE, FrameSpec, decode_rle_frame, encode_rle_frame

BUNDLED = Path(pydicom.data.__file__).parent / "test_files"
PYDICOM_DATA = Path(data_store.__file__).parent / "data"
RLE_FILES = sorted(
    p for folder in (BUNDLED, PYDICOM_DATA) for p in folder.glob("*.dcm") if "rle" in p.name.lower()
)


class _Runner:
    """The attributes of pydicom's EncodeRunner that its native RLE encoder reads."""

    def __init__(self, spec: FrameSpec) -> None:
        self.rows, self.columns = spec.rows, spec.columns
        self.samples_per_pixel, self.bits_allocated = spec.samples_per_pixel, spec.bits_allocated

    def get_option(self, name: str, default: object = None) -> object:
        return default


def _frame(rng: np.random.Generator, spec: FrameSpec, spread: int) -> bytes:
    dtype = {8: "<u1", 16: "<u2", 32: "<u4", 64: "<u8"}[spec.bits_allocated]
    shape = (spec.rows, spec.columns, spec.samples_per_pixel)
    base = rng.integers(0, max(1, spread), shape)
    ramp = (np.arange(spec.columns)[None, :, None] // 5) % 7
    return (base + ramp).astype(dtype).tobytes()


@settings(max_examples=150, deadline=None)
@given(
    rows=st.integers(1, 40),
    columns=st.integers(1, 300),
    samples=st.sampled_from([1, 3]),
    bits=st.sampled_from([8, 16, 32]),
    spread=st.sampled_from([1, 2, 5, 300, 70000]),
    seed=st.integers(0, 2**32 - 1),
)
def test_round_trips_and_pydicom_agrees_both_ways(
    rows: int, columns: int, samples: int, bits: int, spread: int, seed: int
) -> None:
    spec = FrameSpec(rows, columns, samples, bits)
    data = _frame(np.random.default_rng(seed), spec, spread)
    ours = encode_rle_frame(data, spec)
    theirs = pydicom_encode(data, _Runner(spec))  # type: ignore[arg-type]
    ref = bytes(_rle_decode_frame(theirs, rows, columns, samples, bits, ">"))
    assert bytes(decode_rle_frame(ours, spec)) == ref  # we read ours
    assert bytes(decode_rle_frame(theirs, spec)) == ref  # we read theirs
    assert (
        bytes(_rle_decode_frame(ours, rows, columns, samples, bits, ">")) == ref
    )  # they read ours
    assert len(ours) <= len(theirs) + 64  # no worse than pydicom's own encoder


@pytest.mark.parametrize("path", RLE_FILES, ids=[p.name for p in RLE_FILES])
def test_every_bundled_rle_file_decodes_like_pydicom(path: Path) -> None:
    register()
    ds = pydicom.dcmread(path)
    ours = pixel_array(ds, decoding_plugin="cloudfilm")
    theirs = pixel_array(ds, decoding_plugin="pydicom")
    np.testing.assert_array_equal(ours, theirs)


def test_dataset_compress_and_pixel_array_use_the_plugin(tmp_path: Path) -> None:
    register()
    warm_up()
    (path,) = synthesize_study(tmp_path, modality="MR", images=1, seed=3)
    ds = pydicom.dcmread(path)
    original = ds.pixel_array.copy()
    ds.compress(RLELossless, encoding_plugin="cloudfilm")
    assert ds.file_meta.TransferSyntaxUID == RLELossless
    np.testing.assert_array_equal(pixel_array(ds, decoding_plugin="pydicom"), original)
    np.testing.assert_array_equal(pixel_array(ds, decoding_plugin="cloudfilm"), original)


def _valid() -> tuple[bytes, FrameSpec]:
    spec = FrameSpec(16, 16, 1, 16)
    return encode_rle_frame(np.arange(256, dtype="<u2").tobytes(), spec), spec


@pytest.mark.parametrize(
    "mutate",
    [
        lambda b: b[:40],  # shorter than the header
        lambda b: struct.pack("<L", 3) + b[4:],  # wrong segment count
        lambda b: b[:4] + struct.pack("<L", 10) + b[8:],  # first offset not 64
        lambda b: b[:-7],  # truncated segment
        lambda b: b[:8] + struct.pack("<L", 10**6) + b[12:],  # offset past the end
        lambda b: b[:64] + b"\x7f" + b[65:],  # a literal that reads past the segment
    ],
)
def test_corrupt_frames_raise_a_codec_error(mutate: object) -> None:
    data, spec = _valid()
    with pytest.raises(CorruptRLE):
        decode_rle_frame(mutate(data), spec)  # type: ignore[operator]


@settings(max_examples=300, deadline=None)
@given(noise=st.binary(min_size=0, max_size=600), cut=st.integers(0, 700))
def test_fuzzed_frames_never_crash(noise: bytes, cut: int) -> None:
    data, spec = _valid()
    mutated = (data[:cut] + noise)[: max(64, len(data))]
    try:
        out = decode_rle_frame(mutated, spec)
    except CorruptRLE:
        return
    assert len(out) == spec.frame_bytes


def test_bad_frame_specs_are_refused() -> None:
    with pytest.raises(ValueError, match="15 segments"):
        FrameSpec(2, 2, 3, 64)
    with pytest.raises(ValueError, match="bytes"):
        encode_rle_frame(b"\0" * 3, FrameSpec(2, 2, 1, 8))

"""Single frames out of a stored instance, without decoding: native frames are byte ranges,
encapsulated frames come out of their fragments (pydicom.encaps)."""

from __future__ import annotations

import io

import pydicom
from pydicom.encaps import get_frame

from dicom_codecs.errors import CodecError


class FrameError(CodecError, LookupError):
    """A frame number outside the instance, or an instance without pixel data."""


def frame_bytes(part10: bytes, numbers: list[int]) -> tuple[str, list[bytes]]:
    """(transfer syntax UID, the requested frames' bytes); frame numbers start at 1."""
    ds = pydicom.dcmread(io.BytesIO(part10))
    if "PixelData" not in ds:
        raise FrameError("the instance has no pixel data")
    syntax = str(ds.file_meta.TransferSyntaxUID)
    count = int(ds.get("NumberOfFrames") or 1)
    bad = [n for n in numbers if not 1 <= n <= count]
    if bad:
        raise FrameError(f"frame numbers {bad} are outside 1..{count}")
    pixels: bytes = ds.PixelData
    if ds.file_meta.TransferSyntaxUID.is_encapsulated:
        return syntax, [get_frame(pixels, n - 1, number_of_frames=count) for n in numbers]
    samples = int(ds.SamplesPerPixel)
    size = int(ds.Rows) * int(ds.Columns) * samples * int(ds.BitsAllocated) // 8
    return syntax, [pixels[(n - 1) * size : n * size] for n in numbers]

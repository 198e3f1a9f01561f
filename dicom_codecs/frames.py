"""Single frames out of a stored instance: native frames are byte ranges, encapsulated frames
come out of their fragments (pydicom.encaps) without decoding; frames in another syntax come
out of the instance transcoded first (``dicom_codecs.transcode``)."""

from __future__ import annotations

import io

import pydicom
from pydicom.encaps import get_frame

from dicom_codecs.errors import CodecError

NATIVE = frozenset({"1.2.840.10008.1.2", "1.2.840.10008.1.2.1", "1.2.840.10008.1.2.1.99"})
"""Little-endian syntaxes whose pixel data is native: their frames are the same bytes as in
Explicit VR Little Endian."""
EXPLICIT_LE = "1.2.840.10008.1.2.1"


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


def frames_in(part10: bytes, stored: str, syntax: str, numbers: list[int]) -> list[bytes]:
    """The requested frames (1-based) in transfer syntax ``syntax``: sliced out of the stored
    instance when it already holds them so (native little endian counts as Explicit VR Little
    Endian), else out of the instance transcoded into ``syntax`` (TranscodeError if it cannot
    be)."""
    if syntax != stored and not (syntax == EXPLICIT_LE and stored in NATIVE):
        from dicom_codecs.transcode import transcode

        part10 = transcode(part10, syntax)
    return frame_bytes(part10, numbers)[1]


def all_frames(part10: bytes) -> list[bytes]:
    """Every frame of the instance, in order (FrameError without pixel data)."""
    ds = pydicom.dcmread(io.BytesIO(part10), stop_before_pixels=True)
    return frame_bytes(part10, list(range(1, int(ds.get("NumberOfFrames") or 1) + 1)))[1]

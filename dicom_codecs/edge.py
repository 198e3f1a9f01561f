"""Lossless compression at the edge: the gateway re-encodes an instance before upload, proves
the result decodes bit-exactly to the original pixel data, and only then sends it.

Which codec: ``upload_compression`` chooses HTJ2K (High-Throughput JPEG 2000 lossless, PS3.5
A.4.4, OpenJPH; the default), JPEG-LS (about an eighth fewer bytes for about three times the
CPU: for an uplink slower than the gateway's cores), RLE (our Numba codec: a worse ratio) or
none; the README gives the measured ratios and speeds. Monochrome JPEG-LS and HTJ2K frames are
encoded and checked through imagecodecs, which releases the GIL and skips pydicom's per-frame
pipeline; the sample precision of each codestream is the container's 8 or 16 bits (as dcm4che
writes it; HTJ2K signed when Pixel Representation is 1), so every stored bit, sign extension
included, survives whatever Bits Stored says. Colour frames are JPEG-LS under either choice,
through pydicom's pyjpegls plugin (colour HTJ2K is not encoded here).

An instance larger than ``STREAM_BYTES`` goes up as it arrived, streamed from its spool file
(``compress_file_for_upload`` logs it with the reason): pydicom's encoders take the whole pixel
data, so compressing means holding the instance, its pixel array and the re-encoded copy in
memory, about three times its size, and the gateway's memory must stay bounded whatever a
modality sends (a 2 GB tomosynthesis or a cine).

The arrival syntax is kept in the file meta (Private Information, PS3.10 7.1, under
``image_store.metadata.ORIGINAL_SYNTAX_CREATOR``) so the index records it and retrieval can
return the instance as it came.
"""

from __future__ import annotations

import io
import logging
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import imagecodecs
import numpy as np
import pydicom
from pydicom.dataset import Dataset
from pydicom.encaps import encapsulate
from pydicom.pixels.decoders.base import get_decoder
from pydicom.uid import (
    UID,
    ExplicitVRLittleEndian,
    HTJ2KLossless,
    JPEGLSLossless,
    RLELossless,
)

from dicom_codecs import splice
from dicom_codecs.pydicom_plugin import register
from dicom_codecs.upload_compression import UploadCompression
from image_store.metadata import ORIGINAL_SYNTAX_CREATOR

logger = logging.getLogger(__name__)


_SYNTAX = {
    UploadCompression.JPEG_LS: JPEGLSLossless,
    UploadCompression.HTJ2K: HTJ2KLossless,
    UploadCompression.RLE: RLELossless,
}
_PLUGIN = {UploadCompression.JPEG_LS: "pyjpegls", UploadCompression.RLE: "cloudfilm"}
MAX_COMPRESS_BYTES = 512 * 1024 * 1024
"""Instances above this go up as they came (held whole in memory to compress)."""
STREAM_BYTES = 24 * 1024 * 1024
"""Spooled instances above this go up as they arrived, streamed from the file (see above)."""


@dataclass(frozen=True, slots=True)
class EdgeResult:
    data: bytes | Path
    """What to upload: the re-encoded instance, the original bytes, or the original file
    (an instance sent as it arrived, streamed)."""
    compressed: bool
    reason: str = ""
    """Why the original is sent (not compressible, or the check failed)."""


def compress_for_upload(part10: bytes, codec: UploadCompression) -> EdgeResult:
    """``part10`` re-encoded losslessly with ``codec`` if that is possible and decodes back to
    exactly the same pixel bytes; otherwise the original bytes with the reason."""
    if codec is UploadCompression.NONE:
        return EdgeResult(part10, False, "compression off")
    if codec is UploadCompression.RLE:
        register()  # idempotent: the stack registers at start, but uploads may come first
    if len(part10) > MAX_COMPRESS_BYTES:
        return EdgeResult(part10, False, "too large to compress in memory")
    try:
        fp = io.BytesIO(part10)
        ds = pydicom.dcmread(fp, stop_before_pixels=True)
        native = _native_pixels(part10, ds, fp.tell())
        if native is None:
            ds = pydicom.dcmread(io.BytesIO(part10))
        else:
            ds.PixelData = native.value
        why = _not_compressible(ds)
        if why:
            return EdgeResult(part10, False, why)
        original_syntax = UID(ds.file_meta.TransferSyntaxUID)
        monochrome = int(ds.get("SamplesPerPixel", 1)) == 1
        if codec is UploadCompression.HTJ2K and not monochrome:
            codec = UploadCompression.JPEG_LS  # colour HTJ2K is not encoded here
        if codec in _FRAME_CODECS and monochrome:
            frames = _monochrome_frames(ds, codec)
            if frames is None:
                return EdgeResult(part10, False, "decoded pixels differ from the original")
            _note_arrival(ds, original_syntax)
            ds.file_meta.TransferSyntaxUID = _SYNTAX[codec]
            encapsulated = encapsulate(frames, has_bot=len(frames) > 1)
            if native is not None:
                return _smaller(part10, _spliced(part10, ds, native, encapsulated))
            ds.PixelData = encapsulated
            ds["PixelData"].VR = "OB"
        else:
            original_pixels = bytes(ds.PixelData)
            ds.compress(_SYNTAX[codec], encoding_plugin=_PLUGIN[codec], generate_instance_uid=False)
            if not _decodes_to(ds, original_pixels, _PLUGIN[codec]):
                return EdgeResult(part10, False, "decoded pixels differ from the original")
            _note_arrival(ds, original_syntax)
        out = io.BytesIO()
        ds.save_as(out, enforce_file_format=True)
        return _smaller(part10, out.getvalue())
    except Exception as exc:  # pydicom and the encoders raise many types; send the original
        logger.debug("not compressed: %s", exc, exc_info=True)
        return EdgeResult(part10, False, f"cannot compress: {exc}")


def _smaller(original: bytes, encoded: bytes) -> EdgeResult:
    if len(encoded) >= len(original):
        return EdgeResult(original, False, "not smaller re-encoded (noise-like pixels)")
    return EdgeResult(encoded, True)


def compress_file_for_upload(
    path: Path, codec: UploadCompression, *, stream_bytes: int = STREAM_BYTES
) -> EdgeResult:
    """A spooled instance to upload: its re-encoded bytes (:func:`compress_for_upload`), or
    the file itself, streamed, when compression is off, the instance cannot be compressed or
    it is larger than ``stream_bytes`` (logged, with the reason)."""
    if codec is UploadCompression.NONE:
        return EdgeResult(path, False, "compression off")
    size = path.stat().st_size
    if size > stream_bytes:
        reason = (
            f"{size} bytes, above {stream_bytes}: sent as it arrived, streamed from the spool "
            "(compressing holds about three copies in memory)"
        )
        logger.info("%s not compressed: %s", path.name, reason)
        return EdgeResult(path, False, reason)
    result = compress_for_upload(path.read_bytes(), codec)
    return result if result.compressed else EdgeResult(path, False, result.reason)


def _not_compressible(ds: Dataset) -> str:
    syntax = UID(ds.file_meta.get("TransferSyntaxUID", ""))
    if "PixelData" not in ds:
        return "no pixel data"
    if not syntax.is_little_endian or syntax.is_compressed or syntax.is_deflated:
        return f"arrived in {syntax.name or syntax}"
    if int(ds.get("BitsAllocated", 0)) not in (8, 16):
        return f"BitsAllocated {ds.get('BitsAllocated')}"
    if str(ds.get("PhotometricInterpretation", "")).startswith("YBR"):
        return "YBR colour"
    if int(ds.get("SamplesPerPixel", 1)) > 1 and int(ds.get("PlanarConfiguration", 0)) == 1:
        return "colour by plane (decoders return it by pixel: not the same bytes)"
    return ""


def _frame_shape(ds: Dataset) -> tuple[int, int, int, np.dtype[np.unsignedinteger[Any]]]:
    bits = int(ds.BitsAllocated)
    dtype: np.dtype[np.unsignedinteger[Any]] = np.dtype("<u2" if bits == 16 else "u1")
    return int(ds.get("NumberOfFrames") or 1), int(ds.Rows), int(ds.Columns), dtype


def _jpegls(frame: np.ndarray[Any, Any]) -> tuple[bytes | bytearray, np.ndarray[Any, Any]]:
    codestream = imagecodecs.jpegls_encode(frame)
    return codestream, imagecodecs.jpegls_decode(codestream)


def _htj2k(frame: np.ndarray[Any, Any]) -> tuple[bytes | bytearray, np.ndarray[Any, Any]]:
    codestream = imagecodecs.htj2k_encode(frame, level=0)  # level 0: reversible, lossless
    return codestream, imagecodecs.htj2k_decode(codestream)


_FRAME_CODECS = {UploadCompression.JPEG_LS: _jpegls, UploadCompression.HTJ2K: _htj2k}


def _monochrome_frames(ds: Dataset, codec: UploadCompression) -> list[bytes] | None:
    """``ds``'s native one-sample pixel data as ``codec`` codestreams, one per frame, each
    checked to decode to the frame's exact bytes; None when one does not."""
    frames, rows, cols, dtype = _frame_shape(ds)
    pixels = ds.PixelData
    frame_len = rows * cols * dtype.itemsize
    if frame_len * frames not in (len(pixels), len(pixels) - 1):  # odd length: one pad byte
        return None
    stack = np.frombuffer(pixels, dtype, count=rows * cols * frames).reshape(frames, rows, cols)
    if codec is UploadCompression.HTJ2K and int(ds.get("PixelRepresentation", 0)) == 1:
        stack = stack.view(stack.dtype.str.replace("u", "i"))  # a signed J2K codestream
    encoded = []
    for frame in stack:
        codestream, decoded = _FRAME_CODECS[codec](frame)
        if decoded.dtype != frame.dtype or not np.array_equal(decoded, frame):
            return None
        encoded.append(bytes(codestream))
    return encoded


def _note_arrival(ds: Dataset, syntax: UID) -> None:
    """Record the arrival syntax in the file meta (see ORIGINAL_SYNTAX_CREATOR)."""
    ds.file_meta.PrivateInformationCreatorUID = UID(ORIGINAL_SYNTAX_CREATOR)
    value = str(syntax).encode("ascii")
    ds.file_meta.PrivateInformation = value + b"\0" * (len(value) % 2)


@dataclass(frozen=True, slots=True)
class _NativePixels:
    body_at: int
    """Where the data set starts (after the file meta)."""
    pixel_at: int
    """Where the Pixel Data element starts; it is the data set's last element."""
    value: bytes


_NATIVE_PIXEL_TAGS = (b"\xe0\x7f\x10\x00OB\x00\x00", b"\xe0\x7f\x10\x00OW\x00\x00")


def _native_pixels(part10: bytes, head: Dataset, pixel_at: int) -> _NativePixels | None:
    """Where an Explicit VR Little Endian file's native Pixel Data is, if it is the last
    element (``head`` read up to it, ``pixel_at`` where pydicom stopped); None for any other
    layout (it goes through pydicom's writer)."""
    meta = head.file_meta
    body_at = splice.body_offset(part10, meta)
    if (
        UID(meta.get("TransferSyntaxUID", "")) != ExplicitVRLittleEndian
        or body_at is None
        or part10[pixel_at : pixel_at + 8] not in _NATIVE_PIXEL_TAGS
    ):
        return None
    (length,) = struct.unpack_from("<I", part10, pixel_at + 8)
    if pixel_at + 12 + length != len(part10):  # undefined length, or elements follow
        return None
    return _NativePixels(body_at, pixel_at, part10[pixel_at + 12 :])


def _spliced(part10: bytes, ds: Dataset, native: _NativePixels, encapsulated: bytes) -> bytes:
    """``part10`` with ``ds``'s file meta and ``encapsulated`` as its Pixel Data (see
    ``dicom_codecs.splice``): only the pixels are re-encoded."""
    return splice.with_pixel_data(
        part10,
        ds.file_meta,
        native.body_at,
        native.pixel_at,
        splice.pixel_data_header(b"OB", splice.ENCAPSULATED_LENGTH),
        encapsulated,
        splice.SEQUENCE_DELIMITER,
    )


def _decodes_to(ds: Dataset, original: bytes, plugin: str) -> bool:
    """True when decoding the re-encoded pixel data, as retrieval will (pydicom's decoder, then
    the native little-endian layout), gives back ``original`` byte for byte, frame by frame."""
    decoder = get_decoder(ds.file_meta.TransferSyntaxUID)
    frames = int(ds.get("NumberOfFrames") or 1)
    frame_len = (
        int(ds.Rows) * int(ds.Columns) * int(ds.SamplesPerPixel) * int(ds.BitsAllocated) // 8
    )
    if frame_len * frames not in (len(original), len(original) - 1):  # odd length: one pad byte
        return False
    for n in range(frames):
        arr, _ = decoder.as_array(ds, index=n, decoding_plugin=plugin, as_rgb=False)  # type: ignore[arg-type]
        got = arr.astype(arr.dtype.newbyteorder("<"), copy=False).tobytes()
        if got != original[n * frame_len : (n + 1) * frame_len]:
            return False
    return True

"""Lossless compression at the edge: the gateway re-encodes an instance before upload, proves
the result decodes bit-exactly to the original pixel data, and only then sends it.

Which codec: ``upload_compression`` chooses JPEG-LS (CharLS, through pydicom's pyjpegls plugin;
the best ratio of the codecs ``bench/codec_table.py`` compares, the default), RLE (our Numba
codec: a worse ratio at several times the speed, for fast links or a busy CPU) or none; the
README gives the measured ratios and speeds.

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
from dataclasses import dataclass
from pathlib import Path

import pydicom
from pydicom.dataset import Dataset
from pydicom.pixels.decoders.base import get_decoder
from pydicom.uid import UID, JPEGLSLossless, RLELossless

from dicom_codecs.pydicom_plugin import register
from dicom_codecs.upload_compression import UploadCompression
from image_store.metadata import ORIGINAL_SYNTAX_CREATOR

logger = logging.getLogger(__name__)


_SYNTAX = {UploadCompression.JPEG_LS: JPEGLSLossless, UploadCompression.RLE: RLELossless}
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
        ds = pydicom.dcmread(io.BytesIO(part10))
        why = _not_compressible(ds)
        if why:
            return EdgeResult(part10, False, why)
        original_syntax = UID(ds.file_meta.TransferSyntaxUID)
        original_pixels = bytes(ds.PixelData)
        ds.compress(_SYNTAX[codec], encoding_plugin=_PLUGIN[codec], generate_instance_uid=False)
        if not _decodes_to(ds, original_pixels, _PLUGIN[codec]):
            return EdgeResult(part10, False, "decoded pixels differ from the original")
        ds.file_meta.PrivateInformationCreatorUID = UID(ORIGINAL_SYNTAX_CREATOR)
        value = str(original_syntax).encode("ascii")
        ds.file_meta.PrivateInformation = value + b"\0" * (len(value) % 2)
        out = io.BytesIO()
        ds.save_as(out, enforce_file_format=True)
        return EdgeResult(out.getvalue(), True)
    except Exception as exc:  # pydicom and the encoders raise many types; send the original
        logger.debug("not compressed: %s", exc, exc_info=True)
        return EdgeResult(part10, False, f"cannot compress: {exc}")


def compress_file_for_upload(
    path: Path, codec: UploadCompression, *, stream_bytes: int = STREAM_BYTES
) -> EdgeResult:
    """A spooled instance to upload: the file itself when compression is off or the instance is
    larger than ``stream_bytes`` (logged, with the reason), else :func:`compress_for_upload`
    of its bytes (the original bytes if it cannot be compressed)."""
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
    return compress_for_upload(path.read_bytes(), codec)


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

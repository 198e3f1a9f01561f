"""Transcoding on retrieval: any little-endian instance pydicom can decode comes back in any of
``TARGETS`` (uncompressed, or the lossless codecs we encode).

Decoding JPEG-LS, grey HTJ2K and grey RLE into Explicit VR Little Endian (the PS3.18
default, so what most retrievals need) takes a fast path: the frames are decoded by CharLS or
OpenJPH through imagecodecs or by our Numba RLE kernel, all of which release the GIL, so
several instances decode at once on several cores; the header is rewritten by pydicom.
Everything else goes through pydicom's ``decompress``/``compress``.

An instance the gateway re-encoded at the edge returns to its arrival form: the Private
Information it carried about that is dropped when it is decoded.
"""

from __future__ import annotations

import io

import pydicom
from pydicom.dataset import Dataset
from pydicom.encaps import generate_fragments, generate_frames
from pydicom.pixels.decoders.base import get_decoder
from pydicom.uid import (
    UID,
    ExplicitVRLittleEndian,
    HTJ2KLossless,
    ImplicitVRLittleEndian,
    JPEGLSLossless,
    JPEGLSNearLossless,
    RLELossless,
)
from pydicom.valuerep import VR

from dicom_codecs import splice
from dicom_codecs.errors import CodecError
from image_store.metadata import ORIGINAL_SYNTAX_CREATOR

TARGETS: tuple[str, ...] = (
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    JPEGLSLossless,
    RLELossless,
)
"""Transfer syntaxes an instance can be transcoded into (in our order of preference)."""

_ENCODERS: dict[str, str] = {JPEGLSLossless: "pyjpegls", RLELossless: "cloudfilm"}
_DECODERS: dict[str, str] = {JPEGLSLossless: "pyjpegls", RLELossless: "cloudfilm"}


class TranscodeError(CodecError, ValueError):
    """An instance that cannot be re-encoded in the requested transfer syntax."""


def transcode(part10: bytes, target: str) -> bytes:
    """The instance in transfer syntax ``target`` (one of TARGETS); unchanged if it already is."""
    if target not in TARGETS:
        raise TranscodeError(f"cannot transcode into {UID(target).name or target}")
    try:
        if target == ExplicitVRLittleEndian:
            spliced = _native_spliced(part10)
            if spliced is not None:
                return spliced
        ds = pydicom.dcmread(io.BytesIO(part10))
        syntax = ds.file_meta.TransferSyntaxUID
        if syntax == target:
            return part10
        if not syntax.is_little_endian:
            raise TranscodeError(f"cannot transcode from big-endian {syntax.name}")
        if target == ExplicitVRLittleEndian and _decode_fast(ds, syntax):
            _drop_arrival_note(ds)
            return _encoded(ds)
        if syntax.is_compressed and "PixelData" in ds:
            _decompress(ds, syntax)
        if UID(target).is_compressed and "PixelData" in ds:
            from dicom_codecs.pydicom_plugin import register

            register()
            ds.compress(target, encoding_plugin=_ENCODERS[target], generate_instance_uid=False)
        else:
            ds.file_meta.TransferSyntaxUID = UID(target)
        return _encoded(ds)
    except TranscodeError:
        raise
    except Exception as exc:  # pydicom and the codecs raise many types for bad pixel data
        name = UID(target).name or target
        raise TranscodeError(f"cannot transcode to {name}: {exc}") from exc


def _decompress(ds: Dataset, syntax: UID) -> None:
    plugin = _DECODERS.get(syntax, "")
    if plugin == "cloudfilm":
        from dicom_codecs.pydicom_plugin import register

        register()
    # same instance, other encoding: keep its SOP Instance UID (pydicom makes a new one)
    ds.decompress(decoding_plugin=plugin, generate_instance_uid=False)
    _drop_arrival_note(ds)


def _encoded(ds: Dataset) -> bytes:
    out = io.BytesIO()
    ds.save_as(out, enforce_file_format=True)
    return out.getvalue()


def _drop_arrival_note(ds: Dataset) -> None:
    """Drop the edge compression's note of the arrival syntax (the instance is decoded now)."""
    meta = ds.file_meta
    if meta.get("PrivateInformationCreatorUID") == ORIGINAL_SYNTAX_CREATOR:
        del meta.PrivateInformationCreatorUID
        if "PrivateInformation" in meta:
            del meta.PrivateInformation


def to_explicit_vr_little_endian(part10: bytes) -> bytes:
    """The instance re-encoded as Explicit VR Little Endian (decompressed if it was compressed;
    returned unchanged if it already is)."""
    return transcode(part10, ExplicitVRLittleEndian)


_FAST = frozenset({JPEGLSLossless, JPEGLSNearLossless, HTJ2KLossless, RLELossless})
_ENCAPSULATED_PIXELS = (
    b"\xe0\x7f\x10\x00OB\x00\x00\xff\xff\xff\xff",
    b"\xe0\x7f\x10\x00OW\x00\x00\xff\xff\xff\xff",
)


def _native_spliced(part10: bytes) -> bytes | None:
    """A grey JPEG-LS, HTJ2K or RLE instance as Explicit VR Little Endian without re-encoding its
    header: the file meta is rewritten by pydicom and the data set's elements before the
    Pixel Data (already explicit VR little endian) are copied as they are, then the decoded
    frames follow. None (nothing done) for any other instance, or when anything follows the
    Pixel Data, or when pydicom's reading does not place it where expected."""
    fp = io.BytesIO(part10)
    ds = pydicom.dcmread(fp, stop_before_pixels=True)
    meta = ds.file_meta
    syntax = UID(meta.get("TransferSyntaxUID", ""))
    body_at = splice.body_offset(part10, meta)
    pixel_at = fp.tell()
    if (
        syntax not in _FAST
        or body_at is None
        or part10[pixel_at : pixel_at + 12] not in _ENCAPSULATED_PIXELS
        or int(ds.get("SamplesPerPixel") or 0) != 1
    ):
        return None
    ds.PixelData = part10[pixel_at + 12 :]  # the encapsulated value and its delimiter
    value_len = sum(8 + len(f) for f in generate_fragments(ds.PixelData)) + 8
    if value_len != len(ds.PixelData):
        return None  # elements follow the pixel data: pydicom writes them
    if not _decode_fast(ds, syntax):
        return None
    pixels = ds.PixelData
    _drop_arrival_note(ds)
    vr = b"OB" if int(ds.BitsAllocated) == 8 else b"OW"
    header = splice.pixel_data_header(vr, len(pixels))
    return splice.with_pixel_data(part10, meta, body_at, pixel_at, header, pixels)


def _decode_fast(ds: Dataset, syntax: UID) -> bool:
    """Decode JPEG-LS or grey RLE pixel data into native little-endian in place (the same bytes
    pydicom's ``decompress`` gives); False, untouched, for anything else."""
    if syntax not in _FAST or "PixelData" not in ds:
        return False
    rows, columns = int(ds.Rows), int(ds.Columns)
    samples, bits = int(ds.SamplesPerPixel), int(ds.BitsAllocated)
    signed, stored = int(ds.PixelRepresentation), int(ds.get("BitsStored") or bits)
    if bits not in (8, 16) or (signed and stored < bits):
        return False  # pydicom corrects the sign of such values: leave it to pydicom
    if syntax == RLELossless and samples != 1:
        return False
    count = int(ds.get("NumberOfFrames") or 1)
    frame_len = rows * columns * samples * bits // 8
    out = bytearray(frame_len * count + (frame_len * count) % 2)
    frames = generate_frames(ds.PixelData, number_of_frames=count)
    for n, frame in enumerate(frames):
        if n >= count:
            raise TranscodeError(f"pixel data holds more than its {count} frames")
        data = _decode_frame(frame, syntax, rows, columns, samples, bits)
        if len(data) != frame_len:
            raise TranscodeError(f"frame {n + 1} decodes to {len(data)} bytes, not {frame_len}")
        out[n * frame_len : (n + 1) * frame_len] = data
    elem = ds["PixelData"]
    elem.value = bytes(out)
    elem.is_undefined_length = False
    elem.VR = VR.OB if bits == 8 else VR.OW
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    if samples > 1:
        ds.PlanarConfiguration = 0  # CharLS returns colour by pixel
    return True


def _decode_frame(
    frame: bytes, syntax: UID, rows: int, columns: int, samples: int, bits: int
) -> bytes | bytearray:
    if syntax == RLELossless:
        from dicom_codecs.rle import FrameSpec, decode_rle_frame

        return decode_rle_frame(frame, FrameSpec(rows, columns, samples, bits))
    import imagecodecs

    if syntax == HTJ2KLossless:
        arr = imagecodecs.htj2k_decode(frame)
    else:
        arr = imagecodecs.jpegls_decode(frame)
    if arr.shape[:2] != (rows, columns) or arr.dtype.itemsize * 8 != bits:
        raise TranscodeError(
            f"{syntax.name} frame is {arr.shape} of {arr.dtype}, "
            f"not {rows}x{columns} of {bits} bits"
        )
    return arr.astype(arr.dtype.newbyteorder("<"), copy=False).tobytes()


def can_transcode(stored: str, target: str) -> bool:
    """True when an instance stored in ``stored`` can be sent in ``target``: the same syntax,
    or a little-endian one pydicom can decode (its plugins installed) into one of TARGETS."""
    if target == stored:
        return True
    uid = UID(stored)
    if target not in TARGETS or not uid.is_little_endian:
        return False
    if not uid.is_compressed:
        return True
    try:
        return bool(get_decoder(uid).is_available)
    except NotImplementedError:
        return False


def choose_syntax(stored: str, wanted: tuple[str, ...]) -> str | None:
    """The syntax to send an instance stored in ``stored`` in, given the client's acceptable
    syntaxes in its order ('*' = as stored); None if none of them can be produced."""
    for syntax in wanted:
        if syntax in ("*", stored):
            return stored
        if syntax in TARGETS and UID(stored).is_little_endian:
            return syntax
    return None

"""Transcoding on retrieval: anything stored comes back as Explicit VR Little Endian, and
little-endian instances in any of ``TARGETS`` (uncompressed, or the lossless codecs we encode).

An instance the gateway re-encoded at the edge returns to its arrival form: the Private
Information it carried about that is dropped when it is decoded.
"""

from __future__ import annotations

import io

import pydicom
from pydicom.dataset import Dataset
from pydicom.uid import (
    UID,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    JPEGLSLossless,
    RLELossless,
)

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
        ds = pydicom.dcmread(io.BytesIO(part10))
        syntax = ds.file_meta.TransferSyntaxUID
        if syntax == target:
            return part10
        if not syntax.is_little_endian:
            raise TranscodeError(f"cannot transcode from big-endian {syntax.name}")
        if syntax.is_compressed and "PixelData" in ds:
            _decompress(ds, syntax)
        if UID(target).is_compressed and "PixelData" in ds:
            from dicom_codecs.pydicom_plugin import register

            register()
            ds.compress(target, encoding_plugin=_ENCODERS[target], generate_instance_uid=False)
        else:
            ds.file_meta.TransferSyntaxUID = UID(target)
        out = io.BytesIO()
        ds.save_as(out, enforce_file_format=True)
        return out.getvalue()
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
    meta = ds.file_meta
    if meta.get("PrivateInformationCreatorUID") == ORIGINAL_SYNTAX_CREATOR:
        del meta.PrivateInformationCreatorUID
        if "PrivateInformation" in meta:
            del meta.PrivateInformation


def to_explicit_vr_little_endian(part10: bytes) -> bytes:
    """The instance re-encoded as Explicit VR Little Endian (decompressed if it was compressed;
    returned unchanged if it already is)."""
    return transcode(part10, ExplicitVRLittleEndian)


def choose_syntax(stored: str, wanted: tuple[str, ...]) -> str | None:
    """The syntax to send an instance stored in ``stored`` in, given the client's acceptable
    syntaxes in its order ('*' = as stored); None if none of them can be produced."""
    for syntax in wanted:
        if syntax in ("*", stored):
            return stored
        if syntax in TARGETS and UID(stored).is_little_endian:
            return syntax
    return None

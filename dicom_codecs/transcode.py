"""Transcoding on retrieval: anything stored can be returned as Explicit VR Little Endian."""

from __future__ import annotations

import io

import pydicom
from pydicom.uid import ExplicitVRLittleEndian

from dicom_codecs.errors import CodecError


class TranscodeError(CodecError, ValueError):
    """An instance that cannot be re-encoded in the requested transfer syntax."""


def to_explicit_vr_little_endian(part10: bytes) -> bytes:
    """The instance re-encoded as Explicit VR Little Endian (decompressed if it was compressed;
    returned unchanged if it already is)."""
    try:
        ds = pydicom.dcmread(io.BytesIO(part10))
        syntax = ds.file_meta.TransferSyntaxUID
        if syntax == ExplicitVRLittleEndian:
            return part10
        if not syntax.is_little_endian:
            raise TranscodeError(f"cannot transcode from big-endian {syntax.name}")
        if syntax.is_compressed and "PixelData" in ds:
            # same instance, other encoding: keep its SOP Instance UID (pydicom makes a new one)
            ds.decompress(generate_instance_uid=False)
        ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
        out = io.BytesIO()
        ds.save_as(out, enforce_file_format=True)
        return out.getvalue()
    except TranscodeError:
        raise
    except Exception as exc:  # pydicom and the decoders raise many types for bad pixel data
        raise TranscodeError(f"cannot transcode to Explicit VR Little Endian: {exc}") from exc

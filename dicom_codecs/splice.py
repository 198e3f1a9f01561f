"""Replacing the Pixel Data of a Part 10 file without re-writing its other elements.

Edge compression (native → encapsulated) and the transcoding fast path (encapsulated →
native) change only the pixels and the file meta's transfer syntax. Both syntaxes are
Explicit VR Little Endian in their data set encoding, so the elements before the Pixel Data
are copied as they arrived; the file meta is written by pydicom and the new Pixel Data element
follows. The caller has checked that nothing follows the Pixel Data.
"""

from __future__ import annotations

import struct

from pydicom.dataset import FileMetaDataset
from pydicom.filebase import DicomBytesIO
from pydicom.filewriter import write_file_meta_info

_PREAMBLE_AND_PREFIX = 132
_GROUP_LENGTH_ELEMENT = 12
ENCAPSULATED_LENGTH = 0xFFFFFFFF
SEQUENCE_DELIMITER = b"\xfe\xff\xdd\xe0\x00\x00\x00\x00"


def body_offset(part10: bytes, meta: FileMetaDataset) -> int | None:
    """Where the data set starts in ``part10`` (after the preamble, "DICM" and the file meta
    whose group length pydicom read into ``meta``); None when the file has no preamble or no
    group length (such files are left to pydicom's writer)."""
    meta_len = meta.get("FileMetaInformationGroupLength")
    if meta_len is None or part10[128:_PREAMBLE_AND_PREFIX] != b"DICM":
        return None
    return _PREAMBLE_AND_PREFIX + _GROUP_LENGTH_ELEMENT + int(meta_len)


def pixel_data_header(vr: bytes, length: int) -> bytes:
    """An explicit VR little endian (7FE0,0010) element header; ``length`` is
    ``ENCAPSULATED_LENGTH`` for encapsulated pixel data."""
    return struct.pack("<HH2sHI", 0x7FE0, 0x0010, vr, 0, length)


def with_pixel_data(
    part10: bytes,
    meta: FileMetaDataset,
    body_at: int,
    pixel_at: int,
    *pixel_element: bytes,
) -> bytes:
    """``part10`` with ``meta`` as its file meta and ``pixel_element`` (the element header and
    the value's pieces) in place of everything from ``pixel_at`` on; the data set's bytes
    from ``body_at`` up to ``pixel_at`` are kept as they are."""
    head = DicomBytesIO()
    write_file_meta_info(head, meta, enforce_standard=True)
    return b"".join(
        (
            part10[:_PREAMBLE_AND_PREFIX],
            head.getvalue(),
            part10[body_at:pixel_at],
            *pixel_element,
        )
    )

"""Where the frames of a Part 10 instance lie in its bytes, found at ingest so that a frame of
a large multi-frame is later served with one byte-range read (filesystem seek, S3 ranged GET)
instead of fetching and parsing the whole object.

The header is read by pydicom up to the Pixel Data element; encapsulated pixel data is walked
item header by item header (each fragment's value skipped with a seek, never read).
"""

from __future__ import annotations

import io
import logging
import struct
from pathlib import Path
from typing import BinaryIO

import pydicom
from pydicom.encaps import encapsulate
from pydicom.errors import InvalidDicomError

from image_store.ports import ObjectStore
from image_store.records import ByteRange, FrameLayout

logger = logging.getLogger(__name__)

_ITEM = 0xE000FFFE  # (FFFE,E000) read as one little-endian uint32: group then element
_SEQ_END = 0xE0DDFFFE
_PIXEL_DATA = 0x7FE00010


def frame_layout(source: bytes | Path) -> FrameLayout | None:
    """The instance's frame layout; None when it has no pixel data, a byte order or framing
    this does not describe (big endian, deflated, several fragments per frame), or cannot be
    read: its frames are then served by parsing the object."""
    try:
        if isinstance(source, Path):
            with open(source, "rb") as fh:
                return _layout(fh)
        return _layout(io.BytesIO(source))
    except (InvalidDicomError, EOFError, ValueError, TypeError, KeyError, OSError, struct.error):
        logger.debug("no frame layout", exc_info=True)
        return None


def _layout(fh: BinaryIO) -> FrameLayout | None:
    ds = pydicom.dcmread(fh, stop_before_pixels=True, force=True)
    meta = getattr(ds, "file_meta", None)
    if meta is None or "TransferSyntaxUID" not in meta:
        return None
    syntax = meta.TransferSyntaxUID
    if not syntax.is_little_endian or syntax.is_deflated:
        return None
    at = fh.tell()  # pydicom stops at the Pixel Data element's tag
    head = fh.read(12)
    if len(head) < 8 or struct.unpack_from("<I", head)[0] != _PIXEL_DATA_SWAPPED:
        return None
    frames = int(ds.get("NumberOfFrames") or 1)
    if syntax.is_implicit_VR:
        length = struct.unpack_from("<I", head, 4)[0]
        value_at = at + 8
    else:
        length = struct.unpack_from("<I", head, 8)[0]
        value_at = at + 12
    if not syntax.is_encapsulated:
        frame_bytes = (
            int(ds.Rows) * int(ds.Columns) * int(ds.SamplesPerPixel) * int(ds.BitsAllocated)
        )
        if frame_bytes % 8 or frame_bytes // 8 * frames > length:
            return None  # bit-packed frames (BitsAllocated 1) or a short value
        return FrameLayout(pixel_offset=value_at, frame_bytes=frame_bytes // 8)
    fh.seek(value_at)
    fragments = _fragments(fh)
    if len(fragments) != frames:
        return None
    return FrameLayout(fragments=tuple(fragments))


_PIXEL_DATA_SWAPPED = 0x00107FE0  # (7FE0,0010) as the little-endian uint32 of its 4 bytes


def _fragments(fh: BinaryIO) -> list[tuple[int, int]]:
    """(offset, length) of every fragment after the Basic Offset Table item."""
    out: list[tuple[int, int]] = []
    first = True
    while True:
        head = fh.read(8)
        if len(head) < 8:
            raise EOFError("encapsulated pixel data without its sequence delimiter")
        tag, length = struct.unpack("<II", head)
        if tag == _SEQ_END:
            return out
        if tag != _ITEM or length == 0xFFFFFFFF:
            raise ValueError(f"unexpected item 0x{tag:08X} in encapsulated pixel data")
        if not first:
            out.append((fh.tell(), length))
        first = False
        fh.seek(length, io.SEEK_CUR)


def first_frame_instance(store: ObjectStore, key: str, layout: FrameLayout) -> bytes:
    """:func:`frame_instance` of frame 1 (a thumbnail's)."""
    return frame_instance(store, key, layout, 1)


def frame_instance(store: ObjectStore, key: str, layout: FrameLayout, number: int) -> bytes:
    """A single-frame Part 10 instance made of a stored multi-frame's header and its frame
    ``number`` (1-based, within the instance), read with two byte ranges: a thumbnail or a
    rendered frame of a large multi-frame never fetches the whole object."""
    pixel_at = layout.fragments[0][0] if layout.fragments else layout.pixel_offset
    head = store.get(key, ByteRange(0, pixel_at))
    frame = store.get(key, layout.frame_range(number))
    ds = pydicom.dcmread(io.BytesIO(head), stop_before_pixels=True, force=True)
    ds.NumberOfFrames = 1
    ds.PixelData = encapsulate([frame]) if layout.fragments else frame
    ds["PixelData"].VR = "OB" if layout.fragments or int(ds.BitsAllocated) <= 8 else "OW"
    out = io.BytesIO()
    ds.save_as(out, enforce_file_format=True)
    return out.getvalue()

"""A quick walk over the element structure of a Part 10 file held in memory.

:func:`image_store.metadata.check_instance` must read every element of an instance to tell a
complete one from a truncated one before the gateway answers Success. pydicom does that in
about 0.3 ms for a CT slice (it builds an element object for each), which was a fifth of the
gateway's time per instance. This walk reads only tags and lengths, in little endian implicit
or explicit VR, and answers one of two things: "complete, and here are its SOP Class, SOP
Instance and Study UIDs", or "not sure". Everything it is not sure of (other transfer
syntaxes, a malformed or truncated structure, a VR it does not know, an undefined length it
does not expect, missing or invalid UIDs) goes to pydicom, which reads the values and names
the problem. It never refuses anything itself, so it can only be wrong by calling complete
what pydicom would refuse; tests/image_store/test_structure.py holds it to pydicom's verdict
on every file of the pydicom corpus and on truncated and damaged copies of them.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

from image_store.keys import is_valid_uid

_PREAMBLE = 128
_UNDEFINED = 0xFFFFFFFF
_ITEM = 0xE000
_ITEM_END = 0xE00D
_SEQUENCE_END = 0xE0DD
_LONG_VRS = frozenset(
    (b"OB", b"OD", b"OF", b"OL", b"OV", b"OW", b"SQ", b"SV", b"UC", b"UN", b"UR", b"UT", b"UV")
)
_SHORT_VRS = frozenset(b"AE AS AT CS DA DS DT FD FL IS LO LT PN SH SL SS ST TM UI UL US".split())
_IMPLICIT_LE = "1.2.840.10008.1.2"
_NOT_LITTLE_ENDIAN_PLAIN = frozenset(("1.2.840.10008.1.2.2", "1.2.840.10008.1.2.1.99"))
"""Big endian and deflated: left to pydicom."""

_WANTED = {
    0x00080016: "sop_class",
    0x00080018: "sop_instance",
    0x0020000D: "study",
    0x0020000E: "series",
}
_ROWS, _COLUMNS = 0x00280010, 0x00280011
_PIXELS = frozenset((0x7FE00010, 0x7FE00008, 0x7FE00009))

_TAG_LENGTH = struct.Struct("<HHI")
_TAG_VR_LENGTH = struct.Struct("<HH2sH")
_U32 = struct.Struct("<I")


class _Unsure(Exception):
    pass


@dataclass(frozen=True, slots=True)
class QuickIdentity:
    sop_class_uid: str
    sop_instance_uid: str
    study_uid: str


def quick_identity(data: bytes | bytearray | memoryview) -> QuickIdentity | None:
    """The UIDs of a complete, well-formed little endian Part 10 instance; None when the
    walk is not sure (then ask pydicom)."""
    buf = memoryview(data)
    try:
        if len(buf) < _PREAMBLE + 4 or bytes(buf[_PREAMBLE : _PREAMBLE + 4]) != b"DICM":
            return None
        pos, syntax = _file_meta(buf, _PREAMBLE + 4)
        if syntax == _IMPLICIT_LE:
            implicit = True
        elif syntax.startswith("1.2.840.10008.1.2.") and syntax not in _NOT_LITTLE_ENDIAN_PLAIN:
            implicit = False
        else:
            return None
        top: dict[int, memoryview] = {}
        end = _elements(buf, pos, len(buf), implicit, top)
        if end != len(buf):
            return None  # a stray delimiter at the top level
    except (_Unsure, struct.error, IndexError, ValueError):
        return None
    if _ROWS in top and _COLUMNS in top and not any(tag in top for tag in _PIXELS):
        return None  # an image without its pixel data: pydicom says truncated
    uids: dict[str, str] = {}
    for tag, name in _WANTED.items():
        value = top.get(tag)
        if value is None:
            return None
        try:
            text = bytes(value).decode("ascii").rstrip("\0 ").strip()
        except UnicodeDecodeError:
            return None
        if not is_valid_uid(text):
            return None
        uids[name] = text
    return QuickIdentity(uids["sop_class"], uids["sop_instance"], uids["study"])


def file_meta_end(data: bytes | bytearray | memoryview) -> tuple[int, str] | None:
    """Where the data set of a Part 10 file starts (after its group 0002) and its transfer
    syntax UID; None when ``data`` does not hold a whole, well-formed file meta."""
    buf = memoryview(data)
    try:
        if len(buf) < _PREAMBLE + 4 or bytes(buf[_PREAMBLE : _PREAMBLE + 4]) != b"DICM":
            return None
        return _file_meta(buf, _PREAMBLE + 4)
    except (_Unsure, struct.error, IndexError, ValueError):
        return None


def _file_meta(buf: memoryview, pos: int) -> tuple[int, str]:
    """Walk group 0002 (explicit VR little endian); the offset after it and the syntax."""
    syntax = ""
    end = len(buf)
    while pos + 8 <= end:
        group, element, vr, short = _TAG_VR_LENGTH.unpack_from(buf, pos)
        if group != 0x0002:
            break
        length, header = _explicit_length(buf, pos, vr, short)
        value_end = pos + header + length
        if length == _UNDEFINED or value_end > end:
            raise _Unsure
        if element == 0x0010:
            syntax = bytes(buf[pos + header : value_end]).decode("ascii").rstrip("\0 ").strip()
        pos = value_end
    if not syntax:
        raise _Unsure
    return pos, syntax


def _explicit_length(buf: memoryview, pos: int, vr: bytes, short: int) -> tuple[int, int]:
    if vr in _LONG_VRS:
        return _U32.unpack_from(buf, pos + 8)[0], 12
    if vr in _SHORT_VRS:
        return short, 8
    raise _Unsure  # a VR pydicom may guess at


def _elements(
    buf: memoryview, pos: int, end: int, implicit: bool, top: dict[int, memoryview] | None
) -> int:
    """Walk data elements from ``pos`` until ``end`` or an item/sequence delimiter tag;
    returns where it stopped. ``top`` collects the values of the top level's wanted tags."""
    while pos < end:
        if pos + 8 > end:
            raise _Unsure
        if implicit:
            group, element, length = _TAG_LENGTH.unpack_from(buf, pos)
            vr = b"SQ" if length == _UNDEFINED else b""
            header = 8
        else:
            group, element, vr, short = _TAG_VR_LENGTH.unpack_from(buf, pos)
            if group == 0xFFFE:
                return pos
            length, header = _explicit_length(buf, pos, vr, short)
        if group == 0xFFFE:
            return pos
        start = pos + header
        if start > end:
            raise _Unsure
        tag = group << 16 | element
        if length == _UNDEFINED:
            if vr == b"SQ":
                pos = _sequence(buf, start, end, implicit)
            elif vr == b"UN" and not implicit:
                pos = _sequence(buf, start, end, True)  # PS3.5 6.2.2: its items are implicit
            elif tag == 0x7FE00010 and vr in (b"OB", b"OW"):
                pos = _fragments(buf, start, end)
            else:
                raise _Unsure
            if top is not None and tag in _PIXELS:
                top[tag] = buf[start:start]
            continue
        pos = start + length
        if pos > end:
            raise _Unsure  # the value is cut short
        if vr == b"SQ":
            _items(buf, start, pos, implicit)  # pydicom reads explicit sequences at once
        if top is not None and (tag in _WANTED or tag in _PIXELS or tag in (_ROWS, _COLUMNS)):
            top[tag] = buf[start:pos]
    return pos


def _delimiter(buf: memoryview, pos: int, end: int) -> tuple[int, int]:
    if pos + 8 > end:
        raise _Unsure
    group, element, length = _TAG_LENGTH.unpack_from(buf, pos)
    if group != 0xFFFE:
        raise _Unsure
    return element, length


def _sequence(buf: memoryview, pos: int, end: int, implicit: bool) -> int:
    """Items of an undefined-length sequence, through its delimiter."""
    while True:
        element, _ = _delimiter(buf, pos, end)
        if element == _SEQUENCE_END:
            return pos + 8
        pos = _item(buf, pos, end, implicit)


def _items(buf: memoryview, pos: int, end: int, implicit: bool) -> int:
    """Items of a defined-length sequence: they must fill its value exactly."""
    while pos < end:
        pos = _item(buf, pos, end, implicit)
    if pos != end:
        raise _Unsure
    return pos


def _item(buf: memoryview, pos: int, end: int, implicit: bool) -> int:
    element, length = _delimiter(buf, pos, end)
    if element != _ITEM:
        raise _Unsure
    pos += 8
    if length == _UNDEFINED:
        pos = _elements(buf, pos, end, implicit, None)
        element, _ = _delimiter(buf, pos, end)
        if element != _ITEM_END:
            raise _Unsure
        return pos + 8
    item_end = pos + length
    if item_end > end or _elements(buf, pos, item_end, implicit, None) != item_end:
        raise _Unsure
    return item_end


def _fragments(buf: memoryview, pos: int, end: int) -> int:
    """Encapsulated pixel data: defined-length items, through the sequence delimiter."""
    while True:
        element, length = _delimiter(buf, pos, end)
        pos += 8
        if element == _SEQUENCE_END:
            return pos
        if element != _ITEM or length == _UNDEFINED:
            raise _Unsure
        pos += length
        if pos > end:
            raise _Unsure

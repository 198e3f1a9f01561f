"""The one place where DICOM headers are parsed (pydicom, ``stop_before_pixels``).

The gateway's uploader and STOW-RS both call :func:`read_header`; nothing else parses DICOM
headers. The bytes themselves are stored exactly as received.
"""

from __future__ import annotations

import io
import json
import logging
import os
import warnings
import zlib
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

import pydicom
from pydicom.dataelem import DataElement, RawDataElement
from pydicom.dataset import Dataset
from pydicom.errors import InvalidDicomError
from pydicom.uid import UID

from image_store.errors import InvalidDicom, InvalidUID
from image_store.keys import check_uid
from image_store.persons import identifiers
from image_store.records import InstanceHeader, PatientInfo
from image_store.structure import file_meta_end, quick_identity

logger = logging.getLogger(__name__)

_BULK_THRESHOLD = 1024
"""Elements with values larger than this go out of the metadata JSON as BulkDataURI."""


def text_value(ds: Dataset, keyword: str) -> str:
    """An attribute as text ('' when absent; multiple values joined by backslashes)."""
    value = ds.get(keyword)
    if value is None:
        return ""
    if isinstance(value, pydicom.multival.MultiValue):
        return "\\".join(str(v) for v in value)
    return str(value).strip()


def _int(ds: Dataset, keyword: str) -> int | None:
    value = ds.get(keyword)
    if value is None or value == "":
        return None
    try:
        return int(value)
    except (TypeError, ValueError):
        return None


_MEMO_MAX_VALUE = 256
"""Raw values up to this many bytes have their JSON remembered (see :func:`metadata_json`)."""
_MEMO_ENTRIES = 16_384
"""Remembered elements (at most a few MB: keys hold values of up to _MEMO_MAX_VALUE bytes);
the memo starts over when full."""
_UNMEMOIZED_VRS = frozenset({"SQ", "UN", "US or SS", "OB or OW", "US or OW", "US or SS or OW"})
_json_memo: dict[tuple[Any, ...], dict[str, Any]] = {}


def _memo_key(raw: object, charset: object) -> tuple[Any, ...] | None:
    """What an element's DICOM JSON depends on, when that is only its own raw bytes: an
    explicit-VR element not yet converted, short, and neither a sequence nor of an unknown or
    ambiguous VR (their conversion looks at other elements). Text is decoded by the data set's
    Specific Character Set, so that is part of the key."""
    if not isinstance(raw, RawDataElement) or raw.VR is None or raw.VR in _UNMEMOIZED_VRS:
        return None
    value = raw.value
    if value is None or len(value) > _MEMO_MAX_VALUE:
        return None
    return (raw.tag, raw.VR, value, raw.is_implicit_VR, raw.is_little_endian, charset)


def metadata_json(ds: Dataset, instance_path: str, skip: frozenset[int] = frozenset()) -> str:
    """DICOM JSON of a dataset's header without the elements in ``skip``; values over 1 KiB
    become BulkDataURIs under ``instance_path``
    (``/dicom-web/studies/S/series/R/instances/I/bulkdata/GGGGEEEE``).

    Each element is converted by pydicom (``DataElement.to_json_dict``, as
    ``Dataset.to_json_dict`` does it), but the JSON of a short explicit-VR element is
    remembered by its raw bytes (:func:`_memo_key`): the instances of a series repeat most
    of their header (patient, study, series, equipment, geometry), so most elements are
    converted once per series rather than once per instance."""

    def bulk_uri(elem: DataElement) -> str:
        return f"{instance_path}/bulkdata/{elem.tag:08X}"

    charset_elem = ds.get_item(0x00080005)
    charset = getattr(charset_elem, "value", None)
    charset = bytes(charset) if isinstance(charset, bytes | bytearray) else str(charset)
    memo = _json_memo
    obj: dict[str, Any] = {}
    tags = tuple(ds.keys())  # iterating the Dataset itself would convert every element
    for tag in tags:
        if tag in skip:
            continue
        key = _memo_key(ds.get_item(tag, keep_deferred=True), charset)
        found = memo.get(key) if key is not None else None
        if found is None:
            found = ds[tag].to_json_dict(bulk_uri, _BULK_THRESHOLD)
            if key is not None and "BulkDataURI" not in found:
                if len(memo) >= _MEMO_ENTRIES:
                    memo.clear()
                memo[key] = found
        obj[f"{tag:08X}"] = found
    if "Rows" in ds and "7FE00010" not in obj:  # read without its pixels: they are bulk data
        meta = getattr(ds, "file_meta", None)
        syntax = meta.get("TransferSyntaxUID") if meta is not None else None
        vr = "OB" if syntax is not None and UID(syntax).is_encapsulated else "OW"
        obj["7FE00010"] = {"vr": vr, "BulkDataURI": f"{instance_path}/bulkdata/7FE00010"}
    return json.dumps(obj, separators=(",", ":"), ensure_ascii=False)


def bulk_value(part10: bytes, tag: int) -> bytes | None:
    """The value bytes of a top-level element of an instance (what a BulkDataURI names), None
    if the instance has no such element. Text values come encoded as stored."""
    ds = pydicom.dcmread(io.BytesIO(part10), force=True)
    if tag not in ds:
        return None
    raw = ds.get_item(tag)  # before conversion: the bytes as stored
    stored = raw.value if isinstance(raw, RawDataElement) else None
    elem = ds[tag]
    if elem.VR == "SQ":
        return None
    if isinstance(elem.value, bytes | bytearray):
        return bytes(elem.value)
    return bytes(stored) if stored is not None else None


@dataclass(frozen=True, slots=True)
class InstanceIdentity:
    sop_class_uid: str
    sop_instance_uid: str
    study_uid: str


_UNDEFINED_LENGTH = 0xFFFFFFFF
_DEFER_SIZE = 256 * 1024
_DEFLATED = "1.2.840.10008.1.2.1.99"


def _is_deflated(ds: Dataset) -> bool:
    meta = getattr(ds, "file_meta", None)
    return meta is not None and meta.get("TransferSyntaxUID") == _DEFLATED


INFLATE_HEADER_ALLOWANCE = 8 * 1024 * 1024
"""Bytes a deflated data set may inflate to beyond its declared pixel data, plus
:data:`INFLATE_PER_COMPRESSED_BYTE` per deflated byte (text, overlays, private data)."""
INFLATE_PER_COMPRESSED_BYTE = 16
_INFLATE_CHUNK = 1024 * 1024
_META_WINDOW = 1024 * 1024


def check_instance(source: bytes | memoryview | Path) -> InstanceIdentity:
    """Check that a DICOM Part 10 file (in memory, or on disk) is complete and identifies itself.

    Raises InvalidDicom naming the problem: unparseable, trailing bytes, a value cut short (a
    truncated transfer), a sequence without its end, missing/invalid SOP and study UIDs, or a
    deflated data set that inflates past what its declared image needs
    (:func:`check_inflation`, before pydicom inflates it). Values are not decoded; only the
    UIDs are read. A file on disk is read with large values skipped (never held whole in
    memory).
    """
    if isinstance(source, Path):
        with open(source, "rb") as fh:
            size = os.fstat(fh.fileno()).st_size
            head = fh.read(_META_WINDOW)
            meta = file_meta_end(head)
            if meta is not None and meta[1] == _DEFLATED:
                fh.seek(meta[0])
                check_inflation(iter(lambda: fh.read(_INFLATE_CHUNK), b""), size - meta[0])
            fh.seek(0)
            return _check(fh, size, defer=True)
    quick = quick_identity(source)  # a complete, well-formed instance needs no more
    if quick is not None:
        return InstanceIdentity(quick.sop_class_uid, quick.sop_instance_uid, quick.study_uid)
    meta = file_meta_end(source)
    if meta is not None and meta[1] == _DEFLATED:
        view = memoryview(source)[meta[0] :]
        chunks = (view[i : i + _INFLATE_CHUNK] for i in range(0, len(view), _INFLATE_CHUNK))
        check_inflation(chunks, len(view))
    return _check(io.BytesIO(source), len(source), defer=False)


def check_inflation(chunks: Iterable[bytes | memoryview], compressed_size: int) -> int:
    """Inflate a deflated data set (Deflated Explicit VR Little Endian: raw deflate) with a
    bounded streaming decompressor, output discarded; returns its inflated size.

    The limit is the pixel data its header declares (Rows x Columns x frames x samples x
    BitsAllocated, read from the first inflated megabyte) plus
    :data:`INFLATE_HEADER_ALLOWANCE` and :data:`INFLATE_PER_COMPRESSED_BYTE` per deflated
    byte. Raises InvalidDicom for a data set that inflates past it (a deflate bomb) or that is
    not valid deflate data. Never holds more than a megabyte of inflated data.
    """
    inflater = zlib.decompressobj(-zlib.MAX_WBITS)
    allowance = INFLATE_HEADER_ALLOWANCE + INFLATE_PER_COMPRESSED_BYTE * compressed_size
    limit = allowance
    head = bytearray()
    total = 0
    try:
        for chunk in chunks:
            data: bytes | memoryview = chunk
            while data:
                out = inflater.decompress(data, _INFLATE_CHUNK)
                data = inflater.unconsumed_tail
                if len(head) < _META_WINDOW:
                    head += out[: _META_WINDOW - len(head)]
                    if len(head) >= _META_WINDOW:
                        limit = allowance + declared_pixel_bytes(bytes(head))
                total += len(out)
                if total > limit:
                    raise InvalidDicom(
                        f"the deflated data set inflates past {limit} bytes ({limit - allowance}"
                        f" of declared image, {allowance} of header allowance): refused as a "
                        "deflate bomb"
                    )
                if inflater.eof:
                    return total
        total += len(inflater.flush(_INFLATE_CHUNK))
    except zlib.error as exc:
        raise InvalidDicom(f"the deflated data set is not valid deflate data: {exc}") from exc
    return total


def declared_pixel_bytes(dataset_prefix: bytes) -> int:
    """Bytes of native pixel data an explicit VR little endian data set declares (Rows x
    Columns x NumberOfFrames x SamplesPerPixel x BitsAllocated / 8), read from its first
    bytes; 0 when they do not hold the Image Pixel module's attributes."""

    def past_group_0028(tag: Any, vr: Any, length: Any) -> bool:
        return int(tag) > 0x0028FFFF

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            ds = pydicom.filereader.read_dataset(
                io.BytesIO(dataset_prefix),
                is_implicit_VR=False,
                is_little_endian=True,
                stop_when=past_group_0028,
            )
            rows, columns = _int(ds, "Rows") or 0, _int(ds, "Columns") or 0
            frames = _int(ds, "NumberOfFrames") or 1
            samples = _int(ds, "SamplesPerPixel") or 1
            bits = _int(ds, "BitsAllocated") or 16
    except Exception:  # a prefix that cuts an element, or garbage: no declared image
        return 0
    return max(0, rows * columns * frames * samples * bits // 8)


def _check(fp: BinaryIO, size: int, *, defer: bool) -> InstanceIdentity:
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            ds = pydicom.dcmread(fp, force=True, defer_size=_DEFER_SIZE if defer else None)
        except (MemoryError, RecursionError):
            raise
        except Exception as exc:  # garbage makes pydicom raise all sorts (BytesLengthException...)
            raise InvalidDicom(f"cannot parse the dataset: {exc}") from exc
    for w in caught:
        if "end of file" in str(w.message).lower():
            raise InvalidDicom(f"the dataset is truncated: {w.message}")
    end = fp.tell()
    if end > size:
        raise InvalidDicom(f"the last value is cut short: it ends at {end}, the data at {size}")
    if end != size and not _is_deflated(ds):
        raise InvalidDicom(f"unparseable bytes after offset {end} of {size}")
    if len(ds) == 0:
        raise InvalidDicom("the dataset holds no elements")
    last = ds.get_item(max(ds.keys()), keep_deferred=True)  # never load a deferred value
    if (
        isinstance(last, RawDataElement)
        and last.length != _UNDEFINED_LENGTH
        and last.value is not None  # a deferred value: its end was checked above
    ):
        got = len(last.value) if last.value is not None else 0
        if got != last.length:
            raise InvalidDicom(
                f"element ({last.tag.group:04X},{last.tag.element:04X}) is cut short: "
                f"{got} of {last.length} bytes"
            )
    if (
        0x00280010 in ds
        and 0x00280011 in ds
        and not any(tag in ds for tag in (0x7FE00010, 0x7FE00008, 0x7FE00009))
    ):
        raise InvalidDicom("the dataset has an Image Pixel module but no pixel data (truncated?)")
    uids = {}
    for keyword in ("SOPClassUID", "SOPInstanceUID", "StudyInstanceUID", "SeriesInstanceUID"):
        try:
            value = text_value(ds, keyword)
        except (MemoryError, RecursionError):
            raise
        except Exception as exc:
            raise InvalidDicom(f"{keyword} cannot be read: {exc}") from exc
        if not value:
            raise InvalidDicom(f"required attribute {keyword} is missing")
        try:
            uids[keyword] = check_uid(value, keyword)
        except InvalidUID as exc:
            raise InvalidDicom(str(exc)) from exc
    return InstanceIdentity(uids["SOPClassUID"], uids["SOPInstanceUID"], uids["StudyInstanceUID"])


def read_header(data: bytes | Path) -> InstanceHeader:
    """Parse the header of a DICOM Part 10 file (or a raw dataset) held in memory or on disk
    (read up to the pixel data only).

    Raises InvalidDicom when the bytes are not DICOM or lack the UIDs every instance must have.
    """
    try:
        source = data if isinstance(data, Path) else io.BytesIO(data)
        ds = pydicom.dcmread(source, stop_before_pixels=True, force=True)
    except (InvalidDicomError, EOFError, ValueError, TypeError, KeyError, OSError) as exc:
        raise InvalidDicom(f"cannot parse DICOM header: {exc}") from exc
    return header_from_dataset(ds)


ORIGINAL_SYNTAX_CREATOR = "2.25.19854275023838909993538055879365399160"
"""Private Information Creator UID (0002,0100; 2.25 + a UUID, PS3.5 B.2) under which the
gateway records, in the file meta of an instance it re-encoded, the transfer syntax the
instance arrived in (Private Information, 0002,0102)."""


def original_transfer_syntax(meta: Dataset | None) -> str:
    """The arrival syntax recorded by the gateway's edge compression, '' if none."""
    if meta is None or meta.get("PrivateInformationCreatorUID") != ORIGINAL_SYNTAX_CREATOR:
        return ""
    value = meta.get("PrivateInformation")
    if not isinstance(value, bytes):
        return ""
    return check_uid(value.rstrip(b"\0 ").decode("ascii", "replace"), "original transfer syntax")


_NOT_IN_METADATA = (0x7FE00010, 0x00101000, 0x00101002)
"""Pixel Data (bulk data); Other Patient IDs and its sequence (person identifiers)."""


def header_from_dataset(ds: Dataset) -> InstanceHeader:
    """Build the index record of an already-read dataset (pixel data, if any, is ignored)."""
    try:
        meta = getattr(ds, "file_meta", None)
        ts = str(meta.TransferSyntaxUID) if meta is not None and "TransferSyntaxUID" in meta else ""
        uids: dict[str, str] = {}
        for keyword in ("StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID", "SOPClassUID"):
            value = text_value(ds, keyword)
            if not value:
                raise InvalidDicom(f"required attribute {keyword} is missing")
            uids[keyword] = check_uid(value, keyword)
        if ts:
            check_uid(ts, "TransferSyntaxUID")
        # the index keeps person identifiers only as keyed hashes (image_store.persons), and
        # the pixels of a fully read dataset are bulk data
        skip = frozenset(t for t in _NOT_IN_METADATA if t in ds)
        doc = metadata_json(
            ds,
            f"/dicom-web/studies/{uids['StudyInstanceUID']}/series/"
            f"{uids['SeriesInstanceUID']}/instances/{uids['SOPInstanceUID']}",
            skip,
        )
        patient = PatientInfo(
            patient_id=text_value(ds, "PatientID"),
            issuer=text_value(ds, "IssuerOfPatientID"),
            name=text_value(ds, "PatientName"),
            birth_date=text_value(ds, "PatientBirthDate"),
            sex=text_value(ds, "PatientSex"),
        )
        return InstanceHeader(
            patient=patient,
            study_uid=uids["StudyInstanceUID"],
            study_date=text_value(ds, "StudyDate"),
            study_time=text_value(ds, "StudyTime"),
            accession_number=text_value(ds, "AccessionNumber"),
            study_description=text_value(ds, "StudyDescription"),
            referring_physician=text_value(ds, "ReferringPhysicianName"),
            study_id=text_value(ds, "StudyID"),
            series_uid=uids["SeriesInstanceUID"],
            modality=text_value(ds, "Modality"),
            series_number=_int(ds, "SeriesNumber"),
            series_description=text_value(ds, "SeriesDescription"),
            body_part=text_value(ds, "BodyPartExamined"),
            sop_uid=uids["SOPInstanceUID"],
            sop_class_uid=uids["SOPClassUID"],
            instance_number=_int(ds, "InstanceNumber"),
            transfer_syntax_uid=ts,
            original_transfer_syntax_uid=original_transfer_syntax(meta),
            person_ids=identifiers(ds),
            rows=_int(ds, "Rows"),
            columns=_int(ds, "Columns"),
            number_of_frames=_int(ds, "NumberOfFrames"),
            specific_character_set=text_value(ds, "SpecificCharacterSet"),
            metadata_json=doc,
        )
    except InvalidDicom:
        raise
    except (ValueError, TypeError, KeyError, AttributeError, LookupError) as exc:
        # pydicom raises these for malformed element values (bad VR, bad length, bad charset)
        raise InvalidDicom(f"malformed DICOM header: {exc}") from exc

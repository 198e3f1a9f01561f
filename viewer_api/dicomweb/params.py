"""QIDO-RS query parameters (PS3.18 8.3.4) parsed into the index's query records.

Pure functions: a multidict of parameters in, a query record out, BadRequest for anything we
cannot honour (unknown attribute, malformed date, invalid UID, bad limit).
"""

from __future__ import annotations

import datetime as dt
import re
from dataclasses import dataclass

from multidict import MultiMapping
from pydicom.datadict import tag_for_keyword

from image_store.keys import is_valid_uid
from image_store.records import InstanceQuery, SeriesQuery, StudyQuery
from viewer_api.errors import BadRequest

TAG_KEYWORDS = {
    "00100020": "PatientID",
    "00100010": "PatientName",
    "00080020": "StudyDate",
    "00080061": "ModalitiesInStudy",
    "00080050": "AccessionNumber",
    "0020000D": "StudyInstanceUID",
    "00080090": "ReferringPhysicianName",
    "00081030": "StudyDescription",
    "00080060": "Modality",
    "0020000E": "SeriesInstanceUID",
    "00200011": "SeriesNumber",
    "00080018": "SOPInstanceUID",
    "00080016": "SOPClassUID",
    "00200013": "InstanceNumber",
}
STUDY_KEYS = frozenset(
    {
        "PatientID",
        "PatientName",
        "StudyDate",
        "ModalitiesInStudy",
        "AccessionNumber",
        "StudyInstanceUID",
        "ReferringPhysicianName",
        "StudyDescription",
    }
)
SERIES_KEYS = frozenset({"Modality", "SeriesInstanceUID", "SeriesNumber"})
INSTANCE_KEYS = frozenset({"SOPInstanceUID", "SOPClassUID", "InstanceNumber"})
CONTROL_KEYS = frozenset({"limit", "offset", "includefield", "fuzzymatching"})
MAX_VALUE = 64
_DATE = re.compile(r"\d{8}")


@dataclass(frozen=True, slots=True)
class Paging:
    limit: int
    offset: int
    include_all: bool
    include: frozenset[str] = frozenset()
    """Tags (8 hex digits, upper case) asked for with includefield, beyond the defaults."""
    fuzzy: bool = False


def normalise(params: MultiMapping[str], allowed: frozenset[str]) -> dict[str, list[str]]:
    """Parameter names as keywords (tags translated), values as lists; unknown names refused."""
    out: dict[str, list[str]] = {}
    for key in dict.fromkeys(params.keys()):
        name = TAG_KEYWORDS.get(key.upper(), key)
        if name not in allowed and name not in CONTROL_KEYS:
            raise BadRequest(f"unsupported query parameter {key[:64]!r}")
        values = params.getall(key)
        if any(len(v) > 1024 for v in values):
            raise BadRequest(f"parameter {key[:64]} is too long")
        out.setdefault(name, []).extend(values)
    return out


def _single(values: dict[str, list[str]], name: str) -> str:
    got = values.get(name)
    if not got:
        return ""
    if len(got) > 1:
        raise BadRequest(f"parameter {name} may be given once")
    value = got[0].strip()
    if len(value) > MAX_VALUE:
        raise BadRequest(f"parameter {name} is longer than {MAX_VALUE} characters")
    return value


def _uids(values: dict[str, list[str]], name: str) -> tuple[str, ...]:
    out: list[str] = []
    for v in values.get(name, []):
        for uid in re.split(r"[,\\]", v):
            uid = uid.strip()
            if not is_valid_uid(uid):
                raise BadRequest(f"parameter {name} holds an invalid UID: {uid[:80]!r}")
            out.append(uid)
    if len(out) > 1000:
        raise BadRequest(f"parameter {name} lists more than 1000 UIDs")
    return tuple(out)


def _int(values: dict[str, list[str]], name: str) -> int | None:
    text = _single(values, name)
    if not text:
        return None
    if not re.fullmatch(r"-?\d{1,12}", text):
        raise BadRequest(f"parameter {name} must be an integer, got {text!r}")
    return int(text)


def _check_date(text: str, name: str) -> str:
    if not _DATE.fullmatch(text):
        raise BadRequest(f"parameter {name} must be YYYYMMDD or a range, got {text!r}")
    try:
        dt.datetime.strptime(text, "%Y%m%d")
    except ValueError as exc:
        raise BadRequest(f"parameter {name} is not a calendar date: {text!r}") from exc
    return text


def date_range(text: str, name: str = "StudyDate") -> tuple[str, str]:
    """'A', 'A-B', 'A-' or '-B' -> (from, to), empty for an open end."""
    if "-" not in text:
        day = _check_date(text, name)
        return day, day
    lo, _, hi = text.partition("-")
    if not lo and not hi:
        raise BadRequest(f"parameter {name} range needs at least one date")
    lo = _check_date(lo, name) if lo else ""
    hi = _check_date(hi, name) if hi else ""
    if lo and hi and lo > hi:
        raise BadRequest(f"parameter {name} range is reversed: {text!r}")
    return lo, hi


def _modalities(values: dict[str, list[str]], name: str) -> tuple[str, ...]:
    out = []
    for v in values.get(name, []):
        for m in re.split(r"[,\\]", v):
            m = m.strip().upper()
            if not re.fullmatch(r"[A-Z0-9_]{1,16}", m):
                raise BadRequest(f"parameter {name} holds an invalid modality: {m[:20]!r}")
            out.append(m)
    return tuple(out)


def paging(values: dict[str, list[str]], *, default_limit: int, max_limit: int) -> Paging:
    limit = _int(values, "limit")
    offset = _int(values, "offset")
    if limit is not None and limit < 1:
        raise BadRequest(f"limit must be positive, got {limit}")
    if offset is not None and offset < 0:
        raise BadRequest(f"offset must not be negative, got {offset}")
    fuzzy = _single(values, "fuzzymatching").lower()
    if fuzzy not in ("", "true", "false"):
        raise BadRequest(f"fuzzymatching must be true or false, got {fuzzy!r}")
    include = [f.strip() for v in values.get("includefield", []) for f in v.split(",")]
    include = [f for f in include if f]
    if len(include) > 200:
        raise BadRequest("includefield names more than 200 attributes")
    include_all = "all" in (f.lower() for f in include)
    return Paging(
        limit=min(limit or default_limit, max_limit),
        offset=offset or 0,
        include_all=include_all,
        include=frozenset(_tag(f) for f in include if f.lower() != "all"),
        fuzzy=fuzzy == "true",
    )


def _tag(text: str) -> str:
    """An includefield item (a tag as 8 hex digits, or a keyword) as 8 upper-case hex digits."""
    if re.fullmatch(r"[0-9A-Fa-f]{8}", text):
        return text.upper()
    tag = tag_for_keyword(text) if re.fullmatch(r"[A-Za-z][A-Za-z0-9]{0,63}", text) else None
    if tag is None:
        raise BadRequest(f"includefield names an unknown attribute: {text[:64]!r}")
    return f"{tag:08X}"


def study_query(
    values: dict[str, list[str]], hospitals: frozenset[str] | None, *, fuzzy: bool = False
) -> StudyQuery:
    date = _single(values, "StudyDate")
    lo, hi = date_range(date) if date else ("", "")
    return StudyQuery(
        hospitals=hospitals,
        patient_id=_single(values, "PatientID"),
        patient_name=_single(values, "PatientName"),
        patient_name_fuzzy=fuzzy,
        study_date_from=lo,
        study_date_to=hi,
        modalities=_modalities(values, "ModalitiesInStudy"),
        accession_number=_single(values, "AccessionNumber"),
        study_uids=_uids(values, "StudyInstanceUID"),
        referring_physician=_single(values, "ReferringPhysicianName"),
        study_description=_single(values, "StudyDescription"),
    )


def series_query(
    values: dict[str, list[str]], hospitals: frozenset[str] | None, study_uid: str = ""
) -> SeriesQuery:
    modality = _modalities(values, "Modality")
    if len(modality) > 1:
        raise BadRequest("parameter Modality matches a single value")
    return SeriesQuery(
        hospitals=hospitals,
        study_uid=study_uid,
        series_uids=_uids(values, "SeriesInstanceUID"),
        modality=modality[0] if modality else "",
        series_number=_int(values, "SeriesNumber"),
    )


def instance_query(
    values: dict[str, list[str]],
    hospitals: frozenset[str] | None,
    study_uid: str = "",
    series_uid: str = "",
) -> InstanceQuery:
    if not series_uid:
        series = _uids(values, "SeriesInstanceUID")
        if len(series) > 1:
            raise BadRequest("parameter SeriesInstanceUID matches a single value here")
        series_uid = series[0] if series else ""
    classes = _uids(values, "SOPClassUID")
    if len(classes) > 1:
        raise BadRequest("parameter SOPClassUID matches a single value")
    return InstanceQuery(
        hospitals=hospitals,
        study_uid=study_uid,
        series_uid=series_uid,
        sop_uids=_uids(values, "SOPInstanceUID"),
        sop_class_uid=classes[0] if classes else "",
        instance_number=_int(values, "InstanceNumber"),
    )


MAX_FRAMES = 256
"""Most frames one WADO-RS frames request may name (after duplicates are dropped)."""
MAX_VIEWPORT = 2048
"""Largest rendered viewport side: a bigger picture is not for a screen, and its cost grows
with the square of the side."""


def frame_list(
    text: str, number_of_frames: int | None = None, *, max_frames: int = MAX_FRAMES
) -> tuple[int, ...]:
    """The 1-based frame numbers of a ``{frames}`` path segment ('1,3,5'), duplicates dropped
    (first mention kept, so the order asked for stays); BadRequest for a malformed list, more
    than ``max_frames`` distinct frames, or a frame past ``number_of_frames`` (when known)."""
    items = text.split(",")
    if len(items) > 4 * max_frames:  # dropping duplicates of a huge list is work too
        raise BadRequest(f"a frame list names at most {max_frames} frames")
    numbers: dict[int, None] = {}
    for item in items:
        item = item.strip()
        if not re.fullmatch(r"\d{1,9}", item) or int(item) < 1:
            raise BadRequest(
                f"frame list must be numbers from 1 separated by commas, got {text[:40]!r}"
            )
        numbers[int(item)] = None
    if len(numbers) > max_frames:
        raise BadRequest(f"a frame list names at most {max_frames} distinct frames")
    last = max(numbers)
    if number_of_frames is not None and last > max(number_of_frames, 1):
        raise BadRequest(
            f"frame {last} is past the end: the instance has {max(number_of_frames, 1)} frame(s)"
        )
    return tuple(numbers)


def viewport(
    text: str, image_size: tuple[int, int] | None = None, *, max_side: int = MAX_VIEWPORT
) -> tuple[int, int]:
    """A rendered ``viewport`` parameter 'WIDTH,HEIGHT' as integers; BadRequest unless each is
    1..``max_side``, or 1..the image's own side (``image_size`` as columns, rows) when that is
    larger (a picture is never enlarged past that)."""
    m = re.fullmatch(r"(\d{1,5}),(\d{1,5})", text.strip())
    width_cap = height_cap = max_side
    if image_size is not None:
        width_cap = max(max_side, image_size[0])
        height_cap = max(max_side, image_size[1])
    if not m or not (1 <= int(m[1]) <= width_cap and 1 <= int(m[2]) <= height_cap):
        raise BadRequest(
            f"viewport must be WIDTH,HEIGHT, at most {width_cap},{height_cap}, got {text[:40]!r}"
        )
    return int(m[1]), int(m[2])

"""Plain records that cross the image_store interfaces: what is indexed and what queries return."""

from __future__ import annotations

import json
from dataclasses import dataclass, field


@dataclass(frozen=True, slots=True)
class PatientInfo:
    """Patient module attributes as the hospital sent them (never logged)."""

    patient_id: str
    issuer: str = ""
    name: str = ""
    birth_date: str = ""
    sex: str = ""


@dataclass(frozen=True, slots=True)
class InstanceHeader:
    """What the index keeps of one instance, extracted once from its header."""

    patient: PatientInfo
    study_uid: str
    study_date: str
    study_time: str
    accession_number: str
    study_description: str
    referring_physician: str
    study_id: str
    series_uid: str
    modality: str
    series_number: int | None
    series_description: str
    body_part: str
    sop_uid: str
    sop_class_uid: str
    instance_number: int | None
    transfer_syntax_uid: str
    rows: int | None
    columns: int | None
    number_of_frames: int | None
    specific_character_set: str
    metadata_json: str
    """DICOM JSON (PS3.18 F.2) of the header, without pixel data or other bulk data."""
    person_ids: tuple[tuple[str, str], ...] = ()
    """(issuer, value) of the regional person identifiers the instance carries (Issuer of
    Patient ID or Other Patient IDs Sequence, for the configured issuers). Held in memory only,
    to be turned into keyed hashes; never stored or logged."""
    original_transfer_syntax_uid: str = ""
    """The syntax the modality sent when the gateway re-encoded the instance (lossless, bit-exact
    checked) before upload; empty when the stored syntax is the original one."""


@dataclass(frozen=True, slots=True)
class InstanceRecord:
    """An instance as committed: its header, where its bytes are and what they hash to."""

    hospital: str
    header: InstanceHeader
    object_key: str
    size: int
    sha256: str
    frames: FrameLayout | None = None
    """Where its frames are in the object (None: unknown, the whole object is parsed)."""


@dataclass(frozen=True, slots=True)
class FrameLayout:
    """Where each frame of a stored instance lies in its object's bytes, so one frame is read
    with a byte range. Native pixel data: ``pixel_offset`` (where the Pixel Data value starts)
    and ``frame_bytes`` (every frame's length); encapsulated: one ``(offset, length)`` per frame
    in ``fragments`` (one fragment per frame)."""

    pixel_offset: int = 0
    frame_bytes: int = 0
    fragments: tuple[tuple[int, int], ...] = ()

    def frame_range(self, number: int) -> ByteRange:
        """The bytes of frame ``number`` (1-based, already checked against the frame count)."""
        if self.fragments:
            offset, length = self.fragments[number - 1]
            return ByteRange(offset, offset + length)
        start = self.pixel_offset + (number - 1) * self.frame_bytes
        return ByteRange(start, start + self.frame_bytes)

    def to_json(self) -> str:
        if self.fragments:
            return json.dumps({"fragments": [list(f) for f in self.fragments]})
        return json.dumps({"pixel_offset": self.pixel_offset, "frame_bytes": self.frame_bytes})

    @classmethod
    def from_json(cls, text: str) -> FrameLayout:
        """The layout :meth:`to_json` wrote (ValueError for anything else)."""
        raw = json.loads(text)
        if not isinstance(raw, dict):
            raise ValueError("a frame layout is a JSON object")
        if "fragments" in raw:
            return cls(fragments=tuple((int(o), int(n)) for o, n in raw["fragments"]))
        return cls(pixel_offset=int(raw["pixel_offset"]), frame_bytes=int(raw["frame_bytes"]))


@dataclass(frozen=True, slots=True)
class StudyRecord:
    hospital: str
    patient: PatientInfo
    study_uid: str
    study_date: str
    study_time: str
    accession_number: str
    study_description: str
    referring_physician: str
    study_id: str
    modalities: tuple[str, ...]
    number_of_series: int
    number_of_instances: int
    updated_at: float


@dataclass(frozen=True, slots=True)
class SeriesRecord:
    hospital: str
    study_uid: str
    series_uid: str
    modality: str
    series_number: int | None
    series_description: str
    body_part: str
    number_of_instances: int


@dataclass(frozen=True, slots=True)
class InstanceSummary:
    """An instance as queries return it (no metadata blob)."""

    hospital: str
    study_uid: str
    series_uid: str
    sop_uid: str
    sop_class_uid: str
    instance_number: int | None
    transfer_syntax_uid: str
    rows: int | None
    columns: int | None
    number_of_frames: int | None
    object_key: str
    size: int
    sha256: str
    original_transfer_syntax_uid: str = ""
    """Empty when the instance is stored in the syntax it arrived in."""


@dataclass(frozen=True, slots=True)
class StudyQuery:
    """QIDO-RS study matching. Empty fields do not constrain.

    ``hospitals`` restricts results to those hospitals (None = every hospital); the caller's
    authorisation decides it, never the client. ``patient_name`` may hold '*' and '?' wildcards;
    dates are YYYYMMDD, either bound may be empty.
    """

    hospitals: frozenset[str] | None = None
    patient_id: str = ""
    patient_name: str = ""
    study_date_from: str = ""
    study_date_to: str = ""
    modalities: tuple[str, ...] = ()
    accession_number: str = ""
    study_uids: tuple[str, ...] = ()
    referring_physician: str = ""
    study_description: str = ""
    person_key: str = ""
    """Studies of every hospital's patient linked to this person (master patient index)."""
    patient_name_fuzzy: bool = False
    """Match ``patient_name`` (without wildcards) as the start of any name component, in any
    component group, ignoring case: 'zhang' finds 'ZHANG^SAN' and 'LI^ZHANGWEI'."""


@dataclass(frozen=True, slots=True)
class SeriesQuery:
    hospitals: frozenset[str] | None = None
    study_uid: str = ""
    series_uids: tuple[str, ...] = ()
    modality: str = ""
    series_number: int | None = None


@dataclass(frozen=True, slots=True)
class InstanceQuery:
    hospitals: frozenset[str] | None = None
    study_uid: str = ""
    series_uid: str = ""
    sop_uids: tuple[str, ...] = ()
    sop_class_uid: str = ""
    instance_number: int | None = None


@dataclass(frozen=True, slots=True)
class PatientRef:
    """One hospital's record of a patient: its Patient ID under an issuer."""

    hospital: str
    patient_id: str
    issuer: str = ""


@dataclass(frozen=True, slots=True)
class PersonLink:
    """A hospital's patient linked to a person of the region (by a keyed hash of an ID)."""

    patient: PatientRef
    person_key: str
    source: str
    """'gateway' (Other Patient IDs in an instance the hospital's gateway delivered),
    'admin:<actor>', 'review:<actor>' (a held link an administrator approved), or 'dicom'
    (made by an older version from any upload: not trusted)."""
    linked_at: float

    @property
    def trusted(self) -> bool:
        """True when the link came from a trusted source: the hospital's gateway or an
        administrator (directly or by approving a held link)."""
        return self.source == TRUSTED_INGEST_SOURCE or self.source.startswith(("admin:", "review:"))


TRUSTED_INGEST_SOURCE = "gateway"
"""The source of links made from instances a hospital's gateway delivered."""


@dataclass(frozen=True, slots=True)
class LinkReview:
    """A person link held for an administrator's review instead of applied: it would have
    moved a record to another person, or joined records with conflicting demographics."""

    id: int
    patient: PatientRef
    person_key: str
    """The person the link would attach the record to."""
    current_key: str
    """The person the record is linked to now ('' when unlinked)."""
    source: str
    reason: str
    created_at: float
    state: str = "pending"
    """'pending', 'approved' or 'rejected'."""
    decided_by: str = ""
    decided_at: float | None = None


@dataclass(frozen=True, slots=True)
class ObjectInfo:
    key: str
    size: int
    sha256: str


@dataclass(frozen=True, slots=True)
class ByteRange:
    """Bytes [start, end) of an object; end None means to the end."""

    start: int
    end: int | None = None


@dataclass(slots=True)
class AddResult:
    """What add_instances did: new rows, replaced rows (same SOP UID, other bytes), unchanged."""

    added: int = 0
    replaced: int = 0
    unchanged: int = 0
    replaced_uids: list[str] = field(default_factory=list)
    rejected: list[tuple[str, str]] = field(default_factory=list)
    """(SOP Instance UID, reason) of records the index refused; the rest were committed."""

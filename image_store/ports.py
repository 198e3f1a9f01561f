"""The two interfaces of the regional store: an object store for bytes and an index for queries.

Filesystem and S3 implement ObjectStore; SQLite and PostgreSQL implement Index. Apps depend on
these protocols only, so every backend runs the same code paths (and the same contract tests).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import BinaryIO, Protocol

from image_store.records import (
    AddResult,
    ByteRange,
    FrameLayout,
    InstanceQuery,
    InstanceRecord,
    InstanceSummary,
    LinkReview,
    ObjectInfo,
    PatientRef,
    PersonLink,
    SeriesQuery,
    SeriesRecord,
    StudyQuery,
    StudyRecord,
)


class ObjectStore(Protocol):
    def put(self, key: str, data: bytes | BinaryIO, *, sha256: str | None = None) -> ObjectInfo:
        """Store ``data`` atomically under ``key`` (readers see the old or the new object).

        With ``sha256`` given, the stored bytes are checked against it (IntegrityError).
        """
        ...

    def get(self, key: str, byte_range: ByteRange | None = None) -> bytes:
        """The object's bytes (or a range of them); ObjectNotFound when absent."""
        ...

    def stat(self, key: str) -> ObjectInfo | None:
        """Size and sha256 of the object, or None when absent."""
        ...

    def delete(self, key: str) -> None:
        """Remove the object; absent objects are not an error."""
        ...

    def iter_keys(self, prefix: str) -> Iterator[str]:
        """Keys that start with ``prefix``, in sorted order."""
        ...


class Index(Protocol):
    def add_instances(self, recs: Sequence[InstanceRecord]) -> AddResult:
        """Commit a batch in one transaction. Idempotent: the same record twice is unchanged."""
        ...

    def find_studies(self, q: StudyQuery, *, limit: int, offset: int = 0) -> list[StudyRecord]: ...

    def find_series(self, q: SeriesQuery, *, limit: int, offset: int = 0) -> list[SeriesRecord]: ...

    def find_instances(
        self, q: InstanceQuery, *, limit: int, offset: int = 0
    ) -> list[InstanceSummary]: ...

    def instance_metadata(self, q: InstanceQuery) -> list[str]:
        """DICOM JSON objects (as JSON text) of the matching instances, in instance order."""
        ...

    def get_study(self, study_uid: str) -> StudyRecord | None: ...

    def prior_versions(self, sop_uid: str) -> list[ObjectInfo]:
        """Earlier contents of an instance that was replaced by different bytes, oldest first."""
        ...

    def frame_layout(self, sop_uid: str, sha256: str) -> FrameLayout | None:
        """Where the frames of this version (content hash) of an instance lie in its object,
        as recorded at ingest; None when unknown."""
        ...

    def count_instances(self) -> int: ...

    # master patient index: hospitals' patients linked to regional persons
    def link_patient(self, patient: PatientRef, person_key: str, source: str) -> None:
        """Link (or re-link) a hospital's patient to a person; ``person_key`` is a keyed hash."""
        ...

    def unlink_patient(self, patient: PatientRef) -> bool: ...

    def person_link(self, patient: PatientRef) -> PersonLink | None: ...

    def linked_patients(self, person_key: str) -> list[PersonLink]: ...

    def merge_persons(self, from_key: str, into_key: str) -> int:
        """Move every link of one person to another (two records found to be one person)."""
        ...

    def hold_link(
        self, patient: PatientRef, person_key: str, current_key: str, source: str, reason: str
    ) -> LinkReview:
        """Keep a link for an administrator's review instead of applying it; the same pending
        link (patient and person) held again is the same review."""
        ...

    def link_reviews(self, *, pending_only: bool = True) -> list[LinkReview]:
        """Held links, oldest first."""
        ...

    def decide_link_review(self, review_id: int, *, approve: bool, by: str) -> LinkReview | None:
        """Approve (the link is applied, source 'review:<by>') or reject a pending review, in
        one transaction; None when there is no such pending review."""
        ...

    def close(self) -> None: ...

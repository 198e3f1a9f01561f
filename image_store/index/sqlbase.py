"""The Index in SQL: one implementation of the queries and the batched, idempotent writes,
shared by the SQLite and PostgreSQL backends (which differ in connections and schema types)."""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass
from typing import Any, Literal

from image_store.index.sql import SQLITE, Dialect, instance_where, series_where, study_where
from image_store.keys import prior_version_key
from image_store.records import (
    AddResult,
    FrameLayout,
    InstanceQuery,
    InstanceRecord,
    InstanceSummary,
    LinkReview,
    ObjectInfo,
    PatientInfo,
    PatientRef,
    PersonLink,
    SeriesQuery,
    SeriesRecord,
    StudyQuery,
    StudyRecord,
)

logger = logging.getLogger(__name__)

_SCHEMA = """
CREATE TABLE IF NOT EXISTS patients (
    pk {serial_pk},
    hospital TEXT NOT NULL,
    issuer TEXT NOT NULL,
    patient_id TEXT NOT NULL,
    name TEXT NOT NULL,
    name_alpha TEXT NOT NULL,
    name_ideo TEXT NOT NULL,
    birth_date TEXT NOT NULL,
    sex TEXT NOT NULL,
    UNIQUE (hospital, issuer, patient_id)
);
CREATE INDEX IF NOT EXISTS patients_pid ON patients (patient_id);
DROP INDEX IF EXISTS patients_name;
CREATE INDEX IF NOT EXISTS patients_lower_alpha ON patients (lower(name_alpha){pattern_ops});
CREATE INDEX IF NOT EXISTS patients_lower_ideo ON patients (lower(name_ideo){pattern_ops});
CREATE INDEX IF NOT EXISTS patients_lower_name ON patients (lower(name){pattern_ops});
CREATE TABLE IF NOT EXISTS studies (
    study_uid TEXT PRIMARY KEY,
    hospital TEXT NOT NULL,
    patient_pk {bigint} NOT NULL REFERENCES patients (pk),
    study_date TEXT NOT NULL,
    study_time TEXT NOT NULL,
    accession_number TEXT NOT NULL,
    study_description TEXT NOT NULL,
    referring_physician TEXT NOT NULL,
    study_id TEXT NOT NULL,
    modalities TEXT NOT NULL,
    number_of_series INTEGER NOT NULL,
    number_of_instances INTEGER NOT NULL,
    updated_at {real} NOT NULL
);
CREATE INDEX IF NOT EXISTS studies_date ON studies (hospital, study_date);
CREATE INDEX IF NOT EXISTS studies_patient ON studies (patient_pk);
CREATE INDEX IF NOT EXISTS studies_accession ON studies (accession_number);
CREATE TABLE IF NOT EXISTS series (
    series_uid TEXT PRIMARY KEY,
    study_uid TEXT NOT NULL REFERENCES studies (study_uid),
    modality TEXT NOT NULL,
    series_number INTEGER,
    series_description TEXT NOT NULL,
    body_part TEXT NOT NULL,
    number_of_instances INTEGER NOT NULL
);
CREATE INDEX IF NOT EXISTS series_study ON series (study_uid, modality);
CREATE TABLE IF NOT EXISTS instances (
    sop_uid TEXT PRIMARY KEY,
    series_uid TEXT NOT NULL REFERENCES series (series_uid),
    study_uid TEXT NOT NULL,
    hospital TEXT NOT NULL,
    sop_class_uid TEXT NOT NULL,
    instance_number INTEGER,
    transfer_syntax_uid TEXT NOT NULL,
    original_transfer_syntax_uid TEXT NOT NULL DEFAULT '',
    rows_ INTEGER,
    columns_ INTEGER,
    number_of_frames INTEGER,
    object_key TEXT NOT NULL,
    size {bigint} NOT NULL,
    sha256 TEXT NOT NULL,
    metadata TEXT NOT NULL,
    indexed_at {real} NOT NULL
);
CREATE INDEX IF NOT EXISTS instances_series ON instances (series_uid, instance_number);
CREATE INDEX IF NOT EXISTS instances_study ON instances (study_uid);
CREATE TABLE IF NOT EXISTS person_links (
    hospital TEXT NOT NULL,
    issuer TEXT NOT NULL,
    patient_id TEXT NOT NULL,
    person_key TEXT NOT NULL,
    source TEXT NOT NULL,
    linked_at {real} NOT NULL,
    PRIMARY KEY (hospital, issuer, patient_id)
);
CREATE INDEX IF NOT EXISTS person_links_person ON person_links (person_key);
CREATE TABLE IF NOT EXISTS link_reviews (
    id {serial_pk},
    hospital TEXT NOT NULL,
    issuer TEXT NOT NULL,
    patient_id TEXT NOT NULL,
    person_key TEXT NOT NULL,
    current_key TEXT NOT NULL,
    source TEXT NOT NULL,
    reason TEXT NOT NULL,
    created_at {real} NOT NULL,
    state TEXT NOT NULL,
    decided_by TEXT NOT NULL,
    decided_at {real}
);
CREATE INDEX IF NOT EXISTS link_reviews_state ON link_reviews (state, id);
CREATE TABLE IF NOT EXISTS instance_versions (
    sop_uid TEXT NOT NULL,
    sha256 TEXT NOT NULL,
    object_key TEXT NOT NULL,
    size {bigint} NOT NULL,
    replaced_at {real} NOT NULL,
    PRIMARY KEY (sop_uid, sha256)
);

CREATE TABLE IF NOT EXISTS frame_layouts (
    sop_uid TEXT NOT NULL,
    sha256 TEXT NOT NULL,
    layout TEXT NOT NULL,
    PRIMARY KEY (sop_uid, sha256)
);
"""


ADDED_COLUMNS = (("instances", "original_transfer_syntax_uid", "TEXT NOT NULL DEFAULT ''"),)
"""Columns added after the first release: (table, column, declaration), added to an existing
index when it is opened."""


_REVIEW_COLS = (
    "id, hospital, issuer, patient_id, person_key, current_key, source, reason, created_at, "
    "state, decided_by, decided_at"
)


def _review(r: tuple[Any, ...]) -> LinkReview:
    return LinkReview(
        int(r[0]),
        PatientRef(str(r[1]), str(r[3]), str(r[2])),
        str(r[4]),
        str(r[5]),
        str(r[6]),
        str(r[7]),
        float(r[8]),
        str(r[9]),
        str(r[10]),
        None if r[11] is None else float(r[11]),
    )


def schema(*, serial_pk: str, bigint: str, real: str, pattern_ops: str) -> str:
    """The index tables in one backend's column types (the layout is the same everywhere).

    Name matching goes through indexes on lower(name columns) (``pattern_ops``: the operator
    class for byte-order prefix ranges, PostgreSQL's text_pattern_ops); the first version's
    ``patients_name`` index is dropped when an older index is opened."""
    return _SCHEMA.format(serial_pk=serial_pk, bigint=bigint, real=real, pattern_ops=pattern_ops)


_STUDY_COLS = (
    "s.hospital, p.patient_id, p.issuer, p.name, p.birth_date, p.sex, s.study_uid, s.study_date, "
    "s.study_time, s.accession_number, s.study_description, s.referring_physician, s.study_id, "
    "s.modalities, s.number_of_series, s.number_of_instances, s.updated_at"
)
_SERIES_COLS = (
    "s.hospital, se.study_uid, se.series_uid, se.modality, se.series_number, "
    "se.series_description, se.body_part, se.number_of_instances"
)
_INSTANCE_COLS = (
    "i.hospital, i.study_uid, i.series_uid, i.sop_uid, i.sop_class_uid, i.instance_number, "
    "i.transfer_syntax_uid, i.rows_, i.columns_, i.number_of_frames, i.object_key, i.size, "
    "i.sha256, i.original_transfer_syntax_uid"
)


def split_person_name(name: str) -> tuple[str, str]:
    """(alphabetic, ideographic) component groups of a PN value."""
    groups = name.split("=")
    return groups[0], groups[1] if len(groups) > 1 else ""


def _study(row: Any) -> StudyRecord:
    r = tuple(row)
    return StudyRecord(
        hospital=str(r[0]),
        patient=PatientInfo(
            patient_id=str(r[1]),
            issuer=str(r[2]),
            name=str(r[3]),
            birth_date=str(r[4]),
            sex=str(r[5]),
        ),
        study_uid=str(r[6]),
        study_date=str(r[7]),
        study_time=str(r[8]),
        accession_number=str(r[9]),
        study_description=str(r[10]),
        referring_physician=str(r[11]),
        study_id=str(r[12]),
        modalities=tuple(m for m in str(r[13]).split("\\") if m),
        number_of_series=int(r[14]),
        number_of_instances=int(r[15]),
        updated_at=float(r[16]),
    )


def _series(r: Any) -> SeriesRecord:
    return SeriesRecord(
        hospital=str(r[0]),
        study_uid=str(r[1]),
        series_uid=str(r[2]),
        modality=str(r[3]),
        series_number=None if r[4] is None else int(r[4]),
        series_description=str(r[5]),
        body_part=str(r[6]),
        number_of_instances=int(r[7]),
    )


def _opt_int(value: Any) -> int | None:
    return None if value is None else int(value)


def _instance(r: Any) -> InstanceSummary:
    return InstanceSummary(
        hospital=str(r[0]),
        study_uid=str(r[1]),
        series_uid=str(r[2]),
        sop_uid=str(r[3]),
        sop_class_uid=str(r[4]),
        instance_number=_opt_int(r[5]),
        transfer_syntax_uid=str(r[6]),
        rows=_opt_int(r[7]),
        columns=_opt_int(r[8]),
        number_of_frames=_opt_int(r[9]),
        object_key=str(r[10]),
        size=int(r[11]),
        sha256=str(r[12]),
        original_transfer_syntax_uid=str(r[13]),
    )


_Outcome = Literal["added", "replaced", "unchanged"]
"""What indexing one record did (the AddResult counter it goes to)."""


@dataclass(frozen=True, slots=True)
class _Refused:
    """A record the index refused (its UIDs are taken elsewhere): nothing of it was written."""

    reason: str


@dataclass(frozen=True, slots=True)
class _StoredInstance:
    """The indexed row a record with the same SOP Instance UID would replace."""

    hospital: str
    series_uid: str
    sha256: str
    object_key: str
    size: int


def _index_record(conn: Any, rec: InstanceRecord, now: float) -> _Outcome | _Refused:
    """Index one record in ``conn``'s transaction: refused if its UIDs belong to another
    hospital, study or series; unchanged if the same bytes are indexed; else its patient,
    study, series and instance rows are written (the replaced bytes kept as a prior version)."""
    h = rec.header
    stored = _stored_instance(conn, h.sop_uid)
    if stored is not None:
        if stored.hospital != rec.hospital or stored.series_uid != h.series_uid:
            return _Refused("SOP Instance UID already indexed in another hospital or series")
        if stored.sha256 == rec.sha256:
            return "unchanged"
    refused = _parent_conflict(conn, rec)
    if refused is not None:
        return refused
    patient_pk = _upsert_patient(conn, rec)
    _upsert_study(conn, rec, patient_pk, now)
    _upsert_series(conn, rec)
    _upsert_instance(conn, rec, now)
    if stored is None:
        return "added"
    _keep_prior_version(conn, h.sop_uid, stored, now)
    return "replaced"


def _count(result: AddResult, outcome: _Outcome, sop_uid: str) -> None:
    if outcome == "added":
        result.added += 1
    elif outcome == "replaced":
        result.replaced += 1
        result.replaced_uids.append(sop_uid)
    else:
        result.unchanged += 1


def _stored_instance(conn: Any, sop_uid: str) -> _StoredInstance | None:
    row = conn.execute(
        "SELECT hospital, series_uid, sha256, object_key, size FROM instances WHERE sop_uid = ?",
        (sop_uid,),
    ).fetchone()
    if row is None:
        return None
    return _StoredInstance(row[0], row[1], row[2], row[3], row[4])


def _parent_conflict(conn: Any, rec: InstanceRecord) -> _Refused | None:
    """Refused if the record's study is indexed for another hospital or its series in another
    study."""
    h = rec.header
    study = conn.execute(
        "SELECT hospital FROM studies WHERE study_uid = ?", (h.study_uid,)
    ).fetchone()
    if study is not None and study[0] != rec.hospital:
        return _Refused("Study Instance UID already indexed for another hospital")
    series = conn.execute(
        "SELECT study_uid FROM series WHERE series_uid = ?", (h.series_uid,)
    ).fetchone()
    if series is not None and series[0] != h.study_uid:
        return _Refused("Series Instance UID already indexed in another study")
    return None


def _upsert_patient(conn: Any, rec: InstanceRecord) -> Any:
    """Insert or update the record's patient; its primary key."""
    p = rec.header.patient
    alpha, ideo = split_person_name(p.name)
    conn.execute(
        "INSERT INTO patients (hospital, issuer, patient_id, name, name_alpha, name_ideo, "
        "birth_date, sex) VALUES (?, ?, ?, ?, ?, ?, ?, ?) "
        "ON CONFLICT (hospital, issuer, patient_id) DO UPDATE SET name = excluded.name, "
        "name_alpha = excluded.name_alpha, name_ideo = excluded.name_ideo, "
        "birth_date = excluded.birth_date, sex = excluded.sex",
        (rec.hospital, p.issuer, p.patient_id, p.name, alpha, ideo, p.birth_date, p.sex),
    )
    (patient_pk,) = conn.execute(
        "SELECT pk FROM patients WHERE hospital = ? AND issuer = ? AND patient_id = ?",
        (rec.hospital, p.issuer, p.patient_id),
    ).fetchone()
    return patient_pk


def _upsert_study(conn: Any, rec: InstanceRecord, patient_pk: Any, now: float) -> None:
    h = rec.header
    conn.execute(
        "INSERT INTO studies (study_uid, hospital, patient_pk, study_date, study_time, "
        "accession_number, study_description, referring_physician, study_id, modalities, "
        "number_of_series, number_of_instances, updated_at) "
        "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, '', 0, 0, ?) "
        "ON CONFLICT (study_uid) DO UPDATE SET patient_pk = excluded.patient_pk, "
        "study_date = excluded.study_date, study_time = excluded.study_time, "
        "accession_number = excluded.accession_number, "
        "study_description = excluded.study_description, "
        "referring_physician = excluded.referring_physician, study_id = excluded.study_id",
        (
            h.study_uid,
            rec.hospital,
            patient_pk,
            h.study_date,
            h.study_time,
            h.accession_number,
            h.study_description,
            h.referring_physician,
            h.study_id,
            now,
        ),
    )


def _upsert_series(conn: Any, rec: InstanceRecord) -> None:
    h = rec.header
    conn.execute(
        "INSERT INTO series (series_uid, study_uid, modality, series_number, "
        "series_description, body_part, number_of_instances) VALUES (?, ?, ?, ?, ?, ?, 0) "
        "ON CONFLICT (series_uid) DO UPDATE SET modality = excluded.modality, "
        "series_number = excluded.series_number, "
        "series_description = excluded.series_description, body_part = excluded.body_part",
        (
            h.series_uid,
            h.study_uid,
            h.modality,
            h.series_number,
            h.series_description,
            h.body_part,
        ),
    )


def _upsert_instance(conn: Any, rec: InstanceRecord, now: float) -> None:
    """Insert or replace the instance row, and its frame layout if it has one."""
    h = rec.header
    conn.execute(
        "INSERT INTO instances (sop_uid, series_uid, study_uid, hospital, sop_class_uid, "
        "instance_number, transfer_syntax_uid, rows_, columns_, number_of_frames, object_key, "
        "size, sha256, metadata, indexed_at, original_transfer_syntax_uid) "
        "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?) "
        "ON CONFLICT (sop_uid) DO UPDATE SET sop_class_uid = excluded.sop_class_uid, "
        "instance_number = excluded.instance_number, "
        "transfer_syntax_uid = excluded.transfer_syntax_uid, rows_ = excluded.rows_, "
        "columns_ = excluded.columns_, number_of_frames = excluded.number_of_frames, "
        "object_key = excluded.object_key, size = excluded.size, sha256 = excluded.sha256, "
        "metadata = excluded.metadata, indexed_at = excluded.indexed_at, "
        "original_transfer_syntax_uid = excluded.original_transfer_syntax_uid",
        (
            h.sop_uid,
            h.series_uid,
            h.study_uid,
            rec.hospital,
            h.sop_class_uid,
            h.instance_number,
            h.transfer_syntax_uid,
            h.rows,
            h.columns,
            h.number_of_frames,
            rec.object_key,
            rec.size,
            rec.sha256,
            h.metadata_json,
            now,
            h.original_transfer_syntax_uid,
        ),
    )
    if rec.frames is not None:
        conn.execute(
            "INSERT INTO frame_layouts (sop_uid, sha256, layout) VALUES (?, ?, ?) "
            "ON CONFLICT (sop_uid, sha256) DO UPDATE SET layout = excluded.layout",
            (h.sop_uid, rec.sha256, rec.frames.to_json()),
        )


def _keep_prior_version(conn: Any, sop_uid: str, stored: _StoredInstance, now: float) -> None:
    """Record the replaced bytes (kept under their prior-version key) in instance_versions."""
    conn.execute(
        "INSERT INTO instance_versions (sop_uid, sha256, object_key, size, replaced_at) "
        "VALUES (?, ?, ?, ?, ?) ON CONFLICT DO NOTHING",
        (
            sop_uid,
            stored.sha256,
            prior_version_key(stored.object_key, stored.sha256),
            stored.size,
            now,
        ),
    )


def _refresh_counts(
    conn: Any, touched_series: set[str], touched_studies: set[str], now: float
) -> None:
    """Recount the touched series and studies (instances, series, modalities)."""
    for series_uid in touched_series:
        conn.execute(
            "UPDATE series SET number_of_instances = "
            "(SELECT count(*) FROM instances WHERE series_uid = ?) WHERE series_uid = ?",
            (series_uid, series_uid),
        )
    for study_uid in touched_studies:
        mods = [
            str(m)
            for (m,) in conn.execute(
                "SELECT DISTINCT modality FROM series WHERE study_uid = ? "
                "AND modality <> '' ORDER BY modality",
                (study_uid,),
            )
        ]
        conn.execute(
            "UPDATE studies SET modalities = ?, updated_at = ?, "
            "number_of_series = (SELECT count(*) FROM series WHERE study_uid = ?), "
            "number_of_instances = (SELECT count(*) FROM instances WHERE study_uid = ?) "
            "WHERE study_uid = ?",
            ("\\".join(mods), now, study_uid, study_uid, study_uid),
        )


class SqlIndex:
    """The Index in SQL, shared by the SQLite and PostgreSQL backends.

    Subclasses provide ``dialect``, ``_conn()`` (this thread's connection, for reads) and
    ``_tx()`` (a write transaction); statements are written with '?' placeholders.
    """

    dialect: Dialect = SQLITE

    def _conn(self) -> Any:
        raise NotImplementedError

    def _tx(self) -> AbstractContextManager[Any]:
        raise NotImplementedError

    # -- writes ------------------------------------------------------------------------------

    def add_instances(self, recs: Sequence[InstanceRecord]) -> AddResult:
        result = AddResult()
        if not recs:
            return result
        now = time.time()
        with self._tx() as conn:
            touched_series: set[str] = set()
            touched_studies: set[str] = set()
            for rec in recs:
                reason = self._add_one(conn, rec, now, result)
                if reason is not None:
                    result.rejected.append((rec.header.sop_uid, reason))
                    continue
                touched_series.add(rec.header.series_uid)
                touched_studies.add(rec.header.study_uid)
            _refresh_counts(conn, touched_series, touched_studies, now)
        return result

    def _add_one(self, conn: Any, rec: InstanceRecord, now: float, result: AddResult) -> str | None:
        """One record of add_instances, counted in ``result``: the reason it was refused, or
        None. (Tests wrap this step to cut a batch in the middle.)"""
        outcome = _index_record(conn, rec, now)
        if isinstance(outcome, _Refused):
            return outcome.reason
        _count(result, outcome, rec.header.sop_uid)
        return None

    # -- reads -------------------------------------------------------------------------------

    def find_studies(self, q: StudyQuery, *, limit: int, offset: int = 0) -> list[StudyRecord]:
        where, params = study_where(q, self.dialect)
        sql = (
            f"SELECT {_STUDY_COLS} FROM studies s JOIN patients p ON p.pk = s.patient_pk{where} "
            "ORDER BY s.study_date DESC, s.study_time DESC, s.study_uid LIMIT ? OFFSET ?"
        )
        rows = self._conn().execute(sql, [*params, limit, offset]).fetchall()
        return [_study(r) for r in rows]

    def get_study(self, study_uid: str) -> StudyRecord | None:
        found = self.find_studies(StudyQuery(study_uids=(study_uid,)), limit=1)
        return found[0] if found else None

    def find_series(self, q: SeriesQuery, *, limit: int, offset: int = 0) -> list[SeriesRecord]:
        where, params = series_where(q, self.dialect)
        sql = (
            f"SELECT {_SERIES_COLS} FROM series se JOIN studies s ON s.study_uid = se.study_uid"
            f"{where} ORDER BY se.series_number, se.series_uid LIMIT ? OFFSET ?"
        )
        rows = self._conn().execute(sql, [*params, limit, offset]).fetchall()
        return [_series(tuple(r)) for r in rows]

    def find_instances(
        self, q: InstanceQuery, *, limit: int, offset: int = 0
    ) -> list[InstanceSummary]:
        where, params = instance_where(q, self.dialect)
        sql = (
            f"SELECT {_INSTANCE_COLS} FROM instances i{where} "
            "ORDER BY i.series_uid, i.instance_number, i.sop_uid LIMIT ? OFFSET ?"
        )
        rows = self._conn().execute(sql, [*params, limit, offset]).fetchall()
        return [_instance(tuple(r)) for r in rows]

    def instance_metadata(self, q: InstanceQuery) -> list[str]:
        where, params = instance_where(q, self.dialect)
        sql = (
            f"SELECT i.metadata FROM instances i{where} "
            "ORDER BY i.series_uid, i.instance_number, i.sop_uid"
        )
        return [str(r[0]) for r in self._conn().execute(sql, params)]

    # -- master patient index ------------------------------------------------------------------

    def link_patient(self, patient: PatientRef, person_key: str, source: str) -> None:
        with self._tx() as conn:
            conn.execute(
                "INSERT INTO person_links (hospital, issuer, patient_id, person_key, source, "
                "linked_at) VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT (hospital, issuer, patient_id) "
                "DO UPDATE SET person_key = excluded.person_key, source = excluded.source, "
                "linked_at = excluded.linked_at",
                (
                    patient.hospital,
                    patient.issuer,
                    patient.patient_id,
                    person_key,
                    source,
                    time.time(),
                ),
            )

    def unlink_patient(self, patient: PatientRef) -> bool:
        with self._tx() as conn:
            cur = conn.execute(
                "DELETE FROM person_links WHERE hospital = ? AND issuer = ? AND patient_id = ?",
                (patient.hospital, patient.issuer, patient.patient_id),
            )
            return bool(cur.rowcount)

    def person_link(self, patient: PatientRef) -> PersonLink | None:
        row = (
            self._conn()
            .execute(
                "SELECT person_key, source, linked_at FROM person_links "
                "WHERE hospital = ? AND issuer = ? AND patient_id = ?",
                (patient.hospital, patient.issuer, patient.patient_id),
            )
            .fetchone()
        )
        if row is None:
            return None
        return PersonLink(patient, str(row[0]), str(row[1]), float(row[2]))

    def linked_patients(self, person_key: str) -> list[PersonLink]:
        rows = self._conn().execute(
            "SELECT hospital, patient_id, issuer, source, linked_at FROM person_links "
            "WHERE person_key = ? ORDER BY hospital, issuer, patient_id",
            (person_key,),
        )
        return [
            PersonLink(
                PatientRef(str(r[0]), str(r[1]), str(r[2])), person_key, str(r[3]), float(r[4])
            )
            for r in rows
        ]

    def merge_persons(self, from_key: str, into_key: str) -> int:
        """Re-point every link of ``from_key`` to ``into_key``; how many moved."""
        with self._tx() as conn:
            cur = conn.execute(
                "UPDATE person_links SET person_key = ? WHERE person_key = ?", (into_key, from_key)
            )
            return int(cur.rowcount)

    def hold_link(
        self, patient: PatientRef, person_key: str, current_key: str, source: str, reason: str
    ) -> LinkReview:
        with self._tx() as conn:
            row = conn.execute(
                f"SELECT {_REVIEW_COLS} FROM link_reviews WHERE hospital = ? AND issuer = ? "
                "AND patient_id = ? AND person_key = ? AND state = 'pending'",
                (patient.hospital, patient.issuer, patient.patient_id, person_key),
            ).fetchone()
            if row is not None:
                return _review(tuple(row))
            conn.execute(
                "INSERT INTO link_reviews (hospital, issuer, patient_id, person_key, "
                "current_key, source, reason, created_at, state, decided_by, decided_at) "
                "VALUES (?, ?, ?, ?, ?, ?, ?, ?, 'pending', '', NULL)",
                (
                    patient.hospital,
                    patient.issuer,
                    patient.patient_id,
                    person_key,
                    current_key,
                    source,
                    reason,
                    time.time(),
                ),
            )
            row = conn.execute(
                f"SELECT {_REVIEW_COLS} FROM link_reviews WHERE hospital = ? AND issuer = ? "
                "AND patient_id = ? AND person_key = ? AND state = 'pending'",
                (patient.hospital, patient.issuer, patient.patient_id, person_key),
            ).fetchone()
            return _review(tuple(row))

    def link_reviews(self, *, pending_only: bool = True) -> list[LinkReview]:
        where = " WHERE state = 'pending'" if pending_only else ""
        rows = self._conn().execute(f"SELECT {_REVIEW_COLS} FROM link_reviews{where} ORDER BY id")
        return [_review(tuple(r)) for r in rows]

    def decide_link_review(self, review_id: int, *, approve: bool, by: str) -> LinkReview | None:
        state = "approved" if approve else "rejected"
        now = time.time()
        with self._tx() as conn:
            row = conn.execute(
                f"SELECT {_REVIEW_COLS} FROM link_reviews WHERE id = ? AND state = 'pending'",
                (review_id,),
            ).fetchone()
            if row is None:
                return None
            review = _review(tuple(row))
            conn.execute(
                "UPDATE link_reviews SET state = ?, decided_by = ?, decided_at = ? WHERE id = ?",
                (state, by, now, review_id),
            )
            if approve:
                p = review.patient
                conn.execute(
                    "INSERT INTO person_links (hospital, issuer, patient_id, person_key, source, "
                    "linked_at) VALUES (?, ?, ?, ?, ?, ?) "
                    "ON CONFLICT (hospital, issuer, patient_id) "
                    "DO UPDATE SET person_key = excluded.person_key, source = excluded.source, "
                    "linked_at = excluded.linked_at",
                    (p.hospital, p.issuer, p.patient_id, review.person_key, f"review:{by}", now),
                )
        return LinkReview(
            review.id,
            review.patient,
            review.person_key,
            review.current_key,
            review.source,
            review.reason,
            review.created_at,
            state,
            by,
            now,
        )

    def prior_versions(self, sop_uid: str) -> list[ObjectInfo]:
        rows = self._conn().execute(
            "SELECT object_key, size, sha256 FROM instance_versions WHERE sop_uid = ? "
            "ORDER BY replaced_at",
            (sop_uid,),
        )
        return [ObjectInfo(key=str(k), size=int(n), sha256=str(h)) for k, n, h in rows]

    def frame_layout(self, sop_uid: str, sha256: str) -> FrameLayout | None:
        row = (
            self._conn()
            .execute(
                "SELECT layout FROM frame_layouts WHERE sop_uid = ? AND sha256 = ?",
                (sop_uid, sha256),
            )
            .fetchone()
        )
        if row is None:
            return None
        try:
            return FrameLayout.from_json(str(row[0]))
        except (ValueError, KeyError, TypeError):
            return None

    def count_instances(self) -> int:
        (n,) = self._conn().execute("SELECT count(*) FROM instances").fetchone()
        return int(n)

    def close(self) -> None:
        raise NotImplementedError

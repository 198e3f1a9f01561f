"""Pure SQL building for the index backends: schema-independent WHERE clauses from queries.

Both backends use the same table layout; only the placeholder style and the case-insensitive
LIKE operator differ, so the clauses are built here once and tested once.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from image_store.records import InstanceQuery, SeriesQuery, StudyQuery

LIKE_ESCAPE = "\\"


@dataclass(frozen=True, slots=True)
class Dialect:
    placeholder: str  # "?" or "%s"
    ilike: str  # "LIKE" (SQLite, ASCII case-insensitive) or "ILIKE"
    ge: str = ">="
    """Byte-order comparisons the lower(name) indexes answer (text_pattern_ops on PostgreSQL)."""
    lt: str = "<"


SQLITE = Dialect(placeholder="?", ilike="LIKE")
POSTGRES = Dialect(placeholder="%s", ilike="ILIKE", ge="~>=~", lt="~<~")


def wildcard_to_like(pattern: str) -> str:
    """DICOM wildcard matching ('*' any run, '?' one character) as a LIKE pattern with '\\'
    escaping the characters LIKE treats specially."""
    out = []
    for ch in pattern:
        if ch in "%_\\":
            out.append(LIKE_ESCAPE + ch)
        elif ch == "*":
            out.append("%")
        elif ch == "?":
            out.append("_")
        else:
            out.append(ch)
    return "".join(out)


def has_wildcard(value: str) -> bool:
    return "*" in value or "?" in value


def literal_prefix(like: str) -> str:
    """The characters a LIKE pattern starts with before its first wildcard (escapes undone)."""
    out: list[str] = []
    i = 0
    while i < len(like):
        ch = like[i]
        if ch == LIKE_ESCAPE and i + 1 < len(like):
            out.append(like[i + 1])
            i += 2
            continue
        if ch in "%_":
            break
        out.append(ch)
        i += 1
    return "".join(out)


def lower_prefix_range(prefix: str) -> tuple[str, str] | None:
    """[low, high) that lower(value) falls in when value starts with ``prefix`` ignoring case,
    so an index on lower(column) can find the candidates. None when there is no prefix, or it
    holds non-ASCII letters with case (SQLite's lower() folds ASCII only, Python's all)."""
    if not prefix or any(ord(c) > 127 and c.lower() != c.upper() for c in prefix):
        return None
    low = prefix.lower()
    return low, low[:-1] + chr(ord(low[-1]) + 1)


class _Where:
    def __init__(self, dialect: Dialect) -> None:
        self.d = dialect
        self.clauses: list[str] = []
        self.params: list[object] = []

    def eq(self, column: str, value: object) -> None:
        self.clauses.append(f"{column} = {self.d.placeholder}")
        self.params.append(value)

    def text(self, column: str, value: str, *, case_insensitive: bool = False) -> None:
        """Single-value matching, or wildcard matching when the value holds '*' or '?'."""
        if has_wildcard(value):
            op = self.d.ilike if case_insensitive else "LIKE"
            self.clauses.append(f"{column} {op} {self.d.placeholder} ESCAPE '{LIKE_ESCAPE}'")
            self.params.append(wildcard_to_like(value))
        elif case_insensitive:
            self.clauses.append(f"lower({column}) = lower({self.d.placeholder})")
            self.params.append(value)
        else:
            self.eq(column, value)

    def in_(self, column: str, values: Sequence[object]) -> None:
        marks = ", ".join([self.d.placeholder] * len(values))
        self.clauses.append(f"{column} IN ({marks})")
        self.params.extend(values)

    def raw(self, clause: str, *params: object) -> None:
        self.clauses.append(clause)
        self.params.extend(params)

    def sql(self) -> str:
        return (" WHERE " + " AND ".join(self.clauses)) if self.clauses else ""


def _hospitals(w: _Where, column: str, hospitals: frozenset[str] | None) -> None:
    if hospitals is not None:
        if not hospitals:
            w.raw("1 = 0")
        else:
            w.in_(column, sorted(hospitals))


def study_where(q: StudyQuery, d: Dialect) -> tuple[str, list[object]]:
    """WHERE over ``studies s JOIN patients p``."""
    w = _Where(d)
    _hospitals(w, "s.hospital", q.hospitals)
    if q.patient_id:
        w.text("p.patient_id", q.patient_id)
    if q.patient_name and q.patient_name_fuzzy and not any(c in q.patient_name for c in "*?"):
        ph = d.placeholder
        value = wildcard_to_like(q.patient_name.strip())
        tests = []
        params: list[object] = []
        for column in ("p.name_alpha", "p.name_ideo"):
            for pattern in (f"{value}%", f"%^{value}%", f"% {value}%"):
                tests.append(f"{column} {d.ilike} {ph} ESCAPE '{LIKE_ESCAPE}'")
                params.append(pattern)
        w.raw("(" + " OR ".join(tests) + ")", *params)
    elif q.patient_name:
        ph = d.placeholder
        like = wildcard_to_like(q.patient_name)
        bounds = lower_prefix_range(literal_prefix(like))
        tests = []
        params = []
        for column in ("p.name_alpha", "p.name_ideo", "p.name"):
            test = f"{column} {d.ilike} {ph} ESCAPE '{LIKE_ESCAPE}'"
            if bounds is not None:  # a prefix: the lower(name) indexes find the candidates
                test = f"(lower({column}) {d.ge} {ph} AND lower({column}) {d.lt} {ph} AND {test})"
                params.extend(bounds)
            tests.append(test)
            params.append(like)
        w.raw("(" + " OR ".join(tests) + ")", *params)
    if q.person_key:
        # the person's few linked patients first, then their studies (an index walk, not a
        # correlated test of every study)
        w.raw(
            "(p.hospital, p.issuer, p.patient_id) IN (SELECT l.hospital, l.issuer, "
            f"l.patient_id FROM person_links l WHERE l.person_key = {d.placeholder})",
            q.person_key,
        )
    if q.study_date_from:
        w.raw(f"s.study_date >= {d.placeholder}", q.study_date_from)
    if q.study_date_to:
        w.raw(f"s.study_date <> '' AND s.study_date <= {d.placeholder}", q.study_date_to)
    if q.modalities:
        ph = d.placeholder
        parts = " OR ".join(
            f"EXISTS (SELECT 1 FROM series se WHERE se.study_uid = s.study_uid "
            f"AND se.modality = {ph})"
            for _ in q.modalities
        )
        w.raw(f"({parts})", *q.modalities)
    if q.accession_number:
        w.text("s.accession_number", q.accession_number)
    if q.study_uids:
        w.in_("s.study_uid", list(q.study_uids))
    if q.referring_physician:
        w.text("s.referring_physician", q.referring_physician, case_insensitive=True)
    if q.study_description:
        w.text("s.study_description", q.study_description, case_insensitive=True)
    return w.sql(), w.params


def series_where(q: SeriesQuery, d: Dialect) -> tuple[str, list[object]]:
    """WHERE over ``series se JOIN studies s``."""
    w = _Where(d)
    _hospitals(w, "s.hospital", q.hospitals)
    if q.study_uid:
        w.eq("se.study_uid", q.study_uid)
    if q.series_uids:
        w.in_("se.series_uid", list(q.series_uids))
    if q.modality:
        w.text("se.modality", q.modality)
    if q.series_number is not None:
        w.eq("se.series_number", q.series_number)
    return w.sql(), w.params


def instance_where(q: InstanceQuery, d: Dialect) -> tuple[str, list[object]]:
    """WHERE over ``instances i``."""
    w = _Where(d)
    _hospitals(w, "i.hospital", q.hospitals)
    if q.study_uid:
        w.eq("i.study_uid", q.study_uid)
    if q.series_uid:
        w.eq("i.series_uid", q.series_uid)
    if q.sop_uids:
        w.in_("i.sop_uid", list(q.sop_uids))
    if q.sop_class_uid:
        w.eq("i.sop_class_uid", q.sop_class_uid)
    if q.instance_number is not None:
        w.eq("i.instance_number", q.instance_number)
    return w.sql(), w.params

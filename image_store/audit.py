"""A tamper-evident audit log: every access (HTTP API and DICOM query/retrieve) appended to a
hash chain.

Each row stores the previous row's hash and ``hash = sha256(prev_hash + canonical JSON of the
event)``, so editing or deleting a row breaks the chain from there on. With the region's audit
key the log is also sealed apart from the rows (a signed head row and signed anchor rows, see
:class:`SqlAuditLog`), so a cut tail, a rolled-back head or a chain recomputed without the key is
caught too; :meth:`SqlAuditLog.check` (``cloudfilm audit verify``) fails closed without the key
or the head. Every API and gateway process appends to the one chain in the region's database.
Events name actors, UIDs and paths, never patient names or IDs.
"""

from __future__ import annotations

import hashlib
import hmac
import json
from collections.abc import Collection, Iterable, Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from image_store.state.db import StateDb, as_db

SCHEMA = """
CREATE TABLE IF NOT EXISTS audit (
    seq INTEGER PRIMARY KEY,
    event TEXT NOT NULL,
    prev_hash TEXT NOT NULL,
    hash TEXT NOT NULL,
    study_uid TEXT NOT NULL DEFAULT '',
    via_kind TEXT NOT NULL DEFAULT ''
);
CREATE TABLE IF NOT EXISTS audit_head (
    id INTEGER PRIMARY KEY,
    seq INTEGER NOT NULL,
    hash TEXT NOT NULL,
    mac TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS audit_anchors (
    seq INTEGER PRIMARY KEY,
    hash TEXT NOT NULL,
    mac TEXT NOT NULL
);
"""
INDEXES = """
CREATE INDEX IF NOT EXISTS audit_study ON audit (study_uid);
CREATE INDEX IF NOT EXISTS audit_via ON audit (via_kind, seq)
"""
VIA_KINDS = ("consent", "break-glass")
"""The ways a read of another hospital's study is allowed, as the ``via`` column keeps them."""
GENESIS = "0" * 64
ANCHOR_EVERY = 64
"""Records between two signed anchors (see SqlAuditLog)."""


@dataclass(frozen=True, slots=True)
class AuditVerdict:
    """What a verification found: ``ok``, how many records, the first bad one (0: the seal
    itself) and why."""

    ok: bool
    records: int
    bad_seq: int | None
    reason: str


@dataclass(frozen=True, slots=True)
class AuditEvent:
    ts: float
    actor: str
    hospital: str
    role: str
    action: str
    resource: str
    status: int
    remote: str
    via: str = ""
    """How a read of another hospital's study was allowed (consent grant or break-glass)."""


def _canonical(event: AuditEvent) -> str:
    return json.dumps(asdict(event), sort_keys=True, separators=(",", ":"), ensure_ascii=False)


def chain_hash(prev_hash: str, event_json: str) -> str:
    return hashlib.sha256((prev_hash + event_json).encode()).hexdigest()


def study_of(resource: str) -> str:
    """The study UID a resource names (``.../studies/<uid>...``), '' for none."""
    parts = resource.split("?", 1)[0].split("/")
    if "studies" not in parts:
        return ""
    i = parts.index("studies")
    return parts[i + 1] if i + 1 < len(parts) else ""


def via_kind(via: str) -> str:
    """The kind of an event's ``via`` ('consent:<id>' -> 'consent', 'break-glass:<reason>' ->
    'break-glass'), '' for anything else."""
    kind = via.split(":", 1)[0]
    return kind if kind in VIA_KINDS and ":" in via else ""


def seal_mac(key: bytes, kind: str, seq: int, digest: str) -> str:
    """The HMAC sealing a head (``kind='head'``) or an anchor at ``seq``."""
    msg = f"{seq}:{digest}" if kind == "head" else f"{kind}:{seq}:{digest}"
    return hmac.new(key, msg.encode(), hashlib.sha256).hexdigest()


class SqlAuditLog:
    """The log in the state database (the index's: SQLite or PostgreSQL), one chain for every
    writer process. An append is one transaction serialised in the database (BEGIN IMMEDIATE on
    SQLite, an advisory lock on PostgreSQL): it reads the last row, adds the next with its study
    UID and the kind of its ``via`` (both indexed: a patient's access history and the
    break-glass review are indexed queries) and, with ``head_key`` (the region's audit
    key), seals the log in the same transaction:

    - ``audit_head``: one row, the last sequence number and hash, HMAC'd. Cutting records from
      the end, which leaves a shorter chain that is intact, or recomputing the chain without the
      key, no longer matches it.
    - ``audit_anchors``: one HMAC'd row per :data:`ANCHOR_EVERY` records, inserted and never
      updated. A head replaced by an older signed copy is caught by the anchors written after it.

    Residual risk, documented in ``docs/security.md``: someone who can write the database and
    kept an old copy of both the head and the anchors can roll the whole log back to that copy
    and drop the records after it; only a copy of the anchors kept elsewhere (``cloudfilm audit
    export``, or write-once storage) catches that.
    """

    def __init__(
        self,
        db: StateDb | Path,
        head_key: bytes | None = None,
    ) -> None:
        self.db = as_db(db)
        self._head_key = head_key
        self.db.ensure_schema(SCHEMA)
        have = self.db.columns("audit")
        if "study_uid" not in have:
            self._add_study_column()
        if "via_kind" not in have:
            self._add_via_column()
        self.db.ensure_schema(INDEXES)

    def _add_study_column(self) -> None:
        """Give a log written by an older version its study column, filled from the events."""
        self.db.add_columns("audit", [("study_uid", "TEXT NOT NULL DEFAULT ''")])
        with self.db.tx("audit") as conn:
            rows = conn.execute("SELECT seq, event FROM audit WHERE study_uid = ''").fetchall()
            for seq, text in rows:
                uid = study_of(str(json.loads(text).get("resource", "")))
                if uid:
                    conn.execute("UPDATE audit SET study_uid = ? WHERE seq = ?", (uid, seq))

    def _add_via_column(self) -> None:
        """Give a log written by an older version its ``via_kind`` column, filled from the
        events: the canonical JSON holds ``"via":"<kind>:`` verbatim (a quote inside any value
        is escaped, so no other field can match)."""
        self.db.add_columns("audit", [("via_kind", "TEXT NOT NULL DEFAULT ''")])
        with self.db.tx("audit") as conn:
            for kind in VIA_KINDS:
                conn.execute(
                    "UPDATE audit SET via_kind = ? WHERE via_kind = '' AND event LIKE ?",
                    (kind, f'%"via":"{kind}:%'),
                )

    def append(self, event: AuditEvent) -> None:
        text = _canonical(event)
        with self.db.tx("audit") as conn:
            row = conn.execute("SELECT seq, hash FROM audit ORDER BY seq DESC LIMIT 1").fetchone()
            last, prev = (0, GENESIS) if row is None else (int(row[0]), str(row[1]))
            seq, digest = last + 1, chain_hash(prev, text)
            conn.execute(
                "INSERT INTO audit (seq, event, prev_hash, hash, study_uid, via_kind) "
                "VALUES (?, ?, ?, ?, ?, ?)",
                (seq, text, prev, digest, study_of(event.resource), via_kind(event.via)),
            )
            key = self._head_key
            if key is None:
                return
            if seq % ANCHOR_EVERY == 0:
                conn.execute(
                    "INSERT INTO audit_anchors (seq, hash, mac) VALUES (?, ?, ?)",
                    (seq, digest, seal_mac(key, "anchor", seq, digest)),
                )
            conn.execute(
                "INSERT INTO audit_head (id, seq, hash, mac) VALUES (1, ?, ?, ?) "
                "ON CONFLICT (id) DO UPDATE SET seq = excluded.seq, hash = excluded.hash, "
                "mac = excluded.mac",
                (seq, digest, seal_mac(key, "head", seq, digest)),
            )

    def _mac(self, kind: str, seq: int, digest: str) -> str:
        assert self._head_key is not None
        return seal_mac(self._head_key, kind, seq, digest)

    # -- verification ------------------------------------------------------------------------

    def _walk_chain(self) -> tuple[dict[int, str], int | None]:
        """(seq -> hash of every row, the first bad row or None)."""
        prev = GENESIS
        expected_seq: int | None = None
        hashes: dict[int, str] = {}
        for seq, text, prev_hash, digest in self.db.conn().execute(
            "SELECT seq, event, prev_hash, hash FROM audit ORDER BY seq"
        ):
            if expected_seq is not None and seq != expected_seq:
                return hashes, int(expected_seq)  # a deleted row
            if prev_hash != prev or chain_hash(prev, text) != digest:
                return hashes, int(seq)
            prev, expected_seq = digest, seq + 1
            hashes[int(seq)] = str(digest)
        return hashes, None

    def check(self) -> AuditVerdict:
        """The whole verification, failing closed: once the log has records it needs the audit
        key, a valid signed head and every anchor due up to it, each matching its record; the
        chain must be intact from the first record to the last, and end at the newest signed
        point."""
        hashes, bad = self._walk_chain()
        if bad is not None:
            return AuditVerdict(False, len(hashes), bad, "a record was edited or deleted")
        last = max(hashes, default=0)
        if self._head_key is None:
            if not hashes:
                return AuditVerdict(True, 0, None, "empty")
            return AuditVerdict(
                False, len(hashes), 0, "no audit key: the log cannot be vouched for"
            )
        head = self._head()
        anchors, problem = self._read_anchors()
        if head is None:
            if not hashes and not anchors and problem is None:
                return AuditVerdict(True, 0, None, "empty")
            return AuditVerdict(False, len(hashes), 0, "the signed head is missing or unreadable")
        seq, digest = int(head["seq"]), str(head["hash"])
        if not hmac.compare_digest(str(head["mac"]), self._mac("head", seq, digest)):
            return AuditVerdict(False, len(hashes), 0, "the signed head's signature is wrong")
        if hashes.get(seq) != digest:
            why = "records cut from the end" if seq > last else "the chain was rewritten"
            return AuditVerdict(False, len(hashes), seq, f"the signed head does not match: {why}")
        if problem is not None:
            return AuditVerdict(False, len(hashes), 0, problem)
        for a_seq in range(ANCHOR_EVERY, seq + 1, ANCHOR_EVERY):
            if a_seq not in anchors and a_seq in hashes:
                return AuditVerdict(False, len(hashes), a_seq, "an anchor is missing")
        for a_seq, a_hash in sorted(anchors.items()):
            if hashes.get(a_seq) != a_hash:
                why = (
                    "records cut from the end, or the head rolled back"
                    if a_seq > last
                    else "the chain was rewritten"
                )
                return AuditVerdict(False, len(hashes), a_seq, f"an anchor does not match: {why}")
        sealed = max(seq, max(anchors, default=0))
        if last > sealed:
            return AuditVerdict(
                False,
                len(hashes),
                sealed + 1,
                f"{last - sealed} record(s) after the signed head (inserted without the key)",
            )
        return AuditVerdict(True, len(hashes), None, "intact")

    def _head(self) -> dict[str, Any] | None:
        row = (
            self.db.conn().execute("SELECT seq, hash, mac FROM audit_head WHERE id = 1").fetchone()
        )
        return (
            None if row is None else {"seq": int(row[0]), "hash": str(row[1]), "mac": str(row[2])}
        )

    def _read_anchors(self) -> tuple[dict[int, str], str | None]:
        anchors: dict[int, str] = {}
        rows = self.db.conn().execute("SELECT seq, hash, mac FROM audit_anchors ORDER BY seq")
        for seq, digest, mac in rows:
            if not hmac.compare_digest(str(mac), self._mac("anchor", int(seq), str(digest))):
                return anchors, f"the anchor of record {seq} has a wrong signature"
            anchors[int(seq)] = str(digest)
        return anchors, None

    def verify(self) -> int | None:
        """None when the log checks out, else the sequence number of the first bad record (0
        when the seal itself is bad). Without ``head_key`` only the chain is checked, which
        cannot see a cut tail or a recomputed chain: ``cloudfilm audit verify`` uses
        :meth:`check`, which refuses to vouch for a log without its key."""
        if self._head_key is None:
            return self._walk_chain()[1]
        verdict = self.check()
        return None if verdict.ok else (verdict.bad_seq or 0)

    def iter_events(self) -> Iterator[AuditEvent]:
        for (text,) in self.db.conn().execute("SELECT event FROM audit ORDER BY seq"):
            yield AuditEvent(**json.loads(text))

    def study_reads(self, study_uids: Collection[str]) -> list[dict[str, Any]]:
        """The events naming one of ``study_uids``, newest first (an indexed query)."""
        uids = sorted(set(study_uids))
        rows: list[tuple[int, str]] = []
        for i in range(0, len(uids), 500):
            part = uids[i : i + 500]
            marks = ", ".join("?" * len(part))
            rows += (
                self.db.conn()
                .execute(
                    f"SELECT seq, event FROM audit WHERE study_uid IN ({marks})",  # noqa: S608
                    part,
                )
                .fetchall()
            )
        rows.sort(reverse=True)
        return study_reads((AuditEvent(**json.loads(text)) for _, text in rows[::-1]), uids)

    def reads_via(self, kind: str, limit: int | None = None) -> list[AuditEvent]:
        """The events whose read was allowed by ``kind`` (one of :data:`VIA_KINDS`, e.g.
        'break-glass' for the auditors' review), newest first, at most ``limit`` (an indexed
        query)."""
        if kind not in VIA_KINDS:
            raise ValueError(f"via kind is one of {VIA_KINDS}")
        sql = "SELECT event FROM audit WHERE via_kind = ? ORDER BY seq DESC"
        params: list[object] = [kind]
        if limit is not None:
            sql += " LIMIT ?"
            params.append(int(limit))
        rows = self.db.conn().execute(sql, params).fetchall()
        return [AuditEvent(**json.loads(text)) for (text,) in rows]

    def close(self) -> None:
        self.db.close()


def study_reads(events: Iterable[AuditEvent], study_uids: Collection[str]) -> list[dict[str, Any]]:
    """The events whose resource names one of ``study_uids`` (``.../studies/<uid>...``), newest
    first: who opened a patient's studies, for their access history."""
    out = []
    for event in events:
        uid = study_of(event.resource)
        if uid and uid in study_uids:
            out.append(
                {
                    "ts": event.ts,
                    "actor": event.actor,
                    "hospital": event.hospital,
                    "role": event.role,
                    "study_uid": uid,
                    "status": event.status,
                    "via": event.via,
                }
            )
    return out[::-1]

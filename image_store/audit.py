"""A tamper-evident audit log: every access (HTTP API and DICOM query/retrieve) appended to a
hash chain.

Each row stores the previous row's hash and ``hash = sha256(prev_hash + canonical JSON of the
event)``, so editing or deleting a row breaks the chain from there on. With the region's audit
key the log is also sealed outside the database (a signed head and signed anchors, see
:class:`SqliteAuditLog`), so a cut tail, a rolled-back head or a chain recomputed without the key
is caught too; :meth:`SqliteAuditLog.check` (``cloudfilm audit verify``) fails closed without
the key or the head. Events name actors, UIDs and paths, never patient names or IDs.
"""

from __future__ import annotations

import fcntl
import hashlib
import hmac
import json
import os
import threading
from collections.abc import Collection, Iterable, Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from image_store.sqlite_db import SqliteDatabase

SCHEMA = """
CREATE TABLE IF NOT EXISTS audit (
    seq INTEGER PRIMARY KEY,
    event TEXT NOT NULL,
    prev_hash TEXT NOT NULL,
    hash TEXT NOT NULL
);
"""
GENESIS = "0" * 64
ANCHOR_EVERY = 64
"""Records between two signed anchors (see SqliteAuditLog)."""


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


class SqliteAuditLog:
    """The log in SQLite. With ``head_key`` (the region's audit key), every append also seals
    the log outside the database:

    - ``<path>.head``: the last sequence number and hash, HMAC'd. It only moves forward (a
      writer never replaces a newer head with an older one), so cutting records from the end,
      which leaves a shorter chain that is intact, or recomputing the chain without the key,
      no longer matches it.
    - ``<path>.anchors``: one HMAC'd line per :data:`ANCHOR_EVERY` records, appended and never
      rewritten (a second place to hold on to: ship or copy it elsewhere). A head replaced by an
      older signed copy is caught by the anchors written after it.

    Both are written after the row is committed, under an exclusive ``flock`` so processes
    sharing the log (API and gateway) keep them in order; anchors missed by a crash are filled
    in by the next append. Residual risk, documented in ``docs/security.md``: someone who can
    write the data directory and kept an old copy of both the head and the anchors file can roll
    the whole log back to that copy and drop up to the records after it; only a copy of the
    anchors kept elsewhere (or write-once storage) catches that.
    """

    def __init__(
        self, path: Path, head_key: bytes | None = None, *, anchors_path: Path | None = None
    ) -> None:
        self.db = SqliteDatabase(path, SCHEMA)
        self.head_path = Path(path).with_name(Path(path).name + ".head")
        self.anchors_path = anchors_path or Path(path).with_name(Path(path).name + ".anchors")
        self._lock_path = Path(path).with_name(Path(path).name + ".lock")
        self._head_key = head_key
        self._seal_lock = threading.Lock()

    def append(self, event: AuditEvent) -> None:
        text = _canonical(event)
        with self.db.tx() as conn:
            row = conn.execute("SELECT hash FROM audit ORDER BY seq DESC LIMIT 1").fetchone()
            prev = GENESIS if row is None else str(row[0])
            digest = chain_hash(prev, text)
            cur = conn.execute(
                "INSERT INTO audit (event, prev_hash, hash) VALUES (?, ?, ?)",
                (text, prev, digest),
            )
            seq = int(cur.lastrowid or 0)
        if self._head_key is not None:
            self._seal(seq, digest)

    # -- the seal: signed head and anchors ---------------------------------------------------

    def _mac(self, kind: str, seq: int, digest: str) -> str:
        assert self._head_key is not None
        msg = f"{seq}:{digest}" if kind == "head" else f"{kind}:{seq}:{digest}"
        return hmac.new(self._head_key, msg.encode(), hashlib.sha256).hexdigest()

    def _seal(self, seq: int, digest: str) -> None:
        """Move the head forward to ``seq`` (never back) and append the anchors due up to it."""
        with self._seal_lock:
            fd = os.open(self._lock_path, os.O_RDWR | os.O_CREAT, 0o600)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX)
                head = _read_signed(self.head_path)
                old = int(head["seq"]) if head is not None else 0
                if seq <= old:
                    return  # another writer already sealed past this record
                due = list(range((old // ANCHOR_EVERY + 1) * ANCHOR_EVERY, seq + 1, ANCHOR_EVERY))
                if due:
                    self._append_anchors(due, seq, digest)
                self._write_head(seq, digest)
            finally:
                os.close(fd)  # releases the flock

    def _append_anchors(self, seqs: list[int], seq: int, digest: str) -> None:
        lines = []
        conn = self.db.conn()
        for s in seqs:
            if s == seq:
                h = digest
            else:
                row = conn.execute("SELECT hash FROM audit WHERE seq = ?", (s,)).fetchone()
                if row is None:
                    continue  # a gap left by a rolled-back append: nothing to vouch for
                h = str(row[0])
            lines.append(json.dumps({"seq": s, "hash": h, "mac": self._mac("anchor", s, h)}))
        fd = os.open(self.anchors_path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
        with os.fdopen(fd, "a") as fh:
            fh.write("".join(line + "\n" for line in lines))

    def _write_head(self, seq: int, digest: str) -> None:
        tmp = self.head_path.with_name(self.head_path.name + ".partial")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as fh:
            fh.write(
                json.dumps({"seq": seq, "hash": digest, "mac": self._mac("head", seq, digest)})
            )
        os.replace(tmp, self.head_path)

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
        point (a head, or an anchor written just before a crash)."""
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
        head = _read_signed(self.head_path)
        if head is None:
            if not hashes and not self.anchors_path.exists():
                return AuditVerdict(True, 0, None, "empty")
            return AuditVerdict(False, len(hashes), 0, "the signed head is missing or unreadable")
        seq, digest = int(head["seq"]), str(head["hash"])
        if not hmac.compare_digest(str(head["mac"]), self._mac("head", seq, digest)):
            return AuditVerdict(False, len(hashes), 0, "the signed head's signature is wrong")
        if hashes.get(seq) != digest:
            why = "records cut from the end" if seq > last else "the chain was rewritten"
            return AuditVerdict(False, len(hashes), seq, f"the signed head does not match: {why}")
        anchors, problem = self._read_anchors()
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
                f"{last - sealed} record(s) after the signed head (inserted, or a crash before "
                "the head was written: the next append seals them)",
            )
        return AuditVerdict(True, len(hashes), None, "intact")

    def _read_anchors(self) -> tuple[dict[int, str], str | None]:
        anchors: dict[int, str] = {}
        try:
            text = self.anchors_path.read_text()
        except FileNotFoundError:
            return anchors, None
        for n, line in enumerate(text.splitlines(), 1):
            try:
                item = json.loads(line)
                seq, digest, mac = int(item["seq"]), str(item["hash"]), str(item["mac"])
            except (ValueError, KeyError, TypeError):
                return anchors, f"anchor line {n} is unreadable"
            if not hmac.compare_digest(mac, self._mac("anchor", seq, digest)):
                return anchors, f"anchor line {n} has a wrong signature"
            if anchors.get(seq, digest) != digest:
                return anchors, f"two anchors disagree about record {seq}"
            anchors[seq] = digest
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

    def close(self) -> None:
        self.db.close()


def _read_signed(path: Path) -> dict[str, Any] | None:
    """A head file's JSON ({"seq", "hash", "mac"}), or None if missing or unreadable."""
    try:
        item = json.loads(path.read_text())
        if isinstance(item, dict) and {"seq", "hash", "mac"} <= item.keys():
            int(item["seq"])
            return item
    except (OSError, ValueError, TypeError):
        pass
    return None


def study_reads(events: Iterable[AuditEvent], study_uids: Collection[str]) -> list[dict[str, Any]]:
    """The events whose resource names one of ``study_uids`` (``.../studies/<uid>...``), newest
    first: who opened a patient's studies, for their access history."""
    out = []
    for event in events:
        parts = event.resource.split("?", 1)[0].split("/")
        if "studies" not in parts:
            continue
        i = parts.index("studies")
        if i + 1 < len(parts) and parts[i + 1] in study_uids:
            out.append(
                {
                    "ts": event.ts,
                    "actor": event.actor,
                    "hospital": event.hospital,
                    "role": event.role,
                    "study_uid": parts[i + 1],
                    "status": event.status,
                    "via": event.via,
                }
            )
    return out[::-1]

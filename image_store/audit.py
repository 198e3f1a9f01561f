"""A tamper-evident audit log: every access (HTTP API and DICOM query/retrieve) appended to a
hash chain.

Each row stores the previous row's hash and ``hash = sha256(prev_hash + canonical JSON of the
event)``, so editing or deleting a row breaks the chain from there on (:meth:`verify`). Events
name actors, UIDs and paths, never patient names or IDs.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import os
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
    """The log in SQLite. With ``head_key``, every append also writes a signed head (last
    sequence number and hash, HMAC'd) to ``<path>.head``, so deleting records from the end,
    which leaves a shorter chain that is intact, is detected too (unless the head file is
    replaced by an older signed one: keep copies of it elsewhere for that)."""

    def __init__(self, path: Path, head_key: bytes | None = None) -> None:
        self.db = SqliteDatabase(path, SCHEMA)
        self.head_path = Path(path).with_name(Path(path).name + ".head")
        self._head_key = head_key

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
            if self._head_key is not None:
                self._write_head(int(cur.lastrowid or 0), digest)

    def _head_mac(self, seq: int, digest: str) -> str:
        assert self._head_key is not None
        return hmac.new(self._head_key, f"{seq}:{digest}".encode(), hashlib.sha256).hexdigest()

    def _write_head(self, seq: int, digest: str) -> None:
        tmp = self.head_path.with_name(self.head_path.name + ".partial")
        tmp.write_text(json.dumps({"seq": seq, "hash": digest, "mac": self._head_mac(seq, digest)}))
        os.replace(tmp, self.head_path)

    def verify(self) -> int | None:
        """None when the chain is intact, else the sequence number of the first bad row (for
        a log cut short: the signed head's sequence number)."""
        prev = GENESIS
        expected_seq = None
        hashes: dict[int, str] = {}
        for seq, text, prev_hash, digest in self.db.conn().execute(
            "SELECT seq, event, prev_hash, hash FROM audit ORDER BY seq"
        ):
            if expected_seq is not None and seq != expected_seq:
                return int(expected_seq)  # a deleted row
            if prev_hash != prev or chain_hash(prev, text) != digest:
                return int(seq)
            prev, expected_seq = digest, seq + 1
            hashes[int(seq)] = str(digest)
        return self._verify_head(hashes)

    def _verify_head(self, hashes: dict[int, str]) -> int | None:
        if self._head_key is None or not self.head_path.exists():
            return None
        try:
            head = json.loads(self.head_path.read_text())
            seq, digest, mac = int(head["seq"]), str(head["hash"]), str(head["mac"])
        except (ValueError, KeyError, TypeError):
            return 0  # an unreadable head: nothing can be vouched for
        if not hmac.compare_digest(mac, self._head_mac(seq, digest)):
            return 0
        return None if hashes.get(seq) == digest else seq

    def iter_events(self) -> Iterator[AuditEvent]:
        for (text,) in self.db.conn().execute("SELECT event FROM audit ORDER BY seq"):
            yield AuditEvent(**json.loads(text))

    def close(self) -> None:
        self.db.close()


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

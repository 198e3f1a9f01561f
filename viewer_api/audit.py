"""A tamper-evident audit log: every access appended to a hash chain.

Each row stores the previous row's hash and ``hash = sha256(prev_hash + canonical JSON of the
event)``, so editing or deleting a row breaks the chain from there on (:meth:`verify`). Events
name actors, UIDs and paths, never patient names or IDs.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path

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
    def __init__(self, path: Path) -> None:
        self.db = SqliteDatabase(path, SCHEMA)

    def append(self, event: AuditEvent) -> None:
        text = _canonical(event)
        with self.db.tx() as conn:
            row = conn.execute("SELECT hash FROM audit ORDER BY seq DESC LIMIT 1").fetchone()
            prev = GENESIS if row is None else str(row[0])
            conn.execute(
                "INSERT INTO audit (event, prev_hash, hash) VALUES (?, ?, ?)",
                (text, prev, chain_hash(prev, text)),
            )

    def verify(self) -> int | None:
        """None when the chain is intact, else the sequence number of the first bad row."""
        prev = GENESIS
        expected_seq = None
        for seq, text, prev_hash, digest in self.db.conn().execute(
            "SELECT seq, event, prev_hash, hash FROM audit ORDER BY seq"
        ):
            if expected_seq is not None and seq != expected_seq:
                return int(expected_seq)  # a deleted row
            if prev_hash != prev or chain_hash(prev, text) != digest:
                return int(seq)
            prev, expected_seq = digest, seq + 1
        return None

    def iter_events(self) -> Iterator[AuditEvent]:
        for (text,) in self.db.conn().execute("SELECT event FROM audit ORDER BY seq"):
            yield AuditEvent(**json.loads(text))

    def close(self) -> None:
        self.db.close()

"""Moving an embedded install's per-process files into the state database, on first open.

Each old SQLite file's rows are copied into the same tables of the state database (columns the
old file lacks take their defaults; a row already there is kept), the old audit log's signed
head and anchors files become rows, and the old revoked-tokens text file becomes rows; then each
file is renamed ``<name>.migrated`` (kept, so nothing is lost, and never read again).
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from image_store.audit import study_of, via_kind
from image_store.state.db import StateDb
from image_store.state.ports import Revocations

MIGRATED = ".migrated"


@dataclass(frozen=True, slots=True)
class LegacyFiles:
    """Where an embedded install kept its state (cloudfilm.config.StackSettings paths)."""

    registry: Path
    shares: Path
    reports: Path
    consents: Path
    gateways: Path
    audit: Path
    revoked_tokens: Path


TABLES: dict[str, tuple[str, ...]] = {
    "registry": ("hospitals", "users"),
    "shares": ("share_links",),
    "reports": ("reports",),
    "consents": ("consents", "consent_requests", "consent_codes"),
    "gateways": ("gateway_credentials", "gateway_assertions", "gateway_tokens"),
}
"""The tables each old file held, parents before children."""


def migrate_legacy(db: StateDb, files: LegacyFiles, revocations: Revocations) -> list[Path]:
    """Copy whatever old files exist into ``db`` (whose tables the stores have made) and rename
    them; the files migrated. Idempotent: a second run finds nothing to do."""
    done: list[Path] = []
    for kind, tables in TABLES.items():
        path: Path = getattr(files, kind)
        if path.is_file():
            _copy_tables(db, path, tables)
            done.append(_retire(path))
    if files.audit.is_file():
        _copy_audit(db, files.audit)
        for extra in (".head", ".anchors"):
            side = files.audit.with_name(files.audit.name + extra)
            if side.exists():
                _retire(side)
        done.append(_retire(files.audit))
    if files.revoked_tokens.is_file():
        for line in files.revoked_tokens.read_text().splitlines():
            parts = line.split()
            if len(parts) == 2 and parts[1].isdigit():
                try:
                    revocations.revoke(parts[0], float(parts[1]))
                except ValueError:
                    continue
        done.append(_retire(files.revoked_tokens))
    return done


def _retire(path: Path) -> Path:
    target = path.with_name(path.name + MIGRATED)
    path.replace(target)
    for suffix in ("-wal", "-shm"):
        path.with_name(path.name + suffix).unlink(missing_ok=True)
    return target


def _old_rows(path: Path, table: str) -> tuple[list[str], list[tuple[object, ...]]]:
    with sqlite3.connect(f"file:{path}?mode=ro", uri=True) as old:
        cols = [str(r[1]) for r in old.execute(f"PRAGMA table_info({table})")]
        if not cols:
            return [], []
        rows = old.execute(f"SELECT {', '.join(cols)} FROM {table}").fetchall()  # noqa: S608
    old.close()
    return cols, rows


def _copy_tables(db: StateDb, path: Path, tables: Sequence[str]) -> None:
    with db.tx("migrate") as conn:
        for table in tables:
            old_cols, rows = _old_rows(path, table)
            have = db.columns(table)
            keep = [i for i, c in enumerate(old_cols) if c in have]
            if not keep:
                continue
            names = ", ".join(old_cols[i] for i in keep)
            sql = (
                f"INSERT INTO {table} ({names}) "  # noqa: S608
                f"VALUES ({', '.join('?' * len(keep))}) ON CONFLICT DO NOTHING"
            )
            for row in rows:
                conn.execute(sql, [row[i] for i in keep])


def _copy_audit(db: StateDb, path: Path) -> None:
    """The old chain's rows (each given its study UID and via kind), head and anchors."""
    _cols, rows = _old_rows(path, "audit")
    with db.tx("audit") as conn:
        for seq, text, prev_hash, digest, *_rest in rows:
            event = json.loads(str(text))
            uid = study_of(str(event.get("resource", "")))
            kind = via_kind(str(event.get("via", "")))
            conn.execute(
                "INSERT INTO audit (seq, event, prev_hash, hash, study_uid, via_kind) "
                "VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT DO NOTHING",
                (seq, text, prev_hash, digest, uid, kind),
            )
        head = _signed(path.with_name(path.name + ".head"))
        if head is not None:
            conn.execute(
                "INSERT INTO audit_head (id, seq, hash, mac) VALUES (1, ?, ?, ?) "
                "ON CONFLICT DO NOTHING",
                head,
            )
        anchors = path.with_name(path.name + ".anchors")
        lines = anchors.read_text().splitlines() if anchors.exists() else []
        for n, line in enumerate(lines, 1):
            item = _signed_text(line)
            row = item if item is not None else (-n, "unreadable", "")  # fails verification
            conn.execute(
                "INSERT INTO audit_anchors (seq, hash, mac) VALUES (?, ?, ?) "
                "ON CONFLICT DO NOTHING",
                row,
            )


def _signed(path: Path) -> tuple[int, str, str] | None:
    try:
        return _signed_text(path.read_text())
    except OSError:
        return None


def _signed_text(text: str) -> tuple[int, str, str] | None:
    try:
        item = json.loads(text)
        return int(item["seq"]), str(item["hash"]), str(item["mac"])
    except (ValueError, KeyError, TypeError):
        return None

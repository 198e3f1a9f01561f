"""The auditor's party: `cloudfilm audit verify` vouches for the audit log only when it can, and
fails closed otherwise (#14 item 5). Each test is an attack by someone who can write the data
directory (and so the region's database, where the log and its seal live) but does not hold the
audit key."""

from __future__ import annotations

import dataclasses
import sqlite3
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from cloudfilm.cli import main
from image_store.audit import ANCHOR_EVERY, AuditEvent, SqlAuditLog, chain_hash
from image_store.state.db import SqliteStateDb


@pytest.fixture
def region(tmp_path: Path) -> Iterator[Path]:
    assert main(["init", "--data", str(tmp_path)]) == 0
    yield tmp_path


def _log(data: Path) -> SqlAuditLog:
    """The log as the stack opens it: in the index's database, with the region's audit key."""
    key = (data / "secrets" / "audit.key").read_bytes()
    return SqlAuditLog(SqliteStateDb(data / "index.sqlite"), head_key=key)


def _append(data: Path, n: int, start: int = 0) -> None:
    log = _log(data)
    for i in range(start, start + n):
        log.append(AuditEvent(time.time(), "a", "H1", "admin", "GET", f"/x/{i}", 200, "::1"))
    log.close()


def _verify(data: Path, capsys: pytest.CaptureFixture[str]) -> tuple[int, str]:
    code = main(["audit", "verify", "--data", str(data)])
    out = capsys.readouterr()
    return code, out.out + out.err


def _sql(data: Path, statement: str, *args: object) -> None:
    with sqlite3.connect(data / "index.sqlite") as db:
        db.execute(statement, args)


def _head(data: Path) -> tuple[int, str, str]:
    with sqlite3.connect(data / "index.sqlite") as db:
        row = db.execute("SELECT seq, hash, mac FROM audit_head").fetchone()
    return int(row[0]), str(row[1]), str(row[2])


def _put_head(data: Path, head: tuple[int, str, str]) -> None:
    _sql(data, "UPDATE audit_head SET seq = ?, hash = ?, mac = ?", *head)


def test_an_untouched_log_is_intact(region: Path, capsys: pytest.CaptureFixture[str]) -> None:
    _append(region, ANCHOR_EVERY * 2 + 5)
    code, text = _verify(region, capsys)
    assert code == 0 and "intact" in text


def test_a_missing_head_fails_closed(region: Path, capsys: pytest.CaptureFixture[str]) -> None:
    _append(region, 5)
    _sql(region, "DELETE FROM audit_head")
    code, text = _verify(region, capsys)
    assert code == 1 and "head is missing" in text


def test_a_missing_audit_key_fails_closed(region: Path, capsys: pytest.CaptureFixture[str]) -> None:
    _append(region, 5)
    (region / "secrets" / "audit.key").unlink()
    code, text = _verify(region, capsys)
    assert code == 1 and "audit key" in text
    assert not (region / "secrets" / "audit.key").exists()  # verify never makes a key


def test_a_tail_cut_with_the_head_removed_is_caught(
    region: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    _append(region, 10)
    _sql(region, "DELETE FROM audit WHERE seq > 6")
    _sql(region, "DELETE FROM audit_head")  # no head: nothing vouches for the short chain
    assert _verify(region, capsys)[0] == 1


def test_a_tail_cut_is_caught_by_the_signed_head(
    region: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    _append(region, 10)
    _sql(region, "DELETE FROM audit WHERE seq > 6")
    code, text = _verify(region, capsys)
    assert code == 1 and "cut from the end" in text


def test_edited_and_deleted_records_are_caught(
    region: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    _append(region, 10)
    _sql(region, "UPDATE audit SET event = replace(event, '/x/3', '/x/9') WHERE seq = 4")
    code, text = _verify(region, capsys)
    assert code == 1 and "broken at record 4" in text
    _sql(region, "UPDATE audit SET event = replace(event, '/x/9', '/x/3') WHERE seq = 4")
    assert _verify(region, capsys)[0] == 0
    _sql(region, "DELETE FROM audit WHERE seq = 5")
    code, text = _verify(region, capsys)
    assert code == 1 and "broken at record 5" in text


def test_a_chain_recomputed_without_the_key_is_caught(
    region: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    _append(region, ANCHOR_EVERY + 10)
    with sqlite3.connect(region / "index.sqlite") as db:  # rewrite history, rehash every row
        db.execute("UPDATE audit SET event = replace(event, '\"status\":200', '\"status\":404')")
        prev = "0" * 64
        for seq, text in db.execute("SELECT seq, event FROM audit ORDER BY seq").fetchall():
            digest = chain_hash(prev, text)
            db.execute(
                "UPDATE audit SET prev_hash = ?, hash = ? WHERE seq = ?", (prev, digest, seq)
            )
            prev = digest
    code, text = _verify(region, capsys)
    assert code == 1 and "rewritten" in text


def test_a_head_rolled_back_to_an_older_signed_copy_is_caught_by_the_anchors(
    region: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    _append(region, 5)
    old_head = _head(region)  # kept by the attacker
    _append(region, ANCHOR_EVERY + 5, start=5)
    _sql(region, "DELETE FROM audit WHERE seq > 5")  # cut every later record...
    _put_head(region, old_head)  # ...and put the old head back
    code, text = _verify(region, capsys)
    assert code == 1 and "anchor" in text


def test_removed_anchors_are_caught(region: Path, capsys: pytest.CaptureFixture[str]) -> None:
    _append(region, ANCHOR_EVERY + 1)
    _sql(region, "DELETE FROM audit_anchors")
    code, text = _verify(region, capsys)
    assert code == 1 and "anchor is missing" in text


def test_a_forged_head_is_caught(region: Path, capsys: pytest.CaptureFixture[str]) -> None:
    _append(region, 6)
    _seq, _digest, mac = _head(region)
    with sqlite3.connect(region / "index.sqlite") as db:
        third = str(db.execute("SELECT hash FROM audit WHERE seq = 3").fetchone()[0])
    _put_head(region, (3, third, mac))  # an earlier record, with the newest head's signature
    code, text = _verify(region, capsys)
    assert code == 1 and "signature" in text


def test_writers_in_two_processes_keep_one_chain(
    region: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    api, gateway = _log(region), _log(region)  # as the API and the gateway open it
    for i in range(ANCHOR_EVERY + 3):
        log = api if i % 3 else gateway
        log.append(AuditEvent(time.time(), "a", "H1", "admin", "GET", f"/y/{i}", 200, "::1"))
    gateway.close()
    api.close()
    code, text = _verify(region, capsys)
    assert code == 0, text


def test_records_inserted_after_the_signed_head_are_flagged(
    region: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    _append(region, 3)
    head = _head(region)
    _append(region, 1, start=3)
    _put_head(region, head)  # the head rolled back by one record, the record left in place
    code, text = _verify(region, capsys)
    assert code == 1 and "after the signed head" in text


def test_an_old_install_s_signed_log_migrates_and_still_verifies(
    region: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A log, head and anchors written the way an embedded install kept them (audit.sqlite,
    audit.sqlite.head, audit.sqlite.anchors) move into the index's database on first open."""
    import hashlib
    import hmac
    import json

    key = (region / "secrets" / "audit.key").read_bytes()
    prev, rows, anchors = "0" * 64, [], []
    for seq in range(1, ANCHOR_EVERY + 3):
        event = AuditEvent(1.0, "a", "H1", "admin", "GET", f"/dicom-web/studies/1.2.{seq}", 200, "")
        text = json.dumps(
            dataclasses.asdict(event), sort_keys=True, separators=(",", ":"), ensure_ascii=False
        )
        prev_hash, prev = prev, chain_hash(prev, text)
        rows.append((seq, text, prev_hash, prev))
        if seq % ANCHOR_EVERY == 0:
            mac = hmac.new(key, f"anchor:{seq}:{prev}".encode(), hashlib.sha256).hexdigest()
            anchors.append(json.dumps({"seq": seq, "hash": prev, "mac": mac}))
    with sqlite3.connect(region / "audit.sqlite") as db:
        db.execute(
            "CREATE TABLE audit (seq INTEGER PRIMARY KEY, event TEXT NOT NULL, "
            "prev_hash TEXT NOT NULL, hash TEXT NOT NULL)"
        )
        db.executemany("INSERT INTO audit VALUES (?, ?, ?, ?)", rows)
    db.close()
    last = len(rows)
    head_mac = hmac.new(key, f"{last}:{prev}".encode(), hashlib.sha256).hexdigest()
    (region / "audit.sqlite.head").write_text(
        json.dumps({"seq": last, "hash": prev, "mac": head_mac})
    )
    (region / "audit.sqlite.anchors").write_text("".join(a + "\n" for a in anchors))
    code, text = _verify(region, capsys)
    assert code == 0 and f"{last} records" in text, text
    assert not (region / "audit.sqlite").exists()
    assert (region / "audit.sqlite.migrated").exists()  # kept, never read again
    log = _log(region)
    reads = log.study_reads(["1.2.5"])
    log.close()
    assert [r["study_uid"] for r in reads] == ["1.2.5"]
    _sql(region, f"DELETE FROM audit WHERE seq = {last}")
    assert _verify(region, capsys)[0] == 1


def test_verify_on_a_directory_that_is_not_a_region_refuses(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, text = _verify(tmp_path / "nowhere", capsys)
    assert code == 2 and "no CloudFilm region" in text
    assert not (tmp_path / "nowhere").exists()

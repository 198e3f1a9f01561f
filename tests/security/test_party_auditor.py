"""The auditor's party: `cloudfilm audit verify` vouches for the audit log only when it can, and
fails closed otherwise (#14 item 5). Each test is an attack by someone who can write the data
directory but does not hold the audit key."""

from __future__ import annotations

import shutil
import sqlite3
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from cloudfilm.cli import main
from image_store.audit import ANCHOR_EVERY, AuditEvent, SqliteAuditLog, chain_hash


@pytest.fixture
def region(tmp_path: Path) -> Iterator[Path]:
    assert main(["init", "--data", str(tmp_path)]) == 0
    yield tmp_path


def _log(data: Path) -> SqliteAuditLog:
    """The log as the stack opens it (with the region's audit key)."""
    key = (data / "secrets" / "audit.key").read_bytes()
    return SqliteAuditLog(data / "audit.sqlite", head_key=key)


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
    with sqlite3.connect(data / "audit.sqlite") as db:
        db.execute(statement, args)


def test_an_untouched_log_is_intact(region: Path, capsys: pytest.CaptureFixture[str]) -> None:
    _append(region, ANCHOR_EVERY * 2 + 5)
    code, text = _verify(region, capsys)
    assert code == 0 and "intact" in text


def test_a_missing_head_fails_closed(region: Path, capsys: pytest.CaptureFixture[str]) -> None:
    _append(region, 5)
    (region / "audit.sqlite.head").unlink()
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
    (region / "audit.sqlite.head").unlink()  # no head: nothing vouches for the short chain
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
    with sqlite3.connect(region / "audit.sqlite") as db:  # rewrite history, rehash every row
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
    old_head = (region / "audit.sqlite.head").read_bytes()  # kept by the attacker
    _append(region, ANCHOR_EVERY + 5, start=5)
    _sql(region, "DELETE FROM audit WHERE seq > 5")  # cut every later record...
    (region / "audit.sqlite.head").write_bytes(old_head)  # ...and put the old head back
    code, text = _verify(region, capsys)
    assert code == 1 and "anchor" in text


def test_a_removed_anchors_file_is_caught(region: Path, capsys: pytest.CaptureFixture[str]) -> None:
    _append(region, ANCHOR_EVERY + 1)
    (region / "audit.sqlite.anchors").unlink()
    code, text = _verify(region, capsys)
    assert code == 1 and "anchor is missing" in text


def test_a_forged_head_is_caught(region: Path, capsys: pytest.CaptureFixture[str]) -> None:
    _append(region, 6)
    head = region / "audit.sqlite.head"
    head.write_text(head.read_text().replace('"seq": 6', '"seq": 3'))
    code, text = _verify(region, capsys)
    assert code == 1 and "signature" in text


def test_writers_in_two_processes_keep_one_monotonic_head(
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


def test_records_after_a_crash_before_the_head_are_flagged_then_sealed_by_the_next_append(
    region: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    _append(region, 3)
    saved = region / "head.saved"
    shutil.copy(region / "audit.sqlite.head", saved)
    _append(region, 1, start=3)
    shutil.copy(saved, region / "audit.sqlite.head")  # as if the process died before the head
    code, text = _verify(region, capsys)
    assert code == 1 and "after the signed head" in text
    _append(region, 1, start=4)
    assert _verify(region, capsys)[0] == 0


def test_verify_on_a_directory_that_is_not_a_region_refuses(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, text = _verify(tmp_path / "nowhere", capsys)
    assert code == 2 and "no CloudFilm region" in text
    assert not (tmp_path / "nowhere").exists()

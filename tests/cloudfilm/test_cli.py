from __future__ import annotations

from pathlib import Path

import pytest

from cloudfilm.cli import main
from cloudfilm.synth import synthesize_study


def _region_with_user(data: Path, subject: str = "op", role: str = "admin") -> list[str]:
    """``init`` a region in ``data`` with hospital H1 and ``subject`` registered there as
    ``role``; returns the token command for that user."""
    assert main(["init", "--data", str(data)]) == 0
    assert main(["hospitals", "add", "H1", "--name", "City Hospital", "--data", str(data)]) == 0
    assert main(["users", "add", subject, "--hospital", "H1", "--role", role,
                 "--data", str(data)]) == 0  # fmt: skip
    return ["token", "--data", str(data), "--hospital", "H1", "--role", role, "--subject", subject]


def test_token_command_prints_a_token_the_api_accepts(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from viewer_api.auth import TokenSigner, load_or_create_secret

    token_cmd = _region_with_user(tmp_path)
    capsys.readouterr()
    assert main(token_cmd) == 0
    token = capsys.readouterr().out.strip()
    signer = TokenSigner(load_or_create_secret(tmp_path / "secrets" / "api.key"))
    principal = signer.verify(token)
    assert (principal.hospital, principal.role) == ("H1", "admin")


def test_token_with_a_bad_hospital_is_a_cli_error(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["init", "--data", str(tmp_path)]) == 0
    code = main(["token", "--data", str(tmp_path), "--hospital", "../x", "--role", "admin",
                 "--subject", "op"])  # fmt: skip
    assert code == 2
    assert "hospital id" in capsys.readouterr().err


def test_synth_command_writes_files(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["synth", str(tmp_path), "--modality", "MR", "--images", "3", "--seed", "2"]) == 0
    assert len(list(tmp_path.glob("*.dcm"))) == 3
    assert "wrote 3 files" in capsys.readouterr().out


def test_synth_bad_count_is_a_cli_error(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["synth", str(tmp_path), "--images", "0"]) == 2
    assert "images" in capsys.readouterr().err


def test_serve_with_a_bad_address_is_a_cli_error(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["serve", "--http", "nowhere"]) == 2
    assert "--http must be HOST:PORT" in capsys.readouterr().err


def test_audit_verify_and_export(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    import sqlite3
    import time

    from image_store.audit import AuditEvent, SqlAuditLog
    from image_store.state.db import SqliteStateDb

    assert main(["init", "--data", str(tmp_path)]) == 0
    key = (tmp_path / "secrets" / "audit.key").read_bytes()
    log = SqlAuditLog(SqliteStateDb(tmp_path / "index.sqlite"), head_key=key)
    for i in range(3):
        log.append(AuditEvent(time.time(), "a", "H1", "admin", "GET", f"/x/{i}", 200, "127.0.0.1"))
    log.close()
    assert main(["audit", "verify", "--data", str(tmp_path)]) == 0
    assert "intact" in capsys.readouterr().out
    assert main(["audit", "export", "--data", str(tmp_path)]) == 0
    assert len(capsys.readouterr().out.strip().splitlines()) == 3
    with sqlite3.connect(tmp_path / "index.sqlite") as db:
        db.execute("DELETE FROM audit WHERE seq = 2")
    assert main(["audit", "verify", "--data", str(tmp_path)]) == 1
    assert "broken at record 2" in capsys.readouterr().err


def test_store_scrub_reports_missing_and_corrupt_objects(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from image_store.index.sqlite import SqliteIndex
    from image_store.ingest import LocalIngest
    from image_store.objects.filesystem import FilesystemObjectStore
    from image_store.records import InstanceQuery

    paths = synthesize_study(tmp_path / "s", modality="MR", images=3, seed=2)
    assert main(["init", "--data", str(tmp_path)]) == 0
    index = SqliteIndex(tmp_path / "index.sqlite")
    LocalIngest(FilesystemObjectStore(tmp_path / "objects"), index).ingest(
        "HOSP1", [p.read_bytes() for p in paths]
    )
    keys = [i.object_key for i in index.find_instances(InstanceQuery(), limit=10)]
    index.close()
    assert main(["store", "scrub", "--data", str(tmp_path)]) == 0
    assert "3 objects" in capsys.readouterr().out
    (tmp_path / "objects" / keys[0]).unlink()
    damaged = tmp_path / "objects" / keys[1]
    data = bytearray(damaged.read_bytes())
    data[-1] ^= 0xFF
    damaged.write_bytes(bytes(data))
    assert main(["store", "scrub", "--data", str(tmp_path)]) == 1
    out = capsys.readouterr().out
    assert f"missing  {keys[0]}" in out and f"corrupt  {keys[1]}" in out


def test_keys_commands_rotate_retire_and_revoke(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from image_store.state.revocations import SqlRevocations
    from viewer_api.auth import TokenSigner, load_or_create_secret, retired_keys
    from viewer_api.errors import Unauthorized

    token_cmd = _region_with_user(tmp_path)
    capsys.readouterr()
    assert main(token_cmd) == 0
    token = capsys.readouterr().out.strip()
    assert main(["keys", "rotate", "--data", str(tmp_path)]) == 0
    key = tmp_path / "secrets" / "api.key"

    def stack_signer() -> TokenSigner:  # as the stack builds it
        return TokenSigner(
            load_or_create_secret(key),
            retired_keys(key),
            revoked=SqlRevocations(tmp_path / "index.sqlite"),
        )

    assert stack_signer().verify(token).role == "admin"
    assert main(["keys", "revoke-token", "--data", str(tmp_path), "--token", token]) == 0
    with pytest.raises(Unauthorized, match="revoked"):
        stack_signer().verify(token)
    assert main(["keys", "revoke-token", "--data", str(tmp_path), "--token", "cf1.x.y"]) == 2
    assert main(["keys", "retire", "--data", str(tmp_path), "--older-than-days", "0"]) == 0
    assert "1 retired key(s) deleted" in capsys.readouterr().out


def test_users_and_hospitals_commands_and_tokens_for_registered_users(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    data = str(tmp_path)
    assert main(["init", "--data", data]) == 0
    assert main(["hospitals", "add", "H1", "--name", "City Hospital", "--data", data]) == 0
    assert main(["users", "add", "dr.wang", "--hospital", "H1", "--role", "clinician",
                 "--data", data]) == 0  # fmt: skip
    assert main(["users", "add", "dr.wang", "--hospital", "H1", "--role", "clinician",
                 "--data", data]) == 2  # fmt: skip
    token = ["token", "--data", data, "--hospital", "H1", "--subject", "dr.wang"]
    assert main([*token, "--role", "clinician"]) == 0
    assert main([*token, "--role", "admin"]) == 2  # not what dr.wang is registered as
    assert main(["users", "disable", "dr.wang", "--data", data]) == 0
    assert main([*token, "--role", "clinician"]) == 2
    assert main(["users", "list", "--data", data]) == 0
    assert "dr.wang\tH1\tclinician\toff" in capsys.readouterr().out


def test_audit_verify_detects_records_cut_from_the_end(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    import sqlite3
    import time

    from image_store.audit import AuditEvent, SqlAuditLog
    from image_store.state.db import SqliteStateDb
    from viewer_api.auth import load_or_create_secret

    assert main(["init", "--data", str(tmp_path)]) == 0
    key = load_or_create_secret(tmp_path / "secrets" / "audit.key")  # as the stack makes it
    log = SqlAuditLog(SqliteStateDb(tmp_path / "index.sqlite"), head_key=key)
    for i in range(4):
        log.append(AuditEvent(time.time(), "a", "H1", "admin", "GET", f"/x/{i}", 200, "127.0.0.1"))
    log.close()
    assert main(["audit", "verify", "--data", str(tmp_path)]) == 0
    with sqlite3.connect(tmp_path / "index.sqlite") as db:
        db.execute("DELETE FROM audit WHERE seq >= 3")  # the chain left is intact, but short
    assert main(["audit", "verify", "--data", str(tmp_path)]) == 1
    assert "broken at record 4" in capsys.readouterr().err
    with sqlite3.connect(tmp_path / "index.sqlite") as db:
        db.execute("UPDATE audit_head SET seq = 2")  # a forged head
    assert main(["audit", "verify", "--data", str(tmp_path)]) == 1

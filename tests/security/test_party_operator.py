"""The regional operator's party: who may hold a token, the signing keys, the registry (#14
item 7), and commands that must not make a region where none is."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web

from cloudfilm.cli import main
from cloudfilm.config import load_settings
from cloudfilm.stores import open_state
from image_store.index.sqlite import SqliteIndex
from image_store.objects.filesystem import FilesystemObjectStore
from viewer_api.app import ViewerSettings, create_app
from viewer_api.auth import ROLES, TokenSigner


def _cli(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str]:
    code = main(list(args))
    out = capsys.readouterr()
    return code, out.out + out.err


@pytest.fixture
def region(tmp_path: Path) -> Path:
    data = tmp_path / "region"
    assert main(["init", "--data", str(data)]) == 0
    assert main(["hospitals", "add", "H1", "--name", "City", "--data", str(data)]) == 0
    assert main(["hospitals", "add", "H2", "--name", "County", "--data", str(data)]) == 0
    return data


def _token_cmd(
    data: Path, subject: str, hospital: str = "H1", role: str = "clinician"
) -> list[str]:
    return ["token", "--data", str(data), "--hospital", hospital, "--role", role,
            "--subject", subject]  # fmt: skip


def test_the_cli_registers_and_issues_tokens_for_every_documented_role(
    region: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    for role in ROLES:  # admin, radiologist, clinician, auditor
        subject = f"u.{role}"
        code, text = _cli(capsys, "users", "add", subject, "--hospital", "H1", "--role", role,
                          "--data", str(region))  # fmt: skip
        assert code == 0, text
        code, text = _cli(capsys, *_token_cmd(region, subject, role=role))
        assert code == 0 and text.startswith("cf1."), text


def test_no_token_for_an_unregistered_empty_or_missing_subject(
    region: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, text = _cli(capsys, *_token_cmd(region, "stranger"))
    assert code == 2 and "not registered" in text and "cf1." not in text
    code, text = _cli(capsys, *_token_cmd(region, ""))
    assert code == 2 and "names no user" in text
    code, text = _cli(capsys, *_token_cmd(region, "  "))
    assert code == 2 and "cf1." not in text
    with pytest.raises(SystemExit) as exited:  # --subject is required
        main(["token", "--data", str(region), "--hospital", "H1", "--role", "clinician"])
    assert exited.value.code == 2
    assert "--subject" in capsys.readouterr().err


def test_no_token_for_another_hospital_or_role_than_registered_or_a_disabled_user(
    region: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["users", "add", "dr.li", "--hospital", "H1", "--role", "radiologist",
                 "--data", str(region)]) == 0  # fmt: skip
    for hospital, role in (("H2", "radiologist"), ("H1", "admin"), ("H1", "clinician")):
        code, text = _cli(capsys, *_token_cmd(region, "dr.li", hospital, role))
        assert code == 2 and "registered as radiologist at H1" in text
    assert _cli(capsys, *_token_cmd(region, "dr.li", "H1", "radiologist"))[0] == 0
    assert main(["users", "disable", "dr.li", "--data", str(region)]) == 0
    code, text = _cli(capsys, *_token_cmd(region, "dr.li", "H1", "radiologist"))
    assert code == 2 and "disabled" in text


async def _app(
    data: Path, aiohttp_client: Callable[[web.Application], Any]
) -> tuple[Any, TokenSigner, SqliteIndex]:
    """The API over the region in ``data``, its signer built as the stack builds it."""
    state = open_state(load_settings({"data_dir": str(data)}), audit_key=None)
    signer = TokenSigner.from_files(data / "secrets" / "api.key", revoked=state.revocations)
    index = SqliteIndex(data / "index.sqlite")
    app = create_app(
        ViewerSettings(public_base_url="http://x"),
        FilesystemObjectStore(data / "objects"),
        index,
        state.shares,
        state.audit,
        signer,
        consents=state.consents,
        reports=state.reports,
        registry=state.registry,
    )
    return await aiohttp_client(app), signer, index


def _bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


async def test_the_api_refuses_tokens_of_unregistered_or_empty_subjects(
    region: Path, aiohttp_client: Callable[[web.Application], Any]
) -> None:
    client, signer, index = await _app(region, aiohttp_client)
    assert main(["users", "add", "dr.wu", "--hospital", "H1", "--role", "clinician",
                 "--data", str(region)]) == 0  # fmt: skip
    url = "/dicom-web/studies"
    ok = await client.get(url, headers=_bearer(signer.issue("H1", "clinician", subject="dr.wu")))
    assert ok.status == 200
    # validly signed (say, minted with a leaked or old copy of the key), but for nobody known
    for subject in ("", "ghost"):
        r = await client.get(url, headers=_bearer(signer.issue("H1", "admin", subject=subject)))
        assert r.status == 401
    index.close()


async def test_keys_rotate_and_retire_take_effect_in_a_running_api(
    region: Path,
    aiohttp_client: Callable[[web.Application], Any],
    capsys: pytest.CaptureFixture[str],
) -> None:
    client, _, index = await _app(region, aiohttp_client)
    assert main(["users", "add", "op", "--hospital", "H1", "--role", "admin",
                 "--data", str(region)]) == 0  # fmt: skip
    capsys.readouterr()
    assert main(_token_cmd(region, "op", role="admin")) == 0
    old = capsys.readouterr().out.strip()
    url = "/api/admin/users"
    assert (await client.get(url, headers=_bearer(old))).status == 200
    assert main(["keys", "rotate", "--data", str(region)]) == 0
    capsys.readouterr()
    assert main(_token_cmd(region, "op", role="admin")) == 0
    new = capsys.readouterr().out.strip()
    assert (await client.get(url, headers=_bearer(new))).status == 200  # signed with the new key
    assert (await client.get(url, headers=_bearer(old))).status == 200  # retired, not yet gone
    assert main(["keys", "retire", "--data", str(region), "--older-than-days", "0"]) == 0
    r = await client.get(url, headers=_bearer(old))
    assert r.status == 401  # no restart
    assert (await client.get(url, headers=_bearer(new))).status == 200
    index.close()


@pytest.mark.parametrize(
    "command",
    [
        ["token", "--hospital", "H1", "--role", "admin", "--subject", "op"],
        ["keys", "rotate"],
        ["keys", "retire", "--older-than-days", "1"],
        ["keys", "revoke-token", "--token", "cf1.x.y"],
        ["users", "add", "op", "--hospital", "H1", "--role", "admin"],
        ["users", "list"],
        ["users", "disable", "op"],
        ["hospitals", "add", "H1", "--name", "City"],
        ["hospitals", "list"],
        ["audit", "verify"],
        ["audit", "export"],
        ["store", "scrub"],
    ],
)
def test_commands_that_read_a_region_refuse_a_missing_one_and_create_nothing(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], command: list[str]
) -> None:
    for data in (tmp_path / "missing", tmp_path / "empty"):
        (tmp_path / "empty").mkdir(exist_ok=True)
        code, text = _cli(capsys, *command, "--data", str(data))
        assert code == 2 and "no CloudFilm region" in text, text
    assert not (tmp_path / "missing").exists()
    assert list((tmp_path / "empty").iterdir()) == []


def test_init_makes_a_region_the_other_commands_accept(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    data = tmp_path / "new"
    assert main(["init", "--data", str(data)]) == 0
    key = (data / "secrets" / "api.key").read_bytes()
    assert (data / "secrets" / "audit.key").is_file()
    assert main(["users", "list", "--data", str(data)]) == 0
    assert main(["init", "--data", str(data)]) == 0  # again: keeps the keys
    assert (data / "secrets" / "api.key").read_bytes() == key

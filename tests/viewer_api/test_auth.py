"""Bearer tokens, share-link signatures and the signing secret."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import stat
import time
from pathlib import Path

import pytest

from image_store.state.revocations import SqlRevocations
from viewer_api.auth import (
    Principal,
    TokenSigner,
    b64d,
    b64e,
    load_or_create_secret,
    retire_keys,
    retired_keys,
    rotate_key,
)
from viewer_api.errors import Unauthorized

SECRET = bytes(range(32))


def test_the_secret_is_created_private_and_reused(tmp_path: Path) -> None:
    path = tmp_path / "keys" / "secret.key"
    first = load_or_create_secret(path)
    assert len(first) == 32
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert load_or_create_secret(path) == first
    assert [p.name for p in path.parent.iterdir()] == ["secret.key"]  # no temporary left
    other = load_or_create_secret(tmp_path / "other.key")
    assert other != first


def test_a_secret_file_of_the_wrong_size_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "secret.key"
    path.write_bytes(b"short")
    with pytest.raises(ValueError, match="32 bytes"):
        load_or_create_secret(path)


def test_a_token_round_trips_to_its_principal() -> None:
    signer = TokenSigner(SECRET)
    before = time.time()
    token = signer.issue("H1", "clinician", subject="dr-wu", ttl_s=600)
    prefix, body, sig = token.split(".")
    assert prefix == "cf1"
    payload = json.loads(b64d(body))
    assert payload["h"] == "H1" and payload["r"] == "clinician" and payload["s"] == "dr-wu"
    assert isinstance(payload["jti"], str) and payload["jti"]
    assert len(b64d(sig)) == 32  # a full HMAC-SHA256
    p = signer.verify(token)
    assert (p.hospital, p.role, p.subject) == ("H1", "clinician", "dr-wu")
    assert before + 600 - 1 <= p.expires_at <= time.time() + 600
    assert signer.issue("H1", "clinician") != signer.issue("H1", "clinician")  # fresh jti


def test_clinicians_see_their_hospital_and_admins_every_hospital() -> None:
    clinician = Principal("H1", "clinician", "", 0.0)
    admin = Principal("H9", "admin", "", 0.0)
    assert clinician.visible_hospitals() == frozenset({"H1"})
    assert admin.visible_hospitals() is None


def test_a_token_is_refused_once_expired() -> None:
    signer = TokenSigner(SECRET)
    token = signer.issue("H1", "admin", ttl_s=60)
    assert signer.verify(token, now=time.time() + 30).role == "admin"
    with pytest.raises(Unauthorized, match="expired"):
        signer.verify(token, now=time.time() + 120)


def _forge(token: str, payload: dict[str, object]) -> str:
    """Another payload under the original signature."""
    return f"cf1.{b64e(json.dumps(payload).encode())}.{token.split('.')[2]}"


@pytest.mark.parametrize(
    "mangle",
    [
        lambda t: "",
        lambda t: "cf1",
        lambda t: t + ".x",
        lambda t: "cf2" + t[3:],
        lambda t: t[:-2] + ("AA" if not t.endswith("AA") else "BB"),
        lambda t: t.split(".")[0] + ".%%%." + t.split(".")[2],
        lambda t: t.split(".")[0] + "." + t.split(".")[1] + ".é",
        lambda t: "cf1." + "A" * 3000 + ".AAAA",
        lambda t: _forge(t, {"h": "H1", "r": "admin", "exp": 2**40}),
    ],
)
def test_malformed_or_tampered_tokens_are_unauthorized(mangle: object) -> None:
    signer = TokenSigner(SECRET)
    token = signer.issue("H1", "clinician")
    assert callable(mangle)
    with pytest.raises(Unauthorized):
        signer.verify(mangle(token))


def test_a_token_of_another_key_is_unauthorized() -> None:
    token = TokenSigner(b"x" * 32).issue("H1", "admin")
    with pytest.raises(Unauthorized):
        TokenSigner(SECRET).verify(token)


def test_issue_validates_its_arguments() -> None:
    signer = TokenSigner(SECRET)
    with pytest.raises(ValueError):
        signer.issue("H1", "root")  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        signer.issue("../H1", "admin")
    with pytest.raises(ValueError):
        signer.issue("H1", "admin", ttl_s=0)
    with pytest.raises(ValueError):
        TokenSigner(b"short")


def test_share_tokens_are_an_id_and_a_truncated_hmac_of_it() -> None:
    signer = TokenSigner(SECRET)
    link_id = b64e(bytes(16))
    token = signer.share_token(link_id)
    mac = hmac.new(SECRET, b"share:" + link_id.encode(), hashlib.sha256).digest()[:16]
    assert token == f"{link_id}.{base64.urlsafe_b64encode(mac).rstrip(b'=').decode()}"
    assert signer.share_id(token) == link_id


@pytest.mark.parametrize(
    "token",
    ["", "abc", "a.b.c", ".sig", "x" * 200 + ".y", "AAAAAAAAAAAAAAAAAAAAAA.é", "é.é"],
)
def test_share_tokens_that_are_not_ours_have_no_id(token: str) -> None:
    assert TokenSigner(SECRET).share_id(token) is None


def test_a_share_token_of_another_key_has_no_id() -> None:
    token = TokenSigner(b"x" * 32).share_token("AAAAAAAAAAAAAAAAAAAAAA")
    assert TokenSigner(SECRET).share_id(token) is None


def test_after_a_rotation_old_tokens_and_links_still_verify_until_the_key_is_retired(
    tmp_path: Path,
) -> None:
    path = tmp_path / "secrets" / "api.key"
    old = TokenSigner(load_or_create_secret(path))
    token, link = old.issue("H1", "clinician"), old.share_token("AAAAAAAAAAAAAAAAAAAAAA")
    rotate_key(path)
    new = TokenSigner(load_or_create_secret(path), retired_keys(path))
    assert new.verify(token).hospital == "H1"
    assert new.share_id(link) == "AAAAAAAAAAAAAAAAAAAAAA"
    assert TokenSigner(load_or_create_secret(path)).share_id(link) is None  # new key alone
    assert retire_keys(path, older_than_s=-1) == 1
    after = TokenSigner(load_or_create_secret(path), retired_keys(path))
    with pytest.raises(Unauthorized):
        after.verify(token)


def test_a_revoked_token_is_refused_before_it_expires(tmp_path: Path) -> None:
    revoked = SqlRevocations(tmp_path / "index.sqlite")
    signer = TokenSigner(SECRET, revoked=revoked)
    token, other = signer.issue("H1", "clinician"), signer.issue("H1", "clinician")
    jti, exp = signer.token_id(token)
    revoked.revoke(jti, exp)
    with pytest.raises(Unauthorized, match="revoked"):
        signer.verify(token)
    assert signer.verify(other).hospital == "H1"
    with pytest.raises(ValueError):
        revoked.revoke("../../etc", exp)


def test_a_signer_from_files_follows_rotation_and_retirement_without_a_restart(
    tmp_path: Path,
) -> None:
    from viewer_api.auth import load_or_create_secret, retire_keys, rotate_key

    key = tmp_path / "secrets" / "api.key"
    load_or_create_secret(key)
    running = TokenSigner.from_files(key)
    old = running.issue("H1", "clinician", subject="dr-wu")
    rotate_key(key)
    new = TokenSigner.from_files(key).issue("H1", "clinician", subject="dr-wu")
    assert running.verify(new).subject == "dr-wu"  # the new key, seen without a restart
    assert running.verify(old).subject == "dr-wu"  # retired, still verifies
    assert TokenSigner.from_files(key).verify(running.issue("H1", "admin")).role == "admin"
    retire_keys(key, older_than_s=-1)
    with pytest.raises(Unauthorized):
        running.verify(old)
    key.unlink()  # as in the middle of a rotation: the last keys stay, none is made
    assert running.verify(new).subject == "dr-wu"
    assert not key.exists()

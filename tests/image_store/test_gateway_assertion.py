"""The rules a gateway's client assertion must meet (pure: signatures and claims)."""

from __future__ import annotations

import json

import pytest

from image_store.gateway_assertion import (
    MAX_LIFETIME_S,
    CredentialFile,
    CredentialFileError,
    InvalidAssertion,
    assertion_key_id,
    b64d,
    b64e,
    check_claims,
    credential_file_text,
    new_key_pair,
    parse_credential_file,
    private_key_pem,
    sign_assertion,
    verify_assertion,
)

AUD = "https://cloud.example/api/gateway/token"
NOW = 1_800_000_000.0


def test_a_signed_assertion_verifies_with_its_public_key() -> None:
    key, public = new_key_pair()
    text = sign_assertion(key, "gw-1", AUD, now=NOW)
    assert assertion_key_id(text) == "gw-1"
    claims = verify_assertion(text, public, audience=AUD, now=NOW + 10)
    assert claims.credential_id == "gw-1" and claims.expires_at - claims.issued_at <= 300


def test_an_assertion_signed_by_another_key_is_refused() -> None:
    key, _ = new_key_pair()
    _, other_public = new_key_pair()
    with pytest.raises(InvalidAssertion, match="signature"):
        verify_assertion(
            sign_assertion(key, "gw-1", AUD, now=NOW), other_public, audience=AUD, now=NOW
        )


def test_edited_claims_break_the_signature() -> None:
    key, public = new_key_pair()
    h, c, s = sign_assertion(key, "gw-1", AUD, now=NOW).split(".")
    claims = json.loads(b64d(c))
    claims["exp"] += 3600
    edited = f"{h}.{b64e(json.dumps(claims).encode())}.{s}"
    with pytest.raises(InvalidAssertion, match="signature"):
        verify_assertion(edited, public, audience=AUD, now=NOW)


def test_an_expired_assertion_is_refused() -> None:
    key, public = new_key_pair()
    text = sign_assertion(key, "gw-1", AUD, now=NOW, lifetime_s=60)
    with pytest.raises(InvalidAssertion, match="expired"):
        verify_assertion(text, public, audience=AUD, now=NOW + 61)


def test_an_assertion_for_another_audience_is_refused() -> None:
    key, public = new_key_pair()
    text = sign_assertion(key, "gw-1", "https://evil.example/api/gateway/token", now=NOW)
    with pytest.raises(InvalidAssertion, match="not meant for"):
        verify_assertion(text, public, audience=AUD, now=NOW)


def _claims(**changes: object) -> dict[str, object]:
    base: dict[str, object] = {
        "iss": "gw-1",
        "sub": "gw-1",
        "aud": AUD,
        "iat": int(NOW),
        "exp": int(NOW) + 60,
        "jti": "a" * 32,
    }
    base.update(changes)
    return base


@pytest.mark.parametrize(
    ("changes", "match"),
    [
        ({"exp": int(NOW) + MAX_LIFETIME_S + 1}, "at most"),
        ({"iat": int(NOW) + 3600, "exp": int(NOW) + 3660}, "future"),
        ({"iss": "gw-2"}, "iss and sub"),
        ({"jti": "short"}, "jti"),
        ({"jti": None}, "jti"),
        ({"exp": "soon"}, "integers"),
        ({"exp": True}, "integers"),
    ],
)
def test_claims_that_break_a_rule_are_refused(changes: dict[str, object], match: str) -> None:
    with pytest.raises(InvalidAssertion, match=match):
        check_claims(_claims(**changes), "gw-1", audience=AUD, now=NOW)


def test_an_audience_list_naming_the_token_url_is_accepted() -> None:
    claims = check_claims(_claims(aud=["x", AUD]), "gw-1", audience=AUD, now=NOW)
    assert claims.audience == AUD


def test_an_unsigned_or_hmac_assertion_is_refused_before_any_key_lookup() -> None:
    header = b64e(json.dumps({"alg": "none", "kid": "gw-1"}).encode())
    with pytest.raises(InvalidAssertion, match="EdDSA"):
        assertion_key_id(f"{header}.{b64e(b'{}')}.")
    with pytest.raises(InvalidAssertion, match="malformed"):
        assertion_key_id("not.an.assertion!")


def test_a_credential_file_round_trips_and_a_damaged_one_is_refused() -> None:
    key, _ = new_key_pair()
    cred = CredentialFile("gw-1", "H1", private_key_pem(key), "https://cloud.example")
    assert parse_credential_file(credential_file_text(cred)) == cred
    with pytest.raises(CredentialFileError):
        parse_credential_file(credential_file_text(cred).replace("BEGIN", "BEGUN"))
    with pytest.raises(CredentialFileError):
        parse_credential_file(credential_file_text(cred).replace('"H1"', '"../H1"'))


def test_any_of_the_clouds_token_urls_is_an_accepted_audience() -> None:
    key, public = new_key_pair()
    local = "http://127.0.0.1:8080/api/gateway/token"
    text = sign_assertion(key, "gw-1", local, now=NOW)
    claims = verify_assertion(text, public, audience=frozenset({AUD, local}), now=NOW)
    assert claims.audience == local
    with pytest.raises(InvalidAssertion, match="not meant for"):
        verify_assertion(text, public, audience=frozenset({AUD}), now=NOW)

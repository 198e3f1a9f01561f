"""Gateway client assertions: the signed, short-lived statement a hospital gateway trades for
a bearer token at the regional cloud (RFC 7523 ``private_key_jwt`` client authentication).

An assertion is a JWS in compact form, ``base64url(header).base64url(claims).base64url(sig)``,
header ``{"alg": "EdDSA", "typ": "JWT", "kid": credential id}``, claims ``iss`` = ``sub`` =
the credential id, ``aud`` = the cloud's token URL, ``iat``, ``exp`` (at most
MAX_LIFETIME_S after ``iat``) and a random ``jti`` the cloud accepts once. The signature is
Ed25519 over ``header.claims``; the cloud holds only the public key, the gateway only the
private one (in its credential file, see :func:`credential_file_text`).

Pure functions apart from the ``cryptography`` calls: no clock (callers pass ``now``), no files.
"""

from __future__ import annotations

import base64
import binascii
import json
import re
import secrets
from dataclasses import dataclass
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from image_store.errors import ImageStoreError
from image_store.keys import check_hospital

TOKEN_PATH = "/api/gateway/token"  # noqa: S105 (a URL path)
"""Where the cloud exchanges assertions for tokens (the audience is the base URL + this)."""
BATCH_PATH = "/api/ingest/batch"
"""Where gateways deliver batches."""
ALG = "EdDSA"
MAX_LIFETIME_S = 300
"""Longest an assertion may live (``exp - iat``)."""
CLOCK_SKEW_S = 60
"""How far the gateway's clock may run ahead of the cloud's (``iat`` in the future)."""
MAX_ASSERTION = 4096
"""Longest assertion text accepted (characters)."""
CREDENTIAL_FORMAT = "cloudfilm-gateway-credential/1"
_ID = re.compile(r"[A-Za-z0-9_-]{1,64}")
_JTI = re.compile(r"[A-Za-z0-9_-]{16,128}")


class InvalidAssertion(ImageStoreError, ValueError):
    """An assertion that is malformed, wrongly signed or whose claims do not hold.

    ``reason`` is safe to show to the caller."""


class CredentialFileError(ImageStoreError, ValueError):
    """A gateway credential file that cannot be read as one."""


@dataclass(frozen=True, slots=True)
class AssertionClaims:
    credential_id: str
    audience: str
    issued_at: int
    expires_at: int
    jti: str


@dataclass(frozen=True, slots=True)
class CredentialFile:
    """What a gateway's credential file holds: who it is and its private key (PEM, PKCS#8)."""

    credential_id: str
    hospital: str
    private_key_pem: str
    cloud_url: str = ""


def b64e(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def b64d(text: str) -> bytes:
    if not re.fullmatch(r"[A-Za-z0-9_-]*", text):
        raise ValueError("not base64url")
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def check_credential_id(credential_id: str) -> str:
    if not _ID.fullmatch(credential_id):
        raise InvalidAssertion(
            f"a credential id is 1-64 letters, digits, _ and -, got {credential_id[:80]!r}"
        )
    return credential_id


def new_credential_id() -> str:
    return "gw-" + secrets.token_hex(8)


def new_key_pair() -> tuple[Ed25519PrivateKey, bytes]:
    """A fresh private key and its raw 32-byte public key."""
    key = Ed25519PrivateKey.generate()
    return key, public_key_bytes(key)


def public_key_bytes(key: Ed25519PrivateKey) -> bytes:
    return key.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)


def private_key_pem(key: Ed25519PrivateKey) -> str:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    ).decode("ascii")


def load_private_key(pem: str) -> Ed25519PrivateKey:
    try:
        key = serialization.load_pem_private_key(pem.encode("ascii"), password=None)
    except (ValueError, TypeError, UnicodeEncodeError) as exc:
        raise CredentialFileError(f"the private key cannot be read: {exc}") from exc
    if not isinstance(key, Ed25519PrivateKey):
        raise CredentialFileError("the private key is not an Ed25519 key")
    return key


def sign_assertion(
    key: Ed25519PrivateKey, credential_id: str, audience: str, *, now: float, lifetime_s: int = 120
) -> str:
    """A fresh assertion for ``credential_id`` towards ``audience`` (the token URL)."""
    check_credential_id(credential_id)
    if not 1 <= lifetime_s <= MAX_LIFETIME_S:
        raise ValueError(f"lifetime_s must be 1..{MAX_LIFETIME_S}, got {lifetime_s}")
    header = {"alg": ALG, "typ": "JWT", "kid": credential_id}
    iat = int(now)
    claims = {
        "iss": credential_id,
        "sub": credential_id,
        "aud": audience,
        "iat": iat,
        "exp": iat + lifetime_s,
        "jti": secrets.token_urlsafe(24),
    }
    signing_input = f"{_json_b64(header)}.{_json_b64(claims)}"
    return f"{signing_input}.{b64e(key.sign(signing_input.encode('ascii')))}"


def _json_b64(obj: dict[str, Any]) -> str:
    return b64e(json.dumps(obj, separators=(",", ":")).encode())


def assertion_key_id(assertion: str) -> str:
    """The credential id an assertion names (unverified: only to find its public key)."""
    header, _, _ = _split(assertion)
    if header.get("alg") != ALG:
        raise InvalidAssertion(f"the assertion must be signed with {ALG}")
    kid = header.get("kid")
    if not isinstance(kid, str):
        raise InvalidAssertion("the assertion names no credential (kid)")
    return check_credential_id(kid)


def _split(assertion: str) -> tuple[dict[str, Any], dict[str, Any], bytes]:
    if len(assertion) > MAX_ASSERTION or assertion.count(".") != 2:
        raise InvalidAssertion("malformed assertion")
    h, c, s = assertion.split(".")
    try:
        header, claims, sig = json.loads(b64d(h)), json.loads(b64d(c)), b64d(s)
    except (ValueError, binascii.Error, UnicodeDecodeError) as exc:
        raise InvalidAssertion("malformed assertion") from exc
    if not isinstance(header, dict) or not isinstance(claims, dict):
        raise InvalidAssertion("malformed assertion")
    return header, claims, sig


def verify_assertion(
    assertion: str, public_key: bytes, *, audience: str | frozenset[str], now: float
) -> AssertionClaims:
    """The claims of an assertion signed by the holder of ``public_key`` (raw Ed25519) for
    ``audience`` (one token URL, or any of a set), live at ``now``; InvalidAssertion naming
    the first rule it breaks."""
    _, claims, sig = _split(assertion)
    kid = assertion_key_id(assertion)
    signing_input = assertion.rsplit(".", 1)[0].encode("ascii")
    try:
        Ed25519PublicKey.from_public_bytes(public_key).verify(sig, signing_input)
    except (InvalidSignature, ValueError) as exc:
        raise InvalidAssertion("the assertion's signature does not verify") from exc
    return check_claims(claims, kid, audience=audience, now=now)


def check_claims(
    claims: dict[str, Any], credential_id: str, *, audience: str | frozenset[str], now: float
) -> AssertionClaims:
    """The rules an assertion's claims must meet (the signature already checked)."""
    if claims.get("iss") != credential_id or claims.get("sub") != credential_id:
        raise InvalidAssertion("the assertion's iss and sub must be its credential id")
    accepted = frozenset({audience}) if isinstance(audience, str) else audience
    aud = claims.get("aud")
    named = [a for a in (aud if isinstance(aud, list) else [aud]) if isinstance(a, str)]
    matched = next((a for a in named if a in accepted), None)
    if matched is None:
        raise InvalidAssertion(f"the assertion is not meant for {' or '.join(sorted(accepted))}")
    iat, exp = claims.get("iat"), claims.get("exp")
    if not _is_int(iat) or not _is_int(exp):
        raise InvalidAssertion("the assertion's iat and exp must be integers")
    assert isinstance(iat, int) and isinstance(exp, int)
    if exp <= iat or exp - iat > MAX_LIFETIME_S:
        raise InvalidAssertion(f"an assertion may live at most {MAX_LIFETIME_S} s")
    if exp <= now:
        raise InvalidAssertion("the assertion has expired")
    if iat > now + CLOCK_SKEW_S:
        raise InvalidAssertion("the assertion is issued in the future (check the gateway's clock)")
    jti = claims.get("jti")
    if not isinstance(jti, str) or not _JTI.fullmatch(jti):
        raise InvalidAssertion("the assertion's jti must be 16-128 base64url characters")
    return AssertionClaims(credential_id, matched, iat, exp, jti)


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def credential_file_text(cred: CredentialFile) -> str:
    """The JSON text of a credential file."""
    return (
        json.dumps(
            {
                "format": CREDENTIAL_FORMAT,
                "id": cred.credential_id,
                "hospital": cred.hospital,
                "cloud_url": cred.cloud_url,
                "private_key": cred.private_key_pem,
            },
            indent=2,
        )
        + "\n"
    )


def parse_credential_file(text: str) -> CredentialFile:
    """The credential a file's text holds; CredentialFileError naming what is wrong."""
    try:
        obj = json.loads(text)
    except ValueError as exc:
        raise CredentialFileError("a credential file is a JSON object") from exc
    if not isinstance(obj, dict) or obj.get("format") != CREDENTIAL_FORMAT:
        raise CredentialFileError(f"not a credential file (format {CREDENTIAL_FORMAT})")
    fields = {k: obj.get(k) for k in ("id", "hospital", "private_key")}
    fields["cloud_url"] = obj.get("cloud_url") or ""
    if not all(isinstance(v, str) for v in fields.values()):
        raise CredentialFileError("a credential file needs id, hospital and private_key strings")
    try:
        check_credential_id(str(fields["id"]))
        check_hospital(str(fields["hospital"]))
    except ValueError as exc:
        raise CredentialFileError(str(exc)) from exc
    cred = CredentialFile(
        str(fields["id"]),
        str(fields["hospital"]),
        str(fields["private_key"]),
        str(fields["cloud_url"]),
    )
    load_private_key(cred.private_key_pem)
    return cred

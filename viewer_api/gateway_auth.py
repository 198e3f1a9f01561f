"""Who a hospital gateway is, at the cloud: credentials issued and revoked, assertions
exchanged for short-lived bearer tokens, and those tokens checked on every ingest request.

The gateway proves itself with an Ed25519-signed assertion (image_store.gateway_assertion)
posted to ``POST /api/gateway/token`` (form fields ``grant_type=client_credentials``,
``client_assertion_type=urn:ietf:params:oauth:client-assertion-type:jwt-bearer``,
``client_assertion``, as RFC 7523 describes). The cloud checks the signature against the
registered public key, the audience (its token URL), the expiry, that the assertion id was never
used, and that the credential is not revoked, then answers an opaque bearer token (256 random
bits) good for ``token_ttl_s``, kept in the database only as its SHA-256. Every request that
presents it is one database lookup, which also sees a revocation made a moment ago by any
process (no per-process cache).

Why assertions rather than mutual TLS: they pass through TLS-terminating load balancers and a
hospital's HTTP proxy unchanged, the region keeps no CA key, and revocation is one row.
"""

from __future__ import annotations

import hashlib
import logging
import os
import re
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from image_store.fsutil import fsync_dir
from image_store.gateway_assertion import (
    CredentialFile,
    InvalidAssertion,
    assertion_key_id,
    check_credential_id,
    credential_file_text,
    new_credential_id,
    new_key_pair,
    private_key_pem,
    verify_assertion,
)
from image_store.gateway_credentials import (
    GatewayCredential,
    GatewayCredentials,
)
from image_store.state.ports import Registry
from viewer_api.errors import Forbidden, Unauthorized
from viewer_api.registry import RegistryError

logger = logging.getLogger(__name__)

TOKEN_PREFIX = "cfgw_"  # noqa: S105 (not a secret: every gateway token starts so)
ASSERTION_TYPE = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"
_TOKEN = re.compile(r"cfgw_[A-Za-z0-9_-]{43}")


@dataclass(frozen=True, slots=True)
class GatewayPrincipal:
    """A gateway holding a live token: its credential and the hospital it delivers for."""

    credential_id: str
    hospital: str
    expires_at: float

    @property
    def actor(self) -> str:
        return f"gateway:{self.hospital}:{self.credential_id}"


@dataclass(frozen=True, slots=True)
class IssuedToken:
    access_token: str
    expires_in: int
    principal: GatewayPrincipal

    def as_json(self) -> dict[str, str | int]:
        return {
            "access_token": self.access_token,
            "token_type": "Bearer",
            "expires_in": self.expires_in,
            "hospital": self.principal.hospital,
            "credential_id": self.principal.credential_id,
        }


def token_digest(token: str) -> str:
    return hashlib.sha256(token.encode("ascii")).hexdigest()


class GatewayAuth:
    """Exchanges assertions for tokens and checks tokens (blocking: call off the event loop)."""

    def __init__(
        self,
        credentials: GatewayCredentials,
        audience: str | frozenset[str],
        *,
        token_ttl_s: int = 600,
        clock: Callable[[], float] = time.time,
    ) -> None:
        if not 60 <= token_ttl_s <= 3600:
            raise ValueError(f"token_ttl_s must be 60..3600, got {token_ttl_s}")
        self.credentials = credentials
        self.audience = audience
        """The token URL(s) assertions must name (``aud``): the public base URL + TOKEN_PATH,
        and any other URL gateways reach this API by (e.g. ``http://127.0.0.1:PORT`` + TOKEN_PATH
        in the embedded stack)."""
        self.token_ttl_s = token_ttl_s
        self.clock = clock

    def exchange(self, assertion: str) -> IssuedToken:
        """A new bearer token for a valid assertion. Unauthorized for a malformed, forged,
        expired, replayed or unknown one; Forbidden for a revoked credential."""
        now = self.clock()
        try:
            cred_id = assertion_key_id(assertion)
        except InvalidAssertion as exc:
            raise Unauthorized(str(exc)) from exc
        cred = self.credentials.get(cred_id)
        if cred is None:
            raise Unauthorized(f"unknown gateway credential {cred_id}")
        try:
            claims = verify_assertion(assertion, cred.public_key, audience=self.audience, now=now)
        except InvalidAssertion as exc:
            logger.warning("gateway credential %s: assertion refused: %s", cred_id, exc)
            raise Unauthorized(str(exc)) from exc
        if cred.revoked:
            logger.warning("gateway credential %s is revoked: token refused", cred_id)
            raise Forbidden(f"gateway credential {cred_id} is revoked")
        if not self.credentials.use_assertion(cred_id, claims.jti, claims.expires_at, now=now):
            logger.warning("gateway credential %s: assertion %s replayed", cred_id, claims.jti)
            raise Unauthorized("this assertion was used before: sign a new one")
        token = TOKEN_PREFIX + secrets.token_urlsafe(32)
        expires_at = now + self.token_ttl_s
        self.credentials.add_token(token_digest(token), cred_id, expires_at, now=now)
        return IssuedToken(
            token, self.token_ttl_s, GatewayPrincipal(cred_id, cred.hospital, expires_at)
        )

    def authenticate(self, token: str) -> GatewayPrincipal:
        """The gateway a bearer token was issued to; Unauthorized unless it is a live gateway
        token, Forbidden when its credential has been revoked since."""
        if not _TOKEN.fullmatch(token):
            raise Unauthorized("not a gateway token")
        grant = self.credentials.token(token_digest(token), now=self.clock())
        if grant is None:
            raise Unauthorized("unknown or expired gateway token")
        if grant.credential.revoked:
            raise Forbidden(f"gateway credential {grant.credential.id} is revoked")
        return GatewayPrincipal(grant.credential.id, grant.credential.hospital, grant.expires_at)


def is_gateway_token(token: str) -> bool:
    return token.startswith(TOKEN_PREFIX)


def _write_private(path: Path, text: str) -> None:
    """Create ``path`` (mode 0600; an existing file is never overwritten) holding ``text``."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as fh:
        fh.write(text)
        fh.flush()
        os.fsync(fh.fileno())
    fsync_dir(path.parent)


def issue_credential(
    credentials: GatewayCredentials,
    registry: Registry,
    hospital: str,
    out_file: Path,
    *,
    cloud_url: str = "",
    now: float | None = None,
) -> str:
    """Register a new credential for a registered ``hospital`` and write its file (id,
    hospital, cloud URL, private key; mode 0600) to ``out_file``, which must not exist.
    Returns the credential id. RegistryError for an unregistered hospital."""
    if hospital not in registry.hospital_names():
        raise RegistryError(f"unknown hospital {hospital!r}: add it first")
    out_file = Path(out_file)
    if out_file.exists():
        raise FileExistsError(f"{out_file} exists: a credential file is never overwritten")
    key, public = new_key_pair()
    cred_id = new_credential_id()
    text = credential_file_text(
        CredentialFile(cred_id, hospital, private_key_pem(key), cloud_url.rstrip("/"))
    )
    credentials.add(
        GatewayCredential(cred_id, hospital, public, time.time() if now is None else now)
    )
    try:
        _write_private(out_file, text)
    except BaseException:
        credentials.revoke(cred_id, at=time.time())  # no file, no use: never leave it live
        raise
    logger.info("gateway credential %s issued for %s", cred_id, hospital)
    return cred_id


def revoke_credential(credentials: GatewayCredentials, credential_id: str) -> bool:
    """Refuse the credential and every token issued for it, at once, on every API process.
    False if it was not live; ValueError for a malformed id."""
    check_credential_id(credential_id)
    done = credentials.revoke(credential_id, at=time.time())
    if done:
        logger.info("gateway credential %s revoked", credential_id)
    return done

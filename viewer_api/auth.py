"""Bearer tokens for staff and clinicians, and the signatures of share-link tokens.

A bearer token is ``cf1.<base64url(JSON payload)>.<base64url(HMAC-SHA256)>`` with the payload
``{"h": hospital, "r": role, "s": subject, "exp": unix seconds, "jti": random}``. Share-link
tokens are ``<id>.<sig>``: a 128-bit random id and a truncated HMAC of it, so a forged or
edited link is refused before any database access.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
import os
import secrets
import threading
import time
from collections.abc import Container
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, cast, get_args

from image_store.fsutil import fsync_dir, make_dirs
from image_store.keys import check_hospital
from viewer_api.errors import Unauthorized

Role = Literal["admin", "radiologist", "clinician", "auditor"]
"""admin: the region's operators (every hospital); radiologist and clinician: their own
hospital's studies, others' under a consent grant or break-glass; auditor: the audit log, no
images."""
ROLES: tuple[str, ...] = get_args(Role)
_PREFIX = "cf1"
_MAX_TOKEN = 2048


def b64e(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def b64d(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def load_or_create_secret(path: Path) -> bytes:
    """The 32-byte signing key kept in ``path``, created on first use with mode 0600.

    The key is written to a private temporary file and linked into place, so no process ever
    reads a partly written key; when two processes race, both end up with the one that won.
    """
    path = Path(path)
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        make_dirs(path.parent)
        tmp = path.with_name(f".{path.name}.{secrets.token_hex(8)}.partial")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            with os.fdopen(fd, "wb") as fh:
                fh.write(secrets.token_bytes(32))
                fh.flush()
                os.fsync(fh.fileno())
            try:
                os.link(tmp, path)  # atomic, and fails if another process was first
            except FileExistsError:
                pass
            else:
                fsync_dir(path.parent)
        finally:
            tmp.unlink(missing_ok=True)
        data = path.read_bytes()
    if len(data) != 32:
        raise ValueError(f"secret key file {path} must hold 32 bytes, found {len(data)}")
    return data


@dataclass(frozen=True, slots=True)
class Principal:
    """Who is calling: a hospital, a role, and who the token was issued to."""

    hospital: str
    role: Role
    subject: str
    expires_at: float

    def visible_hospitals(self) -> frozenset[str] | None:
        """Hospitals whose studies this principal may read; None means every hospital."""
        if self.role == "admin":
            return None
        return frozenset() if self.role == "auditor" else frozenset({self.hospital})

    def may_see(self, hospital: str) -> bool:
        allowed = self.visible_hospitals()
        return allowed is None or hospital in allowed

    @property
    def actor(self) -> str:
        return f"{self.role}:{self.hospital}:{self.subject or '-'}"


class SigningKeys:
    """The signing keys in ``secret_path`` (the current one) and ``retired/*.key`` beside it
    (newest first), re-read whenever ``cloudfilm keys rotate|retire`` changes them, so a
    running API signs with the new key and stops accepting retired ones without a restart.
    Never creates a key: while a rotation has the current key briefly absent, the keys read
    last stay in use."""

    def __init__(self, secret_path: Path) -> None:
        self.secret_path = Path(secret_path)
        self._seen: tuple[int, int, int] | None = None
        self._keys: tuple[bytes, ...] = ()
        self._lock = threading.Lock()
        self.keys()
        if not self._keys:
            raise FileNotFoundError(f"no signing key at {self.secret_path}")

    def _stamp(self) -> tuple[int, int, int] | None:
        try:
            st = self.secret_path.stat()
        except FileNotFoundError:
            return None
        try:
            retired = (self.secret_path.parent / "retired").stat().st_mtime_ns
        except FileNotFoundError:
            retired = 0
        return (st.st_ino, st.st_mtime_ns, retired)

    def keys(self) -> tuple[bytes, ...]:
        """The current key first, then the retired ones."""
        stamp = self._stamp()
        if stamp is not None and stamp != self._seen:
            with self._lock:
                try:
                    current = self.secret_path.read_bytes()
                    keys = (current, *retired_keys(self.secret_path))
                except FileNotFoundError:
                    return self._keys  # mid-rotation: keep the last good set
                if len(current) == 32:
                    self._keys, self._seen = keys, stamp
        return self._keys


class TokenSigner:
    """Signs with the current key; verifies with it and with ``previous`` keys (kept after a
    rotation until the tokens and links they signed have expired). Built with
    :meth:`from_files`, the key set follows the secrets directory while it runs."""

    def __init__(
        self,
        secret: bytes,
        previous: tuple[bytes, ...] = (),
        *,
        revoked: Container[str] | None = None,
        key_files: SigningKeys | None = None,
    ) -> None:
        if len(secret) < 32 or any(len(k) < 32 for k in previous):
            raise ValueError("the signing secret must be at least 32 bytes")
        self._static = (secret, *previous)
        self._key_files = key_files
        self._derived: tuple[tuple[bytes, ...], list[bytes]] | None = None
        self._revoked = revoked

    @classmethod
    def from_files(cls, secret_path: Path, *, revoked: Container[str] | None = None) -> TokenSigner:
        """A signer over ``secret_path`` and its retired keys, following their changes."""
        key_files = SigningKeys(secret_path)
        keys = key_files.keys()
        return cls(keys[0], keys[1:], revoked=revoked, key_files=key_files)

    def _all(self) -> tuple[bytes, ...]:
        if self._key_files is None:
            return self._static
        return self._key_files.keys() or self._static

    @property
    def _secret(self) -> bytes:
        return self._all()[0]

    @property
    def _share_secrets(self) -> tuple[bytes, ...]:
        return self._all()

    @property
    def _verify_bearer(self) -> list[bytes]:
        keys = self._all()
        derived = self._derived
        if derived is None or derived[0] is not keys:
            derived = (keys, [hmac.new(k, b"bearer-token", hashlib.sha256).digest() for k in keys])
            self._derived = derived
        return derived[1]

    @property
    def _bearer_key(self) -> bytes:
        return self._verify_bearer[0]

    # -- bearer tokens -----------------------------------------------------------------------

    def issue(self, hospital: str, role: Role, *, subject: str = "", ttl_s: int = 86400) -> str:
        check_hospital(hospital)
        if role not in ROLES:
            raise ValueError(f"role must be one of {', '.join(ROLES)}, got {role!r}")
        if ttl_s < 1:
            raise ValueError(f"ttl_s must be positive, got {ttl_s}")
        payload = {
            "h": hospital,
            "r": role,
            "s": subject[:128],
            "exp": int(time.time()) + ttl_s,
            "jti": secrets.token_hex(8),
        }
        body = b64e(json.dumps(payload, separators=(",", ":")).encode())
        sig = hmac.new(self._bearer_key, f"{_PREFIX}.{body}".encode(), hashlib.sha256).digest()
        return f"{_PREFIX}.{body}.{b64e(sig)}"

    def verify(self, token: str, *, now: float | None = None) -> Principal:
        if len(token) > _MAX_TOKEN or token.count(".") != 2:
            raise Unauthorized("malformed bearer token")
        prefix, body, sig = token.split(".")
        if prefix != _PREFIX:
            raise Unauthorized("unknown token format")
        payload = None
        try:
            got = b64d(sig)
            for key in self._verify_bearer:
                want = hmac.new(key, f"{prefix}.{body}".encode(), hashlib.sha256).digest()
                if hmac.compare_digest(want, got):
                    payload = json.loads(b64d(body))
                    break
        except (binascii.Error, ValueError, UnicodeDecodeError):
            payload = None
        if not isinstance(payload, dict):
            raise Unauthorized("invalid token signature")
        try:
            hospital, role = str(payload["h"]), str(payload["r"])
            exp = float(payload["exp"])
            subject = str(payload.get("s", ""))
        except (KeyError, TypeError, ValueError) as exc:
            raise Unauthorized("malformed token payload") from exc
        if role not in ROLES:
            raise Unauthorized("unknown role in token")
        if exp < (time.time() if now is None else now):
            raise Unauthorized("token expired")
        if self._revoked is not None and str(payload.get("jti", "")) in self._revoked:
            raise Unauthorized("token revoked")
        return Principal(hospital=hospital, role=cast(Role, role), subject=subject, expires_at=exp)

    # -- share-link tokens -------------------------------------------------------------------

    def token_id(self, token: str) -> tuple[str, float]:
        """(jti, expiry) of one of our tokens, to revoke it; Unauthorized if it is not ours."""
        self.verify(token, now=0.0)  # signature and form; expiry does not matter here
        payload = json.loads(b64d(token.split(".")[1]))
        return str(payload.get("jti", "")), float(payload["exp"])

    def share_token(self, link_id: str) -> str:
        return f"{link_id}.{self._share_sig(link_id)}"

    def share_id(self, token: str) -> str | None:
        """The link id of a share token whose signature is right, else None."""
        if len(token) > 128 or token.count(".") != 1:
            return None
        link_id, sig = token.split(".")
        if not link_id:
            return None
        for secret in self._share_secrets:
            if hmac.compare_digest(self._share_sig(link_id, secret).encode(), sig.encode()):
                return link_id
        return None

    def unlock_pass(self, link_id: str, ttl_s: int = 12 * 3600) -> str:
        """The cookie value a browser gets after entering a link's extraction code:
        ``<expiry>.<HMAC>``, bound to the link, good for ``ttl_s``."""
        exp = str(int(time.time()) + ttl_s)
        return f"{exp}.{self._unlock_sig(link_id, exp, self._secret)}"

    def unlock_pass_valid(self, link_id: str, value: str) -> bool:
        exp, _, sig = value.partition(".")
        if not exp.isdigit() or len(exp) > 12 or int(exp) <= time.time():
            return False
        return any(
            hmac.compare_digest(self._unlock_sig(link_id, exp, k).encode(), sig.encode())
            for k in self._share_secrets
        )

    @staticmethod
    def _unlock_sig(link_id: str, exp: str, secret: bytes) -> str:
        msg = f"film-unlock:{link_id}:{exp}".encode()
        return b64e(hmac.new(secret, msg, hashlib.sha256).digest())

    def _share_sig(self, link_id: str, secret: bytes | None = None) -> str:
        """base64url(HMAC-SHA256(secret, b"share:" + id)[:16])."""
        mac = hmac.new(secret or self._secret, b"share:" + link_id.encode(), hashlib.sha256)
        return b64e(mac.digest()[:16])


def retired_keys(secret_path: Path) -> tuple[bytes, ...]:
    """Signing keys retired by ``cloudfilm keys rotate`` (``retired/*.key`` beside the current
    one), newest first: still accepted for verification."""
    folder = Path(secret_path).parent / "retired"
    if not folder.is_dir():
        return ()
    keys = sorted(folder.glob("*.key"), reverse=True)
    return tuple(k.read_bytes() for k in keys if len(k.read_bytes()) == 32)


def rotate_key(secret_path: Path) -> Path:
    """Retire the current signing key (kept in ``retired/``) and make a new one; returns where
    the old key went. Tokens and links signed with it keep working until ``retire_keys``."""
    secret_path = Path(secret_path)
    folder = secret_path.parent / "retired"
    make_dirs(folder)
    target = folder / f"{time.strftime('%Y%m%dT%H%M%S', time.gmtime())}-{secrets.token_hex(4)}.key"
    os.link(secret_path, target)
    os.utime(target)  # retired now (retire_keys goes by this time)
    fsync_dir(folder)
    secret_path.unlink()
    load_or_create_secret(secret_path)
    return target


def retire_keys(secret_path: Path, older_than_s: float) -> int:
    """Delete retired keys older than ``older_than_s``: what they signed stops working."""
    folder = Path(secret_path).parent / "retired"
    cutoff = time.time() - older_than_s
    gone = 0
    for key in folder.glob("*.key") if folder.is_dir() else ():
        if key.stat().st_mtime < cutoff:
            key.unlink()
            gone += 1
    return gone


def new_link_id() -> str:
    """128 random bits, URL-safe."""
    return b64e(secrets.token_bytes(16))

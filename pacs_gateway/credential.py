"""The gateway's credential file: who it delivers as, and the private key it signs with.

Issued by the region (``cloudfilm gateway credential``); a JSON file of mode 0600 holding the
credential id, the hospital, the cloud's URL (optional) and an Ed25519 private key. The gateway
signs short-lived assertions with it and trades them for bearer tokens; it holds no secret of
the region.
"""

from __future__ import annotations

import stat
from dataclasses import dataclass
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from image_store.gateway_assertion import (
    TOKEN_PATH,
    CredentialFile,
    CredentialFileError,
    load_private_key,
    parse_credential_file,
    sign_assertion,
)


@dataclass(frozen=True, slots=True)
class GatewayCredential:
    """A loaded credential: its file's contents and the private key, ready to sign."""

    file: CredentialFile
    key: Ed25519PrivateKey

    @property
    def credential_id(self) -> str:
        return self.file.credential_id

    @property
    def hospital(self) -> str:
        return self.file.hospital

    def assertion(self, cloud_url: str, *, now: float) -> str:
        """A fresh assertion for the token endpoint of ``cloud_url`` (its audience)."""
        return sign_assertion(self.key, self.credential_id, token_url(cloud_url), now=now)


def token_url(cloud_url: str) -> str:
    return cloud_url.rstrip("/") + TOKEN_PATH


def load_credential(path: Path) -> GatewayCredential:
    """The credential in ``path``; CredentialFileError if it cannot be read as one or if
    anyone but its owner may read it (like ssh with a private key)."""
    path = Path(path)
    try:
        mode = path.stat().st_mode
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise CredentialFileError(f"cannot read the credential file {path}: {exc}") from exc
    if mode & (stat.S_IRWXG | stat.S_IRWXO):
        raise CredentialFileError(
            f"the credential file {path} is open to others (mode {stat.S_IMODE(mode):o}): "
            "chmod 600 it"
        )
    cred = parse_credential_file(text)
    return GatewayCredential(cred, load_private_key(cred.private_key_pem))

"""Where the hospitals' key-encryption keys (KEKs) come from: a pluggable KeyProvider.

Each hospital has one current KEK (new objects are sealed under it) and may keep older ones
(objects name the key id they were sealed with, so keys rotate without re-encrypting). Two
providers: a key file (JSON or TOML, mode 0600 or stricter, checked) and environment variables.
A KMS or HSM provider implements the same two methods.

Key file (JSON shown; TOML has the same tables)::

    {"H1": {"current": "h1-2027", "keys": {"h1-2026": "<base64>", "h1-2027": "<base64>"}},
     "*":  {"current": "region-1", "keys": {"region-1": "<base64>"}}}

``"*"`` is used for hospitals without an entry of their own. Environment:
``CLOUDFILM_KEK_<HOSPITAL>`` (``CLOUDFILM_KEK`` for every other hospital) =
``key_id:base64[,key_id:base64...]``, the first one current.
"""

from __future__ import annotations

import base64
import binascii
import json
import os
import stat
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from image_store.crypto import check_key_id
from image_store.errors import KeyConfigError, KeyUnavailable

DEFAULT_HOSPITAL = "*"
ENV_PREFIX = "CLOUDFILM_KEK"


@dataclass(frozen=True, slots=True)
class Kek:
    key_id: str
    key: bytes

    def __repr__(self) -> str:  # never print key material
        return f"Kek(key_id={self.key_id!r}, key=<{len(self.key)} bytes>)"


class KeyProvider(Protocol):
    def current(self, hospital: str) -> Kek:
        """The KEK new objects of ``hospital`` are sealed under; KeyUnavailable if none."""
        ...

    def get(self, hospital: str, key_id: str) -> Kek:
        """A KEK of ``hospital`` by id (current or retired); KeyUnavailable if unknown."""
        ...


@dataclass(frozen=True, slots=True)
class _Ring:
    current: str
    keys: Mapping[str, bytes]


def _decode(value: object, what: str) -> bytes:
    if not isinstance(value, str):
        raise KeyConfigError(f"{what} must be a base64 string")
    try:
        return base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise KeyConfigError(f"{what} is not valid base64") from exc


class StaticKeyProvider:
    """Key rings held in memory (what the file and environment providers build)."""

    def __init__(self, rings: Mapping[str, _Ring]) -> None:
        self._rings = dict(rings)

    def _ring(self, hospital: str) -> _Ring:
        ring = self._rings.get(hospital) or self._rings.get(DEFAULT_HOSPITAL)
        if ring is None:
            raise KeyUnavailable(f"no key-encryption key for hospital {hospital!r}")
        return ring

    def current(self, hospital: str) -> Kek:
        ring = self._ring(hospital)
        return Kek(ring.current, ring.keys[ring.current])

    def get(self, hospital: str, key_id: str) -> Kek:
        ring = self._ring(hospital)
        key = ring.keys.get(key_id)
        if key is None:
            raise KeyUnavailable(
                f"hospital {hospital!r} has no key-encryption key with id {key_id!r} "
                "(was a retired key removed from the key file?)"
            )
        return Kek(key_id, key)

    @classmethod
    def from_mapping(cls, table: Mapping[str, Any], source: str) -> StaticKeyProvider:
        rings: dict[str, _Ring] = {}
        for hospital, entry in table.items():
            where = f"{source}: hospital {hospital!r}"
            if not isinstance(entry, Mapping) or not isinstance(entry.get("keys"), Mapping):
                raise KeyConfigError(f"{where} needs a 'keys' table of key id -> base64 key")
            keys = {
                check_key_id(str(kid)): _decode(value, f"{where} key {kid!r}")
                for kid, value in entry["keys"].items()
            }
            current = entry.get("current")
            if current is None and len(keys) == 1:
                (current,) = keys
            if not isinstance(current, str) or current not in keys:
                raise KeyConfigError(f"{where}: 'current' must name one of its keys")
            rings[str(hospital)] = _Ring(current, keys)
        if not rings:
            raise KeyConfigError(f"{source} holds no keys")
        return cls(rings)


def file_key_provider(path: Path) -> StaticKeyProvider:
    """Keys from a JSON or TOML file that only its owner can read (mode 0600 or 0400)."""
    path = Path(path)
    try:
        st = path.stat()
    except OSError as exc:
        raise KeyConfigError(f"key file {path}: {exc.strerror}") from exc
    if st.st_mode & (stat.S_IRWXG | stat.S_IRWXO):
        raise KeyConfigError(
            f"key file {path} is readable by others (mode {stat.S_IMODE(st.st_mode):04o}); "
            "chmod 600 it"
        )
    try:
        text = path.read_text(encoding="utf-8")
        table = tomllib.loads(text) if path.suffix == ".toml" else json.loads(text)
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        raise KeyConfigError(f"key file {path} cannot be read: {exc}") from exc
    if not isinstance(table, dict):
        raise KeyConfigError(f"key file {path} must hold a table of hospitals")
    return StaticKeyProvider.from_mapping(table, f"key file {path}")


def env_key_provider(env: Mapping[str, str] | None = None) -> StaticKeyProvider:
    """Keys from ``CLOUDFILM_KEK_<HOSPITAL>`` (and ``CLOUDFILM_KEK`` for the rest)."""
    env = os.environ if env is None else env
    table: dict[str, Any] = {}
    for name, value in env.items():
        if name == ENV_PREFIX:
            hospital = DEFAULT_HOSPITAL
        elif name.startswith(ENV_PREFIX + "_"):
            hospital = name[len(ENV_PREFIX) + 1 :]
        else:
            continue
        keys: dict[str, str] = {}
        for item in filter(None, (i.strip() for i in value.split(","))):
            kid, sep, b64 = item.partition(":")
            if not sep:
                raise KeyConfigError(f"{name} must be key_id:base64[,key_id:base64...]")
            keys[kid] = b64
        first = next(iter(keys), None)
        table[hospital] = {"current": first, "keys": keys}
    return StaticKeyProvider.from_mapping(table, "environment (CLOUDFILM_KEK_*)")

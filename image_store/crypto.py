"""Envelope encryption of objects: a random data key per object, the payload sealed in segments.

Format of a sealed object (all integers big-endian)::

    header   b"CFE1" | alg u8 | segment_log2 u8 | key_id_len u8 | key_id | nonce_prefix (7)
             | wrapped_len u8 | wrapped data key (nonce 12 | ciphertext | tag 16)
    segments ciphertext | tag 16, each of 2**segment_log2 plaintext bytes but the last
             (which may be shorter, or empty: there is always a final segment)

The data key is wrapped by the hospital's key-encryption key (KEK) with the same AEAD as the
payload; the wrap's associated data names the algorithm, the key id and the object key, so a
sealed object copied under another key (or another hospital) does not open. Segment ``i`` is
sealed with nonce ``nonce_prefix | i (u32) | final (u8)`` and associated data
``b"CFE1" | alg | segment_log2 | nonce_prefix | i | final``: a segment moved, dropped or
duplicated, an object cut at a segment boundary, or one byte changed anywhere fails to open
(``IntegrityError``). The key id and the wrapped key are not in the segments' associated data,
so rotating a KEK rewraps 60 bytes of header and leaves the payload as it is.

Algorithms: AES-256-GCM (256-bit data keys and KEKs) and SM4-GCM (GB/T 32907 block cipher in
GCM mode, as OpenSSL provides it; 128-bit keys, the SM4 block size) for Chinese commercial
cryptography rules.
"""

from __future__ import annotations

import os
import re
import struct
from collections.abc import Iterator
from dataclasses import dataclass
from enum import IntEnum

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from image_store.errors import IntegrityError, KeyConfigError

MAGIC = b"CFE1"
TAG = 16
NONCE = 12
PREFIX = 7
MAX_HEADER = 4 + 3 + 64 + PREFIX + 1 + 255
DEFAULT_SEGMENT_LOG2 = 22  # 4 MiB: one GCM segment per S3 range-read unit
_KEY_ID_RE = re.compile(r"[A-Za-z0-9._-]{1,64}")


class Algorithm(IntEnum):
    AES_256_GCM = 1
    SM4_GCM = 2

    @property
    def key_size(self) -> int:
        return 32 if self is Algorithm.AES_256_GCM else 16

    @classmethod
    def from_name(cls, name: str) -> Algorithm:
        names = {"aes-256-gcm": cls.AES_256_GCM, "sm4-gcm": cls.SM4_GCM}
        try:
            return names[name]
        except KeyError:
            raise KeyConfigError(
                f"encryption algorithm must be one of {', '.join(names)}, got {name!r}"
            ) from None


def check_key_id(key_id: str) -> str:
    if not _KEY_ID_RE.fullmatch(key_id):
        raise KeyConfigError(f"key id must match [A-Za-z0-9._-]{{1,64}}, got {key_id[:80]!r}")
    return key_id


def check_key(alg: Algorithm, key: bytes, what: str) -> bytes:
    if len(key) != alg.key_size:
        raise KeyConfigError(
            f"{what} must be {alg.key_size} bytes for {alg.name}, got {len(key)} bytes"
        )
    return key


def seal(alg: Algorithm, key: bytes, nonce: bytes, data: bytes | memoryview, aad: bytes) -> bytes:
    """``data`` encrypted and authenticated: ciphertext followed by the 16-byte tag."""
    if alg is Algorithm.AES_256_GCM:
        return AESGCM(key).encrypt(nonce, data, aad)
    enc = Cipher(algorithms.SM4(key), modes.GCM(nonce)).encryptor()
    enc.authenticate_additional_data(aad)
    out = enc.update(data) + enc.finalize()
    return out + enc.tag


def open_sealed(
    alg: Algorithm, key: bytes, nonce: bytes, sealed: bytes | memoryview, aad: bytes
) -> bytes:
    """The plaintext of ``sealed`` (ciphertext + tag); InvalidTag when it does not authenticate."""
    if len(sealed) < TAG:
        raise InvalidTag
    if alg is Algorithm.AES_256_GCM:
        return AESGCM(key).decrypt(nonce, sealed, aad)
    view = memoryview(sealed)
    dec = Cipher(algorithms.SM4(key), modes.GCM(nonce, bytes(view[-TAG:]))).decryptor()
    dec.authenticate_additional_data(aad)
    return dec.update(view[:-TAG]) + dec.finalize()


@dataclass(frozen=True, slots=True)
class Header:
    alg: Algorithm
    segment_log2: int
    key_id: str
    nonce_prefix: bytes
    wrapped_key: bytes
    length: int
    """Bytes of the header in the object (where the first segment starts)."""

    @property
    def segment_size(self) -> int:
        return 1 << self.segment_log2

    def segment_aad(self, index: int, final: bool) -> bytes:
        return (
            MAGIC
            + bytes((self.alg, self.segment_log2))
            + self.nonce_prefix
            + struct.pack(">IB", index, final)
        )

    def segment_nonce(self, index: int, final: bool) -> bytes:
        return self.nonce_prefix + struct.pack(">IB", index, final)


def _wrap_aad(alg: Algorithm, key_id: str, object_key: str) -> bytes:
    return b"CFE1 data key\0" + bytes((alg,)) + key_id.encode() + b"\0" + object_key.encode()


def _encode_header(
    alg: Algorithm, segment_log2: int, kek_id: str, kek: bytes, data_key: bytes, prefix: bytes,
    object_key: str,
) -> tuple[bytes, Header]:  # fmt: skip
    check_key(alg, kek, f"key-encryption key {kek_id!r}")
    nonce = os.urandom(NONCE)
    wrapped = nonce + seal(alg, kek, nonce, data_key, _wrap_aad(alg, kek_id, object_key))
    kid = check_key_id(kek_id).encode()
    raw = (
        MAGIC
        + bytes((alg, segment_log2, len(kid)))
        + kid
        + prefix
        + bytes((len(wrapped),))
        + wrapped
    )
    return raw, Header(alg, segment_log2, kek_id, prefix, wrapped, len(raw))


def new_header(
    alg: Algorithm, kek_id: str, kek: bytes, object_key: str, segment_log2: int
) -> tuple[bytes, Header, bytes]:
    """(header bytes, parsed header, data key) for a new object sealed under ``kek``."""
    data_key = os.urandom(alg.key_size)
    raw, header = _encode_header(
        alg, segment_log2, kek_id, kek, data_key, os.urandom(PREFIX), object_key
    )
    return raw, header, data_key


def rewrapped_header(
    header: Header, data_key: bytes, kek_id: str, kek: bytes, object_key: str
) -> bytes:
    """The header of the same sealed payload with its data key wrapped under another KEK."""
    raw, _ = _encode_header(
        header.alg, header.segment_log2, kek_id, kek, data_key, header.nonce_prefix, object_key
    )
    return raw


def parse_header(object_key: str, data: bytes | memoryview) -> Header:
    """The header at the start of ``data``; IntegrityError when it is not one of ours."""
    view = memoryview(data)
    try:
        if bytes(view[:4]) != MAGIC:
            raise ValueError("no CFE1 magic: the object is not encrypted (or not ours)")
        alg = Algorithm(view[4])
        segment_log2 = view[5]
        if not 12 <= segment_log2 <= 30:
            raise ValueError(f"segment size 2**{segment_log2} out of range")
        kid_len = view[6]
        pos = 7 + kid_len
        key_id = check_key_id(bytes(view[7:pos]).decode("ascii"))
        prefix = bytes(view[pos : pos + PREFIX])
        pos += PREFIX
        wrapped_len = view[pos]
        wrapped = bytes(view[pos + 1 : pos + 1 + wrapped_len])
        pos += 1 + wrapped_len
        if len(prefix) != PREFIX or len(wrapped) != wrapped_len or len(view) < pos:
            raise ValueError("header cut short")
    except (ValueError, IndexError, UnicodeDecodeError, KeyConfigError) as exc:
        raise IntegrityError(
            f"object {object_key!r}: unreadable encryption header ({exc})"
        ) from exc
    return Header(alg, segment_log2, key_id, prefix, wrapped, pos)


def unwrap(header: Header, kek: bytes, object_key: str) -> bytes:
    """The object's data key; IntegrityError when the KEK or the object key do not match."""
    check_key(header.alg, kek, f"key-encryption key {header.key_id!r}")
    w = header.wrapped_key
    try:
        return open_sealed(
            header.alg, kek, w[:NONCE], w[NONCE:], _wrap_aad(header.alg, header.key_id, object_key)
        )
    except InvalidTag:
        raise IntegrityError(
            f"object {object_key!r}: its data key does not open with key {header.key_id!r} "
            "(the object was tampered with, moved from another key, or the key is wrong)"
        ) from None


def seal_segment(header: Header, data_key: bytes, index: int, final: bool, data: bytes) -> bytes:
    return seal(
        header.alg,
        data_key,
        header.segment_nonce(index, final),
        data,
        header.segment_aad(index, final),
    )


def open_segment(
    header: Header,
    data_key: bytes,
    index: int,
    final: bool,
    sealed: bytes | memoryview,
    object_key: str,
) -> bytes:
    try:
        return open_sealed(
            header.alg,
            data_key,
            header.segment_nonce(index, final),
            sealed,
            header.segment_aad(index, final),
        )
    except InvalidTag:
        where = "final segment" if final else "segment"
        raise IntegrityError(
            f"object {object_key!r}: {where} {index} does not authenticate "
            "(tampered, truncated or reordered ciphertext); no bytes returned"
        ) from None


def split_segments(
    header: Header, body: memoryview, first_index: int
) -> Iterator[tuple[int, memoryview]]:
    """(index, sealed segment) over ``body``, which runs from segment ``first_index`` to the end
    of the object: full segments, then the final one (shorter, or full when it ends the body)."""
    step = header.segment_size + TAG
    index = first_index
    pos = 0
    while True:
        chunk = body[pos : pos + step]
        yield index, chunk
        pos += step
        index += 1
        if pos >= len(body):
            return


def plaintext_size(header: Header, sealed_size: int) -> int:
    """Plaintext length of an object of ``sealed_size`` bytes (header included)."""
    body = sealed_size - header.length
    step = header.segment_size + TAG
    segments = max(1, -(-body // step))
    return body - segments * TAG

"""Encryption at rest: the ObjectStore contract through EncryptedObjectStore (AES-256-GCM and
SM4-GCM), and what it refuses: tampered, truncated, reordered or moved ciphertext, wrong keys."""

from __future__ import annotations

import base64
import hashlib
import io
import json
import os
from pathlib import Path

import pytest

from cloudfilm.config import ConfigError, load_settings
from cloudfilm.stores import open_object_store
from image_store.crypto import MAGIC, TAG, Algorithm, parse_header
from image_store.errors import IntegrityError, KeyConfigError, KeyUnavailable
from image_store.index.sqlite import SqliteIndex
from image_store.ingest import LocalIngest
from image_store.key_providers import (
    StaticKeyProvider,
    env_key_provider,
    file_key_provider,
)
from image_store.objects.encrypted import EncryptedObjectStore
from image_store.objects.filesystem import FilesystemObjectStore
from image_store.records import ByteRange, InstanceQuery
from image_store.scrub import scrub
from tests.contracts.object_store import KEY, ObjectStoreContract

SEG_LOG2 = 12  # 4 KiB segments, so small test objects span many of them
SEG = 1 << SEG_LOG2


def keyring(alg: Algorithm = Algorithm.AES_256_GCM, **rings: dict[str, bytes]) -> StaticKeyProvider:
    """Rings per hospital (``star`` for '*'); by default one random key for every hospital."""
    rings = rings or {"star": {"k1": os.urandom(alg.key_size)}}
    table = {
        ("*" if h == "star" else h): {
            "current": next(reversed(keys)),
            "keys": {k: base64.b64encode(v).decode() for k, v in keys.items()},
        }
        for h, keys in rings.items()
    }
    return StaticKeyProvider.from_mapping(table, "test")


def encrypted(
    root: Path, alg: Algorithm = Algorithm.AES_256_GCM, keys: StaticKeyProvider | None = None
) -> EncryptedObjectStore:
    return EncryptedObjectStore(
        FilesystemObjectStore(root, fsync=False), keys or keyring(alg), alg, segment_log2=SEG_LOG2
    )


class TestEncryptedFilesystemStoreAes(ObjectStoreContract):
    @pytest.fixture
    def store(self, tmp_path: Path) -> EncryptedObjectStore:
        return encrypted(tmp_path / "objects")


class TestEncryptedFilesystemStoreSm4(ObjectStoreContract):
    @pytest.fixture
    def store(self, tmp_path: Path) -> EncryptedObjectStore:
        return encrypted(tmp_path / "objects", Algorithm.SM4_GCM)


@pytest.fixture(params=[Algorithm.AES_256_GCM, Algorithm.SM4_GCM], ids=["aes", "sm4"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> EncryptedObjectStore:
    return encrypted(tmp_path / "objects", request.param)


def _raw(store: EncryptedObjectStore, key: str = KEY) -> bytes:
    assert isinstance(store.inner, FilesystemObjectStore)
    return (store.inner.root / key).read_bytes()


def _write_raw(store: EncryptedObjectStore, data: bytes, key: str = KEY) -> None:
    assert isinstance(store.inner, FilesystemObjectStore)
    (store.inner.root / key).write_bytes(data)


PLAIN = b"DICM" + b"ZHANG^SAN " * 2000  # 20 KiB: 5 segments of 4 KiB + a final one


def test_stored_bytes_hold_no_plaintext_and_name_their_key_id(
    store: EncryptedObjectStore,
) -> None:
    info = store.put(KEY, PLAIN)
    raw = _raw(store)
    assert raw.startswith(MAGIC) and b"DICM" not in raw and b"ZHANG" not in raw
    assert parse_header(KEY, raw).key_id == "k1"
    assert (info.size, info.sha256) == (len(PLAIN), hashlib.sha256(PLAIN).hexdigest())
    assert store.get(KEY) == PLAIN
    assert store.stat(KEY) == info  # the plaintext's size and hash, as the index keeps them


def test_the_same_object_twice_is_sealed_under_different_data_keys(
    store: EncryptedObjectStore,
) -> None:
    store.put(KEY, PLAIN)
    first = _raw(store)
    store.put(KEY, PLAIN)
    assert _raw(store) != first


@pytest.mark.parametrize("where", ["wrapped key", "first segment", "middle segment", "last tag"])
def test_a_changed_byte_anywhere_is_an_integrity_error_never_bad_bytes(
    store: EncryptedObjectStore, where: str
) -> None:
    store.put(KEY, PLAIN)
    raw = bytearray(_raw(store))
    hlen = parse_header(KEY, raw).length
    pos = {
        "wrapped key": hlen - 5,
        "first segment": hlen + 10,
        "middle segment": hlen + 3 * (SEG + TAG) + 100,
        "last tag": len(raw) - 1,
    }[where]
    raw[pos] ^= 0x01
    _write_raw(store, bytes(raw))
    with pytest.raises(IntegrityError, match=r"does not (authenticate|open)"):
        store.get(KEY)
    with pytest.raises(IntegrityError):
        store.stat(KEY)


def _segments(store: EncryptedObjectStore) -> tuple[bytes, list[bytes]]:
    raw = _raw(store)
    hlen = parse_header(KEY, raw).length
    body = raw[hlen:]
    return raw[:hlen], [body[i : i + SEG + TAG] for i in range(0, len(body), SEG + TAG)]


def test_an_object_cut_at_a_segment_boundary_is_refused(store: EncryptedObjectStore) -> None:
    store.put(KEY, PLAIN)
    header, segs = _segments(store)
    _write_raw(store, header + b"".join(segs[:3]))
    with pytest.raises(IntegrityError, match="truncated"):
        store.get(KEY)
    with pytest.raises(IntegrityError):  # a range read that reaches the cut end, too
        store.get(KEY, ByteRange(SEG * 2 + 5))


def test_reordered_or_dropped_segments_are_refused(store: EncryptedObjectStore) -> None:
    store.put(KEY, PLAIN)
    header, segs = _segments(store)
    for body in (
        [segs[1], segs[0], *segs[2:]],
        [segs[0], *segs[2:]],
        [*segs[:-1], segs[-2], segs[-1]],
    ):
        _write_raw(store, header + b"".join(body))
        with pytest.raises(IntegrityError):
            store.get(KEY)


def test_an_object_moved_under_another_key_does_not_open(store: EncryptedObjectStore) -> None:
    store.put(KEY, PLAIN)
    other = "H1/1.2.3/1.2.3.4/1.2.3.4.6"
    _write_raw(store, _raw(store), other)
    with pytest.raises(IntegrityError, match="moved from another key"):
        store.get(other)


def test_byte_ranges_open_only_what_they_cover(store: EncryptedObjectStore) -> None:
    store.put(KEY, PLAIN)
    n = len(PLAIN)
    for start, end in [(0, 1), (5, SEG), (SEG - 3, SEG + 3), (SEG, 2 * SEG), (n - 7, n)]:
        assert store.get(KEY, ByteRange(start, end)) == PLAIN[start:end]
    assert store.get(KEY, ByteRange(3 * SEG + 11)) == PLAIN[3 * SEG + 11 :]
    assert store.get(KEY, ByteRange(n - 2, n + 500)) == PLAIN[n - 2 :]
    assert store.get(KEY, ByteRange(n + 10)) == b""
    assert store.get(KEY, ByteRange(10 * n)) == b""


@pytest.mark.parametrize("size", [0, 1, SEG - 1, SEG, SEG + 1, 3 * SEG])
def test_sizes_at_segment_edges_round_trip(store: EncryptedObjectStore, size: int) -> None:
    data = os.urandom(size)
    store.put(KEY, io.BytesIO(data))
    assert store.get(KEY) == data
    info = store.stat(KEY)
    assert info is not None and info.size == size


def test_a_stream_is_read_one_segment_at_a_time(store: EncryptedObjectStore) -> None:
    class Recording(io.BytesIO):
        largest = 0

        def read(self, n: int | None = -1) -> bytes:
            assert n is not None and n >= 0, "the whole stream was asked for at once"
            Recording.largest = max(Recording.largest, n)
            return super().read(n)

    data = os.urandom(10 * SEG + 17)
    store.put(KEY, Recording(data))
    assert Recording.largest <= SEG
    assert store.get(KEY) == data


def test_a_stream_with_the_wrong_sha256_stores_nothing(store: EncryptedObjectStore) -> None:
    with pytest.raises(IntegrityError):
        store.put(KEY, io.BytesIO(os.urandom(5 * SEG)), sha256="0" * 64)
    assert store.stat(KEY) is None and list(store.iter_keys("H1/")) == []


def test_keys_rotate_old_objects_still_open_new_ones_use_the_new_key(tmp_path: Path) -> None:
    k1, k2 = os.urandom(32), os.urandom(32)
    old = encrypted(tmp_path, keys=keyring(H1={"k1": k1}))
    old.put(KEY, b"sealed under k1")
    rotated = encrypted(tmp_path, keys=keyring(H1={"k1": k1, "k2": k2}))  # k2 is current
    assert rotated.get(KEY) == b"sealed under k1"
    rotated.put("H1/1.2/1.2.3/1.2.3.9", b"sealed under k2")
    assert parse_header(KEY, _raw(rotated, "H1/1.2/1.2.3/1.2.3.9")).key_id == "k2"
    retired = encrypted(tmp_path, keys=keyring(H1={"k2": k2}))
    assert retired.get("H1/1.2/1.2.3/1.2.3.9") == b"sealed under k2"
    with pytest.raises(KeyUnavailable, match="'k1'"):
        retired.get(KEY)


def test_rewrap_moves_objects_to_the_current_key_without_touching_the_payload(
    tmp_path: Path,
) -> None:
    k1, k2 = os.urandom(32), os.urandom(32)
    encrypted(tmp_path, keys=keyring(H1={"k1": k1})).put(KEY, PLAIN)
    rotated = encrypted(tmp_path, keys=keyring(H1={"k1": k1, "k2": k2}))
    before = _raw(rotated)
    assert rotated.rewrap(KEY) is True and rotated.rewrap(KEY) is False
    after = _raw(rotated)
    old_len, new_len = parse_header(KEY, before).length, parse_header(KEY, after).length
    assert after[new_len:] == before[old_len:]  # the sealed segments, byte for byte
    assert parse_header(KEY, after).key_id == "k2"
    assert encrypted(tmp_path, keys=keyring(H1={"k2": k2})).get(KEY) == PLAIN  # k1 retired


def test_a_hospital_without_a_key_cannot_store(tmp_path: Path) -> None:
    store = encrypted(tmp_path, keys=keyring(H1={"k1": os.urandom(32)}))
    with pytest.raises(KeyUnavailable, match="'H2'"):
        store.put("H2/1.2/1.2.3/1.2.3.4", b"x")
    assert list(store.iter_keys("H2/")) == []


def test_another_hospitals_key_does_not_open_an_object(tmp_path: Path) -> None:
    h1 = encrypted(tmp_path, keys=keyring(H1={"k1": os.urandom(32)}))
    h1.put(KEY, b"H1 only")
    impostor = encrypted(tmp_path, keys=keyring(H1={"k1": os.urandom(32)}))
    with pytest.raises(IntegrityError):
        impostor.get(KEY)


def test_a_key_of_the_wrong_length_is_a_config_error(tmp_path: Path) -> None:
    sm4 = encrypted(tmp_path, Algorithm.SM4_GCM, keys=keyring(H1={"k1": os.urandom(32)}))
    with pytest.raises(KeyConfigError, match="16 bytes for SM4_GCM"):
        sm4.put(KEY, b"x")


def _key_file(path: Path, text: str, mode: int = 0o600) -> Path:
    path.write_text(text)
    path.chmod(mode)
    return path


def test_key_files_in_json_and_toml_give_the_same_keys(tmp_path: Path) -> None:
    key = base64.b64encode(os.urandom(32)).decode()
    as_json = _key_file(
        tmp_path / "keys.json", json.dumps({"H1": {"current": "a", "keys": {"a": key}}})
    )
    as_toml = _key_file(tmp_path / "keys.toml", f'[H1]\ncurrent = "a"\n[H1.keys]\na = "{key}"\n')
    assert file_key_provider(as_json).current("H1") == file_key_provider(as_toml).current("H1")
    assert "bytes>" in repr(file_key_provider(as_json).current("H1"))  # no key in reprs


def test_a_key_file_others_can_read_is_refused(tmp_path: Path) -> None:
    key = base64.b64encode(os.urandom(32)).decode()
    path = _key_file(tmp_path / "keys.json", json.dumps({"H1": {"keys": {"a": key}}}), 0o644)
    with pytest.raises(KeyConfigError, match="chmod 600"):
        file_key_provider(path)


@pytest.mark.parametrize(
    "text",
    [
        "{}",
        '{"H1": {"keys": {"a": "not base64!"}}}',
        '{"H1": {"current": "b", "keys": {"a": "AAAA"}}}',
        '{"H1": {"keys": {"bad id": "AAAA"}}}',
        "[1, 2]",
        "{",
    ],
)
def test_bad_key_files_are_config_errors(tmp_path: Path, text: str) -> None:
    with pytest.raises(KeyConfigError):
        file_key_provider(_key_file(tmp_path / "keys.json", text))


def test_environment_keys_per_hospital_and_for_the_rest() -> None:
    a, b, c = (base64.b64encode(os.urandom(32)).decode() for _ in range(3))
    keys = env_key_provider(
        {"CLOUDFILM_KEK_H1": f"new:{a},old:{b}", "CLOUDFILM_KEK": f"region:{c}", "HOME": "/"}
    )
    assert keys.current("H1").key_id == "new"
    assert keys.get("H1", "old").key == base64.b64decode(b)
    assert keys.current("H7").key_id == "region"
    with pytest.raises(KeyConfigError):
        env_key_provider({"CLOUDFILM_KEK_H1": a})


def test_scrub_reports_a_tampered_encrypted_object_as_corrupt(tmp_path: Path) -> None:
    from cloudfilm.synth import synthesize_study

    paths = synthesize_study(tmp_path / "s", modality="MR", images=2, seed=3)
    store = encrypted(tmp_path / "objects")
    index = SqliteIndex(tmp_path / "index.sqlite")
    LocalIngest(store, index).ingest("HOSP1", [p.read_bytes() for p in paths])
    assert scrub(index, store).ok
    key = index.find_instances(InstanceQuery(), limit=1)[0].object_key
    raw = bytearray(_raw(store, key))
    raw[len(raw) // 2] ^= 0x80
    _write_raw(store, bytes(raw), key)
    report = scrub(index, store)
    assert report.corrupt == [key] and report.checked == 2
    index.close()


def test_the_stack_settings_open_an_encrypted_store(tmp_path: Path) -> None:
    key = base64.b64encode(os.urandom(16)).decode()
    key_file = _key_file(tmp_path / "keys.json", json.dumps({"*": {"keys": {"r1": key}}}))
    settings = load_settings(
        {"data_dir": tmp_path, "encryption": "sm4-gcm", "encryption_key_file": str(key_file)},
        env={},
    )
    store = open_object_store(settings)
    assert isinstance(store, EncryptedObjectStore) and store.algorithm is Algorithm.SM4_GCM
    store.put(KEY, b"DICM...")
    assert b"DICM" not in (tmp_path / "objects" / KEY).read_bytes()
    with pytest.raises(ConfigError, match="encryption must be"):
        load_settings({"data_dir": tmp_path, "encryption": "rot13"}, env={})
    with pytest.raises(ConfigError, match=r"no key-encryption key|holds no keys"):
        open_object_store(
            load_settings({"data_dir": tmp_path, "encryption": "aes-256-gcm"}, env={})
        )

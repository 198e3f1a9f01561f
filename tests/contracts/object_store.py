"""The contract every ObjectStore backend passes: subclass ObjectStoreContract and provide
the ``store`` fixture."""

from __future__ import annotations

import hashlib
import io

import pytest

from image_store.errors import IntegrityError, InvalidKey, ObjectNotFound
from image_store.ports import ObjectStore
from image_store.records import ByteRange

KEY = "H1/1.2.3/1.2.3.4/1.2.3.4.5"


class ObjectStoreContract:
    def test_put_then_get_returns_the_same_bytes(self, store: ObjectStore) -> None:
        info = store.put(KEY, b"hello dicom")
        assert store.get(KEY) == b"hello dicom"
        assert info.size == 11
        assert info.sha256 == hashlib.sha256(b"hello dicom").hexdigest()

    def test_put_accepts_a_stream(self, store: ObjectStore) -> None:
        data = bytes(range(256)) * 10_000
        store.put(KEY, io.BytesIO(data))
        assert store.get(KEY) == data

    def test_a_stream_with_a_wrong_sha256_is_refused_and_nothing_is_stored(
        self, store: ObjectStore
    ) -> None:
        data = bytes(range(256)) * 10_000
        with pytest.raises(IntegrityError):
            store.put(KEY, io.BytesIO(data), sha256=hashlib.sha256(data[:-1]).hexdigest())
        assert store.stat(KEY) is None
        info = store.put(KEY, io.BytesIO(data), sha256=hashlib.sha256(data).hexdigest())
        assert info.size == len(data) and store.get(KEY, ByteRange(len(data) - 3)) == data[-3:]

    def test_put_overwrites_atomically(self, store: ObjectStore) -> None:
        store.put(KEY, b"old")
        store.put(KEY, b"new bytes")
        assert store.get(KEY) == b"new bytes"

    def test_get_a_byte_range(self, store: ObjectStore) -> None:
        store.put(KEY, b"0123456789")
        assert store.get(KEY, ByteRange(2, 5)) == b"234"
        assert store.get(KEY, ByteRange(7)) == b"789"
        assert store.get(KEY, ByteRange(8, 50)) == b"89"

    def test_a_range_past_the_end_is_empty(self, store: ObjectStore) -> None:
        store.put(KEY, b"0123456789")
        assert store.get(KEY, ByteRange(10)) == b""
        assert store.get(KEY, ByteRange(1000, 2000)) == b""

    def test_missing_object_raises_object_not_found_and_lookup_error(
        self, store: ObjectStore
    ) -> None:
        with pytest.raises(ObjectNotFound):
            store.get("H1/9.9/9.9.9/9.9.9.9")
        with pytest.raises(LookupError):
            store.get("H1/9.9/9.9.9/9.9.9.9")
        assert store.stat("H1/9.9/9.9.9/9.9.9.9") is None

    def test_wrong_sha256_is_refused_and_nothing_is_stored(self, store: ObjectStore) -> None:
        with pytest.raises(IntegrityError):
            store.put(KEY, b"data", sha256="0" * 64)
        assert store.stat(KEY) is None
        assert list(store.iter_keys("H1/")) == []

    def test_stat_reports_size_and_hash(self, store: ObjectStore) -> None:
        store.put(KEY, b"abc")
        info = store.stat(KEY)
        assert info is not None
        assert (info.size, info.sha256) == (3, hashlib.sha256(b"abc").hexdigest())

    def test_delete_removes_and_is_idempotent(self, store: ObjectStore) -> None:
        store.put(KEY, b"x")
        store.delete(KEY)
        store.delete(KEY)
        assert store.stat(KEY) is None

    def test_iter_keys_lists_a_prefix_in_order(self, store: ObjectStore) -> None:
        keys = ["H1/1.2/1.2.1/1.2.1.2", "H1/1.2/1.2.1/1.2.1.1", "H1/1.3/1.3.1/1.3.1.1", "H2/1/1/1"]
        for k in keys:
            store.put(k, k.encode())
        assert list(store.iter_keys("H1/1.2/")) == sorted(keys[:2])
        assert list(store.iter_keys("H1/")) == sorted(keys[:3])

    @pytest.mark.parametrize(
        "key", ["../etc/passwd", "H1/../../x", "/abs/path", "H1//x", "H1/a b", "H1/./x", ""]
    )
    def test_keys_that_could_escape_are_refused(self, store: ObjectStore, key: str) -> None:
        with pytest.raises(InvalidKey):
            store.put(key, b"x")
        with pytest.raises(InvalidKey):
            store.get(key)

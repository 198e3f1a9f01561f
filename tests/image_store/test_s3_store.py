"""The ObjectStore contract against a real SeaweedFS S3 server."""

from __future__ import annotations

import base64
import itertools
import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from image_store.crypto import Algorithm
from image_store.errors import IntegrityError, StoreUnavailable
from image_store.key_providers import StaticKeyProvider
from image_store.objects.encrypted import EncryptedObjectStore
from image_store.objects.s3 import S3ObjectStore, S3Settings, make_client
from image_store.records import ByteRange
from tests.contracts.object_store import KEY, ObjectStoreContract
from tests.servers import Seaweed, seaweedfs

_buckets = itertools.count()


@pytest.fixture(scope="module")
def weed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Seaweed]:
    with seaweedfs(tmp_path_factory.mktemp("seaweed")) as server:
        yield server


def _store(weed: Seaweed, **kw: object) -> S3ObjectStore:
    bucket = f"cloudfilm-{next(_buckets)}"
    client = weed.client()
    client.create_bucket(Bucket=bucket)
    return S3ObjectStore(client, S3Settings(bucket=bucket, endpoint_url=weed.endpoint, **kw))  # type: ignore[arg-type]


class TestS3ObjectStore(ObjectStoreContract):
    @pytest.fixture
    def store(self, weed: Seaweed) -> S3ObjectStore:
        return _store(weed, prefix="region-a")


class TestEncryptedS3ObjectStore(ObjectStoreContract):
    """Encryption at rest over S3: the same contract, 64 KiB segments so objects span many."""

    @pytest.fixture
    def store(self, weed: Seaweed) -> EncryptedObjectStore:
        keys = StaticKeyProvider.from_mapping(
            {"*": {"keys": {"r1": base64.b64encode(os.urandom(32)).decode()}}}, "test"
        )
        return EncryptedObjectStore(_store(weed), keys, segment_log2=16)


def test_encrypted_objects_in_s3_hold_no_plaintext_and_tampering_is_refused(
    weed: Seaweed,
) -> None:
    plain = _store(weed)
    keys = StaticKeyProvider.from_mapping(
        {"*": {"keys": {"r1": base64.b64encode(os.urandom(16)).decode()}}}, "test"
    )
    store = EncryptedObjectStore(plain, keys, Algorithm.SM4_GCM, segment_log2=16)
    data = b"DICM" + b"WANG^WU " * 100_000
    store.put(KEY, data)
    raw = plain.get(KEY)
    assert b"DICM" not in raw and b"WANG^WU" not in raw
    assert store.get(KEY, ByteRange(70_000, 200_000)) == data[70_000:200_000]
    damaged = bytearray(raw)
    damaged[len(raw) // 2] ^= 1
    plain.put(KEY, bytes(damaged))
    with pytest.raises(IntegrityError):
        store.get(KEY)
    with pytest.raises(IntegrityError):
        store.get(KEY, ByteRange(len(data) // 2 - 10, len(data) // 2 + 10))


def test_large_objects_go_multipart_and_come_back_whole(weed: Seaweed) -> None:
    store = _store(weed, multipart_threshold=5 * 1024**2)
    data = bytes(range(256)) * (12 * 1024**2 // 256)
    info = store.put(KEY, data)
    assert store.get(KEY) == data
    assert store.stat(KEY) == info


def test_an_unreachable_server_is_store_unavailable(tmp_path: Path) -> None:
    settings = S3Settings(
        bucket="b", endpoint_url="http://127.0.0.1:9", max_attempts=2, connect_timeout_s=0.5
    )
    import boto3

    session = boto3.session.Session(
        aws_access_key_id="x", aws_secret_access_key="y", region_name="us-east-1"
    )
    store = S3ObjectStore(make_client(settings, session), settings)
    with pytest.raises(StoreUnavailable):
        store.put(KEY, b"x")
    with pytest.raises(OSError):  # the uploader's retry loop sees an OSError
        store.get(KEY)

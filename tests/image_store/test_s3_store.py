"""The ObjectStore contract against a real SeaweedFS S3 server."""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from pathlib import Path

import pytest

from image_store.errors import StoreUnavailable
from image_store.objects.s3 import S3ObjectStore, S3Settings, make_client
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

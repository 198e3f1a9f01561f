"""Large objects through EncryptedObjectStore over a real SeaweedFS S3: a file is sealed and
uploaded by multipart without being held in memory, a wrong sha256 or a changed byte stores
nothing, and a stream that cannot seek is still uploaded whole."""

from __future__ import annotations

import base64
import hashlib
import io
import itertools
import json
import os
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path

import pytest

from image_store.errors import IntegrityError
from image_store.key_providers import StaticKeyProvider
from image_store.objects.encrypted import EncryptedObjectStore
from image_store.objects.s3 import S3ObjectStore, S3Settings
from image_store.records import ByteRange
from tests.contracts.object_store import KEY
from tests.servers import Seaweed, seaweedfs

ROOT = Path(__file__).resolve().parents[2]
_buckets = itertools.count()
MB = 1024**2


@pytest.fixture(scope="module")
def weed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Seaweed]:
    with seaweedfs(tmp_path_factory.mktemp("seaweed")) as server:
        yield server


def _keys() -> StaticKeyProvider:
    return StaticKeyProvider.from_mapping(
        {"*": {"keys": {"r1": base64.b64encode(os.urandom(32)).decode()}}}, "test"
    )


def _bucket(weed: Seaweed) -> str:
    bucket = f"sealed-{next(_buckets)}"
    weed.client().create_bucket(Bucket=bucket)
    return bucket


def _encrypted(weed: Seaweed, **kw: int) -> tuple[EncryptedObjectStore, S3ObjectStore]:
    bucket = _bucket(weed)
    inner = S3ObjectStore(
        weed.client(), S3Settings(bucket=bucket, endpoint_url=weed.endpoint, **kw)
    )
    return EncryptedObjectStore(inner, _keys()), inner


_PUT_IN_A_PROCESS = textwrap.dedent(
    """
    import base64, hashlib, json, os, sys
    import boto3
    from image_store.key_providers import StaticKeyProvider
    from image_store.objects.encrypted import EncryptedObjectStore
    from image_store.objects.s3 import S3ObjectStore, S3Settings, make_client
    from image_store.records import ByteRange

    endpoint, access, secret, bucket, key, path = sys.argv[1:]

    def status(field):
        for line in open("/proc/self/status"):
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024
        raise LookupError(field)

    session = boto3.session.Session(
        aws_access_key_id=access, aws_secret_access_key=secret, region_name="us-east-1"
    )
    settings = S3Settings(bucket=bucket, endpoint_url=endpoint)
    inner = S3ObjectStore(make_client(settings, session), settings)
    keys = StaticKeyProvider.from_mapping(
        {"*": {"keys": {"r1": base64.b64encode(b"k" * 32).decode()}}}, "test"
    )
    store = EncryptedObjectStore(inner, keys)
    inner.client.head_bucket(Bucket=bucket)  # connections and botocore's models loaded
    before = status("VmRSS")
    with open(path, "rb") as fh:
        info = store.put(key, fh)
    put_peak = status("VmHWM") - before
    digest = hashlib.sha256()
    for piece in store.iter_plaintext(key):
        digest.update(piece)
    middle = store.get(key, ByteRange(info.size // 2, info.size // 2 + 4096))
    print(json.dumps({
        "size": info.size, "sha256": info.sha256, "read_back": digest.hexdigest(),
        "put_peak": put_peak, "peak": status("VmHWM") - before, "middle": middle.hex(),
    }))
    """
)


def test_a_file_of_192_mb_is_sealed_and_uploaded_in_bounded_memory(
    weed: Seaweed, tmp_path: Path
) -> None:
    size = 192 * MB + 12345  # many 4 MiB segments and multipart parts, a short last one
    path = tmp_path / "large.dcm"
    digest = hashlib.sha256()
    with path.open("wb") as fh:
        for _ in range(size // (8 * MB)):
            chunk = os.urandom(8 * MB)
            digest.update(chunk)
            fh.write(chunk)
        tail = os.urandom(size % (8 * MB))
        digest.update(tail)
        fh.write(tail)
    bucket = _bucket(weed)
    done = subprocess.run(
        [
            sys.executable,
            "-c",
            _PUT_IN_A_PROCESS,
            weed.endpoint,
            weed.access_key,
            weed.secret_key,
            bucket,
            KEY,
            str(path),
        ],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    got = json.loads(done.stdout)
    assert got["size"] == size
    assert got["sha256"] == got["read_back"] == digest.hexdigest()
    with path.open("rb") as fh:
        fh.seek(size // 2)
        assert bytes.fromhex(got["middle"]) == fh.read(4096)
    # the whole object would be 192 MB (and boto3 once held it twice); what stays is
    # boto3's multipart queue of 8 MiB parts and a few sealed segments
    assert got["put_peak"] < 112 * MB, got
    assert got["peak"] < 112 * MB, got
    # what is in the bucket is sealed: no 4 KiB run of the plaintext appears in its first part
    raw = weed.client().get_object(Bucket=bucket, Key=KEY, Range="bytes=0-1048575")["Body"]
    with path.open("rb") as fh:
        assert fh.read(4096) not in raw.read()


def test_a_file_with_the_wrong_sha256_stores_nothing(weed: Seaweed, tmp_path: Path) -> None:
    store, inner = _encrypted(weed, multipart_threshold=5 * MB)
    path = tmp_path / "large.dcm"
    path.write_bytes(os.urandom(12 * MB))
    with path.open("rb") as fh, pytest.raises(IntegrityError):
        store.put(KEY, fh, sha256="0" * 64)
    assert inner.stat(KEY) is None and list(store.iter_keys("H1/")) == []


def test_a_file_changed_while_it_is_uploaded_stores_nothing(weed: Seaweed, tmp_path: Path) -> None:
    store, inner = _encrypted(weed, multipart_threshold=5 * MB)
    data = os.urandom(12 * MB)

    class ChangesOnTheSecondPass(io.BytesIO):
        """The hashing pass sees ``data``; the rewind before the upload changes a byte."""

        def seek(self, pos: int, whence: int = 0) -> int:
            with self.getbuffer() as view:
                view[6 * MB] ^= 1
            return super().seek(pos, whence)

    with pytest.raises(IntegrityError):
        store.put(KEY, ChangesOnTheSecondPass(data))
    assert inner.stat(KEY) is None


class _Unseekable(io.RawIOBase):
    def __init__(self, data: bytes) -> None:
        self._src = io.BytesIO(data)

    def readable(self) -> bool:
        return True

    def read(self, size: int = -1) -> bytes:
        return self._src.read(size)


def test_a_stream_that_cannot_seek_above_the_threshold_is_uploaded_whole(
    weed: Seaweed,
) -> None:
    store, inner = _encrypted(weed, multipart_threshold=5 * MB)
    data = os.urandom(13 * MB + 7)
    info = store.put(KEY, _Unseekable(data))  # type: ignore[arg-type]
    assert info.size == len(data) and info.sha256 == hashlib.sha256(data).hexdigest()
    assert store.get(KEY) == data
    assert store.get(KEY, ByteRange(9 * MB, 9 * MB + 100)) == data[9 * MB : 9 * MB + 100]
    plain = os.urandom(3 * MB)
    inner.put("H1/1.2/1.2.3/1.2.3.4", _Unseekable(plain))  # type: ignore[arg-type]
    assert inner.get("H1/1.2/1.2.3/1.2.3.4") == plain

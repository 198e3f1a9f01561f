"""An ObjectStore on S3 (AWS S3, SeaweedFS, MinIO, Ceph RGW) through boto3.

Keys are the same ``{hospital}/{study}/{series}/{sop}`` keys as on the filesystem, under an
optional prefix, so per-hospital and per-study listing and lifecycle rules are prefix rules.
Each object carries its sha256 as user metadata (``x-amz-meta-sha256``); single-part uploads
also send Content-MD5, so S3 itself refuses bytes damaged in transit. Multipart above a
threshold. boto3's own retries (standard mode, with backoff) handle 5xx, timeouts and SlowDown;
what still fails becomes StoreUnavailable (an OSError: the uploader retries it later).
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import io
import itertools
import logging
import shutil
import tempfile
from collections import deque
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, BinaryIO

import boto3
import urllib3
from boto3.s3.transfer import TransferConfig
from botocore.config import Config
from botocore.exceptions import BotoCoreError, ClientError

from image_store.errors import IntegrityError, ObjectNotFound, StoreUnavailable
from image_store.keys import check_key
from image_store.records import ByteRange, ObjectInfo

logger = logging.getLogger(__name__)

_NOT_FOUND = {"404", "NoSuchKey", "NotFound"}


@dataclass(frozen=True, slots=True)
class S3Settings:
    bucket: str
    prefix: str = ""
    endpoint_url: str | None = None
    """None for AWS; e.g. http://127.0.0.1:8333 for SeaweedFS, http://host:9000 for MinIO."""
    region: str | None = None
    multipart_threshold: int = 64 * 1024**2
    max_pool_connections: int = 32
    connect_timeout_s: float = 5.0
    read_timeout_s: float = 60.0
    max_attempts: int = 5
    """Attempts per request in all (the first one and its retries, with backoff and jitter)."""
    presigned_get: bool = True
    """Read whole objects through a presigned URL and a plain urllib3 pool instead of boto3's
    get_object request pipeline; anything but a clean 200 falls back to boto3."""


def make_client(settings: S3Settings, session: Any | None = None) -> Any:
    """A boto3 S3 client from an explicit session (credentials from the usual boto3 sources)."""
    session = session or boto3.session.Session()
    config = Config(
        retries={"total_max_attempts": settings.max_attempts, "mode": "standard"},
        max_pool_connections=settings.max_pool_connections,
        connect_timeout=settings.connect_timeout_s,
        read_timeout=settings.read_timeout_s,
        s3={"addressing_style": "path"},
        request_checksum_calculation="when_required",
        response_checksum_validation="when_required",
    )
    return session.client(
        "s3", endpoint_url=settings.endpoint_url, region_name=settings.region, config=config
    )


def _code(exc: ClientError) -> str:
    return str(exc.response.get("Error", {}).get("Code", ""))


class S3ObjectStore:
    def __init__(self, client: Any, settings: S3Settings) -> None:
        self.client = client
        self.bucket = settings.bucket
        self._http = (
            urllib3.PoolManager(
                maxsize=settings.max_pool_connections,
                timeout=urllib3.Timeout(
                    connect=settings.connect_timeout_s, read=settings.read_timeout_s
                ),
                retries=False,
            )
            if settings.presigned_get
            else None
        )
        self.prefix = settings.prefix.strip("/") + "/" if settings.prefix.strip("/") else ""
        self._transfer = TransferConfig(
            multipart_threshold=settings.multipart_threshold,
            multipart_chunksize=max(8 * 1024**2, settings.multipart_threshold // 8),
            max_concurrency=4,
        )

    def _key(self, key: str) -> str:
        return self.prefix + check_key(key)

    def put(self, key: str, data: bytes | BinaryIO, *, sha256: str | None = None) -> ObjectInfo:
        full = self._key(key)
        if not isinstance(data, bytes | bytearray | memoryview):
            if _seekable(data):
                return self._put_file(key, full, data, sha256)
            # S3 needs the hash before the upload starts: a stream that is not seekable is
            # read whole when below the multipart threshold, else copied to a temporary file
            head = _read_up_to(data, self._transfer.multipart_threshold)
            if len(head) == self._transfer.multipart_threshold:
                with tempfile.TemporaryFile() as spill:
                    spill.write(head)
                    del head
                    shutil.copyfileobj(data, spill, _CHUNK)
                    spill.seek(0)
                    return self._put_file(key, full, spill, sha256)
            data = head
        payload = bytes(data)
        digest = hashlib.sha256(payload).hexdigest()
        if sha256 is not None and digest != sha256:
            raise IntegrityError(f"object {key!r}: sha256 {digest} != expected {sha256}")
        try:
            if len(payload) < self._transfer.multipart_threshold:
                md5 = base64.b64encode(hashlib.md5(payload, usedforsecurity=False).digest())
                self.client.put_object(
                    Bucket=self.bucket,
                    Key=full,
                    Body=payload,
                    ContentMD5=md5.decode(),
                    Metadata={"sha256": digest},
                )
            else:
                self.client.upload_fileobj(
                    io.BytesIO(payload),
                    self.bucket,
                    full,
                    ExtraArgs={"Metadata": {"sha256": digest}},
                    Config=self._transfer,
                )
        except (ClientError, BotoCoreError) as exc:
            raise StoreUnavailable(f"S3 put of {key!r} failed: {exc}") from exc
        return ObjectInfo(key=key, size=len(payload), sha256=digest)

    def _put_file(self, key: str, full: str, fh: BinaryIO, sha256: str | None) -> ObjectInfo:
        """Upload a seekable stream (a large instance's file, a sealed one) without holding it:
        one pass hashes it (the sha256 goes in the object's metadata, so it is needed first), a
        second uploads it, hashing again: below the multipart threshold in one request, above
        it in parts of ``multipart_chunksize`` with at most ``max_concurrency`` parts in memory
        (:meth:`_put_parts`). Bytes that changed between the passes are an IntegrityError and
        their object is deleted."""
        start = fh.tell()
        first = hashlib.sha256()
        size = 0
        while chunk := fh.read(_CHUNK):
            first.update(chunk)
            size += len(chunk)
        digest = first.hexdigest()
        if sha256 is not None and digest != sha256:
            raise IntegrityError(f"object {key!r}: sha256 {digest} != expected {sha256}")
        fh.seek(start)
        reader = _HashingReader(fh)
        try:
            if size < self._transfer.multipart_threshold:
                self.client.upload_fileobj(
                    reader,
                    self.bucket,
                    full,
                    ExtraArgs={"Metadata": {"sha256": digest}},
                    Config=self._transfer,
                )
            else:
                self._put_parts(full, reader, digest)
        except (ClientError, BotoCoreError) as exc:
            raise StoreUnavailable(f"S3 put of {key!r} failed: {exc}") from exc
        if reader.digest.hexdigest() != digest:
            self.delete(key)
            raise IntegrityError(f"object {key!r} changed while it was uploaded")
        return ObjectInfo(key=key, size=size, sha256=digest)

    def _put_parts(self, full: str, reader: _HashingReader, digest: str) -> None:
        """A multipart upload read in order from ``reader``: each part is sent with its
        Content-MD5 on a small pool while the next is read, never more than
        ``max_concurrency`` parts read and not yet sent; aborted on any failure."""
        part_size = self._transfer.multipart_chunksize
        in_flight = max(1, self._transfer.max_request_concurrency)
        upload_id = self.client.create_multipart_upload(
            Bucket=self.bucket, Key=full, Metadata={"sha256": digest}
        )["UploadId"]

        def send(number: int, body: bytes) -> dict[str, Any]:
            md5 = base64.b64encode(hashlib.md5(body, usedforsecurity=False).digest()).decode()
            etag = self.client.upload_part(
                Bucket=self.bucket,
                Key=full,
                UploadId=upload_id,
                PartNumber=number,
                Body=body,
                ContentMD5=md5,
            )["ETag"]
            return {"ETag": etag, "PartNumber": number}

        try:
            with ThreadPoolExecutor(in_flight, thread_name_prefix="s3-part") as pool:
                pending: deque[Future[dict[str, Any]]] = deque()
                parts: list[dict[str, Any]] = []
                for number in itertools.count(1):
                    body = _read_up_to(reader, part_size)  # type: ignore[arg-type]
                    if not body and number > 1:
                        break
                    if len(pending) >= in_flight:
                        parts.append(pending.popleft().result())
                    pending.append(pool.submit(send, number, body))
                    del body
                while pending:
                    parts.append(pending.popleft().result())
            self.client.complete_multipart_upload(
                Bucket=self.bucket, Key=full, UploadId=upload_id, MultipartUpload={"Parts": parts}
            )
        except BaseException:
            with contextlib.suppress(ClientError, BotoCoreError):
                self.client.abort_multipart_upload(Bucket=self.bucket, Key=full, UploadId=upload_id)
            raise

    def get(self, key: str, byte_range: ByteRange | None = None) -> bytes:
        full = self._key(key)
        if byte_range is None and self._http is not None:
            data = self._presigned_get(full)
            if data is not None:
                return data
        kwargs: dict[str, Any] = {"Bucket": self.bucket, "Key": full}
        if byte_range is not None:
            end = "" if byte_range.end is None else str(byte_range.end - 1)
            if byte_range.end is not None and byte_range.end <= byte_range.start:
                return b""
            kwargs["Range"] = f"bytes={byte_range.start}-{end}"
        try:
            body = self.client.get_object(**kwargs)["Body"]
            try:
                return bytes(body.read())
            finally:
                body.close()
        except ClientError as exc:
            if _code(exc) in _NOT_FOUND:
                raise ObjectNotFound(f"no object {key!r}") from exc
            if _code(exc) == "InvalidRange":  # starts past the end: empty, as on a filesystem
                return b""
            raise StoreUnavailable(f"S3 get of {key!r} failed: {exc}") from exc
        except BotoCoreError as exc:
            raise StoreUnavailable(f"S3 get of {key!r} failed: {exc}") from exc

    def _presigned_get(self, full: str) -> bytes | None:
        """The object through a presigned URL (signed locally, no request) and urllib3, the
        path whole-object reads take when ``presigned_get`` is on.
        None for anything but a 200 with the whole body (a missing object, throttling, a
        server error, a cut or stalled connection): the caller then asks boto3, whose retries
        and error mapping stay the only behaviour on failure."""
        assert self._http is not None
        try:
            url = self.client.generate_presigned_url(
                "get_object", Params={"Bucket": self.bucket, "Key": full}, ExpiresIn=300
            )
            resp = self._http.request("GET", url, preload_content=True, redirect=False)
        except (urllib3.exceptions.HTTPError, OSError, BotoCoreError) as exc:
            logger.debug("presigned GET of %s failed (%s): asking boto3", full, exc)
            return None
        if resp.status != 200:
            return None
        data: bytes = resp.data  # urllib3 2 refuses a body shorter than its Content-Length
        return data

    def stat(self, key: str) -> ObjectInfo | None:
        try:
            head = self.client.head_object(Bucket=self.bucket, Key=self._key(key))
        except ClientError as exc:
            if _code(exc) in _NOT_FOUND:
                return None
            raise StoreUnavailable(f"S3 head of {key!r} failed: {exc}") from exc
        except BotoCoreError as exc:
            raise StoreUnavailable(f"S3 head of {key!r} failed: {exc}") from exc
        meta = head.get("Metadata") or {}
        return ObjectInfo(
            key=key, size=int(head["ContentLength"]), sha256=str(meta.get("sha256", ""))
        )

    def delete(self, key: str) -> None:
        try:
            self.client.delete_object(Bucket=self.bucket, Key=self._key(key))
        except (ClientError, BotoCoreError) as exc:
            raise StoreUnavailable(f"S3 delete of {key!r} failed: {exc}") from exc

    def iter_keys(self, prefix: str) -> Iterator[str]:
        paginator = self.client.get_paginator("list_objects_v2")
        try:
            for page in paginator.paginate(Bucket=self.bucket, Prefix=self.prefix + prefix):
                for obj in page.get("Contents", []):
                    yield str(obj["Key"])[len(self.prefix) :]
        except (ClientError, BotoCoreError) as exc:
            raise StoreUnavailable(f"S3 listing of {prefix!r} failed: {exc}") from exc


_CHUNK = 8 << 20


def _read_up_to(fh: BinaryIO, limit: int) -> bytes:
    """Up to ``limit`` bytes of a stream (fewer only at its end)."""
    parts: list[bytes] = []
    want = limit
    while want > 0:
        chunk = fh.read(min(want, _CHUNK))
        if not chunk:
            break
        parts.append(chunk)
        want -= len(chunk)
    return b"".join(parts)


def _seekable(fh: BinaryIO) -> bool:
    try:
        return bool(fh.seekable())
    except (AttributeError, OSError, ValueError):
        return False


class _HashingReader(io.RawIOBase):
    """A file read through once by boto3's upload, hashed on the way."""

    def __init__(self, fh: BinaryIO) -> None:
        self._fh = fh
        self.digest = hashlib.sha256()

    def readable(self) -> bool:
        return True

    def read(self, size: int = -1) -> bytes:
        chunk = self._fh.read(size)
        self.digest.update(chunk)
        return chunk

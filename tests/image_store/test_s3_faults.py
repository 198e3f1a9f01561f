"""S3 faults against a real SeaweedFS behind a fault-injecting HTTP proxy: throttling (503
SlowDown), server errors (500) and stalls past the read timeout are retried with backoff and
succeed, or surface as StoreUnavailable naming the key once the retry budget is spent; objects
missing or changed in the bucket are reported by scrub and refused by the read path."""

from __future__ import annotations

import base64
import hashlib
import http.client
import os
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import urlsplit

import pytest

from cloudfilm.synth import synthesize_study
from image_store.errors import StoreUnavailable
from image_store.index.sqlite import SqliteIndex
from image_store.ingest import LocalIngest
from image_store.key_providers import StaticKeyProvider
from image_store.objects.encrypted import EncryptedObjectStore
from image_store.objects.s3 import S3ObjectStore, S3Settings, make_client
from image_store.ports import ObjectStore
from image_store.records import InstanceQuery
from image_store.scrub import scrub
from tests.contracts.object_store import KEY
from tests.servers import Seaweed, seaweedfs

SLOWDOWN = (
    b'<?xml version="1.0" encoding="UTF-8"?><Error><Code>SlowDown</Code>'
    b"<Message>Please reduce your request rate.</Message></Error>"
)
INTERNAL = (
    b'<?xml version="1.0" encoding="UTF-8"?><Error><Code>InternalError</Code>'
    b"<Message>We encountered an internal error.</Message></Error>"
)


@dataclass
class Faults:
    """What the proxy does to the next requests: ('503'|'500'|'stall', how many; -1 = all)."""

    mode: str = ""
    remaining: int = 0
    stall_s: float = 0.0
    seen: list[str] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def set(self, mode: str, count: int, stall_s: float = 0.0) -> None:
        with self.lock:
            self.mode, self.remaining, self.stall_s = mode, count, stall_s
            self.seen.clear()

    def take(self, method: str) -> str:
        with self.lock:
            self.seen.append(method)
            if self.remaining == 0:
                return ""
            if self.remaining > 0:
                self.remaining -= 1
            return self.mode


def _proxy(upstream: str, faults: Faults) -> ThreadingHTTPServer:
    target = urlsplit(upstream)

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, format: str, *args: object) -> None:
            pass

        def _relay(self) -> None:
            length = int(self.headers.get("Content-Length") or 0)
            body = self.rfile.read(length) if length else None
            fault = faults.take(self.command)
            if fault == "stall":  # a hung server: no answer before the client gives up
                time.sleep(faults.stall_s)
                self.close_connection = True
                return
            if fault in ("503", "500"):
                payload = SLOWDOWN if fault == "503" else INTERNAL
                self.send_response(int(fault))
                self.send_header("Content-Type", "application/xml")
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)
                return
            conn = http.client.HTTPConnection(target.hostname, target.port, timeout=30)
            try:
                conn.putrequest(self.command, self.path, skip_host=True, skip_accept_encoding=True)
                for name, value in self.headers.items():  # Host too: the signature covers it
                    conn.putheader(name, value)
                conn.endheaders(body)
                reply = conn.getresponse()
                data = reply.read()
            finally:
                conn.close()
            self.send_response(reply.status)
            for name, value in reply.getheaders():
                if name.lower() not in ("content-length", "transfer-encoding", "connection"):
                    self.send_header(name, value)
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            if fault == "cut":  # the connection drops half way through the body
                self.wfile.write(data[: len(data) // 2])
                self.close_connection = True
                return
            if self.command != "HEAD":
                self.wfile.write(data)

        do_GET = do_PUT = do_HEAD = do_DELETE = do_POST = _relay  # noqa: N815

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server


@pytest.fixture(scope="module")
def weed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Seaweed]:
    with seaweedfs(tmp_path_factory.mktemp("seaweed")) as server:
        server.client().create_bucket(Bucket="faults")
        yield server


@pytest.fixture
def faulty(weed: Seaweed) -> Iterator[tuple[S3ObjectStore, Faults]]:
    faults = Faults()
    proxy = _proxy(weed.endpoint, faults)
    import boto3

    settings = S3Settings(
        bucket="faults",
        prefix=f"t{time.monotonic_ns()}",
        endpoint_url=f"http://127.0.0.1:{proxy.server_address[1]}",
        max_attempts=3,
        read_timeout_s=1.0,
        connect_timeout_s=1.0,
    )
    session = boto3.session.Session(
        aws_access_key_id=weed.access_key,
        aws_secret_access_key=weed.secret_key,
        region_name="us-east-1",
    )
    yield S3ObjectStore(make_client(settings, session), settings), faults
    proxy.shutdown()
    proxy.server_close()


@pytest.mark.parametrize("mode", ["503", "500", "stall"])
def test_transient_s3_failures_are_retried_until_they_pass(
    faulty: tuple[S3ObjectStore, Faults], mode: str
) -> None:
    store, faults = faulty
    faults.set(mode, 2, stall_s=2.0)  # two failures fit in a budget of three attempts
    store.put(KEY, b"retried put")
    assert faults.seen == ["PUT", "PUT", "PUT"]
    faults.set(mode, 2, stall_s=2.0)
    assert store.get(KEY) == b"retried put"
    assert faults.seen == ["GET", "GET", "GET"]


@pytest.mark.parametrize(
    ("mode", "says"), [("503", "SlowDown"), ("500", "InternalError"), ("stall", "timeout")]
)
def test_s3_failures_past_the_retry_budget_are_store_unavailable_naming_the_key(
    faulty: tuple[S3ObjectStore, Faults], mode: str, says: str
) -> None:
    store, faults = faulty
    faults.set(mode, -1, stall_s=2.0)
    with pytest.raises(StoreUnavailable, match=f"(?s)S3 put of '{KEY}' failed.*{says}"):
        store.put(KEY, b"never stored")
    assert faults.seen == ["PUT"] * 3  # the whole budget, then a clear error
    faults.set("", 0)
    assert store.stat(KEY) is None
    faults.set(mode, -1, stall_s=2.0)
    with pytest.raises(OSError, match=says):  # what the uploader's retry loop catches
        store.get(KEY)


def test_a_read_cut_short_is_never_returned_and_is_read_again(
    faulty: tuple[S3ObjectStore, Faults],
) -> None:
    store, faults = faulty
    payload = os.urandom(300_000)
    store.put(KEY, payload)
    faults.set("", 0)
    faults.seen.clear()
    assert store.get(KEY) == payload
    assert faults.seen == ["GET"]  # a whole object in one request (the presigned fast path)
    faults.set("cut", 1)
    assert store.get(KEY) == payload
    assert faults.seen == ["GET", "GET"]


def _encrypted(store: S3ObjectStore) -> EncryptedObjectStore:
    key = base64.b64encode(os.urandom(32)).decode()
    return EncryptedObjectStore(
        store, StaticKeyProvider.from_mapping({"*": {"keys": {"k": key}}}, "t")
    )


@pytest.mark.parametrize("encrypted", [False, True], ids=["plain", "encrypted"])
def test_objects_missing_or_changed_in_s3_are_reported_by_scrub_and_refused_on_read(
    faulty: tuple[S3ObjectStore, Faults], tmp_path: Path, encrypted: bool
) -> None:
    raw, _ = faulty
    store: ObjectStore = _encrypted(raw) if encrypted else raw
    paths = synthesize_study(tmp_path / "s", modality="MR", images=3, seed=9)
    index = SqliteIndex(tmp_path / "index.sqlite")
    LocalIngest(store, index).ingest("HOSP1", [p.read_bytes() for p in paths])
    insts = index.find_instances(InstanceQuery(), limit=10)
    assert scrub(index, store).ok
    raw.delete(insts[0].object_key)
    changed = bytearray(raw.get(insts[1].object_key))
    changed[-3] ^= 0x20
    raw.put(insts[1].object_key, bytes(changed))
    report = scrub(index, store)
    assert report.missing == [insts[0].object_key] and report.corrupt == [insts[1].object_key]
    assert report.checked == 3 and not report.unreadable
    with pytest.raises(LookupError):
        store.get(insts[0].object_key)
    try:  # the read path hashes (or authenticates) what it got: never the changed bytes
        data = store.get(insts[1].object_key)
    except ValueError:
        pass
    else:
        assert hashlib.sha256(data).hexdigest() != insts[1].sha256
    index.close()

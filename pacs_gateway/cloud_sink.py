"""Delivering to the regional cloud over its ingest API: the gateway side of the wire.

``HttpIngestSink`` is the IngestSink the uploader calls when the gateway and the cloud are
separate programs. It keeps a bearer token (traded for a signed assertion at
``/api/gateway/token``, renewed a minute before it expires and again after a 401), and sends
each batch as one ``multipart/related; type="application/dicom"`` request whose body is
streamed from the instances' bytes (a Content-Length, each part with its
``Content-Digest: sha-256``), over a keep-alive pool of ``requests`` connections: one per
uploader worker, so batches go up in parallel. ``requests`` honours ``HTTPS_PROXY`` /
``NO_PROXY`` (a hospital's proxy) and verifies TLS against the system's CAs or ``ca_bundle``.

Answers map to what the uploader understands: per-instance ``stored``/``duplicate`` → ok,
``refused`` → refused for good (moved to ``failed/``), except a refusal the cloud marks
``retry`` (the bytes did not arrive as sent), which fails the batch. Connection errors, 5xx,
a cut-short batch (400), a 401 after a fresh token and a 403 (revoked credential) raise OSError:
the uploader backs off and retries, and the spool keeps every instance meanwhile.
"""

from __future__ import annotations

import base64
import hashlib
import logging
import secrets
import ssl
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import requests
from requests.adapters import HTTPAdapter

from image_store.gateway_assertion import BATCH_PATH
from image_store.ingest import IngestItem, IngestOutcome, item_size
from pacs_gateway.cloud_client import CloudSession
from pacs_gateway.credential import GatewayCredential, token_url
from pacs_gateway.errors import GatewayError

logger = logging.getLogger(__name__)

ASSERTION_TYPE = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"


class CloudUnavailable(GatewayError, OSError):
    """The cloud did not take the batch (unreachable, 5xx, a cut-short body): retry later."""


class CredentialRefused(GatewayError, OSError):
    """The cloud refuses this gateway's credential (revoked, unknown, clock far off): nothing
    is delivered until an operator fixes it; the spool keeps the instances."""


@dataclass(frozen=True, slots=True)
class CloudSinkSettings:
    cloud_url: str
    """The cloud's base URL, e.g. ``https://cloud.example`` (the credential file's by default)."""
    ca_bundle: Path | None = None
    """PEM CA certificates to verify the cloud with (a private CA); None: the system's."""
    connections: int = 4
    """Keep-alive connections kept open to the cloud (at least the uploader's workers)."""
    connect_timeout_s: float = 10.0
    read_timeout_s: float = 120.0
    renew_before_s: float = 60.0
    """Renew the token this long before it expires."""
    large_object_bytes: int = 64 * 1024**2
    """Instance files from this size up go through a resumable upload session
    (pacs_gateway.large_upload); 0: never."""
    large_chunk_bytes: int = 8 * 1024**2
    """Bytes per chunk of an upload session."""
    pinned_certificate: Path | None = None
    """Trust exactly this certificate for HTTPS, whatever its chain and names (``serve``'s
    embedded gateway reaching its own API over loopback); None: verify as usual."""


@dataclass(frozen=True, slots=True)
class _Token:
    value: str
    expires_at: float
    max_part_bytes: int
    max_request_bytes: int


_READ_BYTES = 1 << 20
"""Chunk size of a part streamed from its file."""


def sha256_digest(item: IngestItem, size: int | None = None) -> bytes:
    """The SHA-256 of an instance's bytes, or of the first ``size`` bytes of its file (all of
    it by default), read a chunk at a time."""
    if not isinstance(item, Path):
        return hashlib.sha256(item).digest()
    h = hashlib.sha256()
    for chunk in file_chunks(item, item.stat().st_size if size is None else size):
        h.update(chunk)
    return h.digest()


class _Body:
    """A multipart/related body streamed from the items (bytes, or files read a chunk at a
    time: a large instance is never held in memory), with a known length."""

    def __init__(self, items: Sequence[IngestItem], boundary: str) -> None:
        self.items = items
        self.sizes = [item_size(data) for data in items]
        self.heads = [
            (
                f"--{boundary}\r\nContent-Type: application/dicom\r\n"
                f"Content-Length: {size}\r\n"
                f"Content-Digest: sha-256=:"
                f"{base64.b64encode(sha256_digest(data)).decode()}:\r\n\r\n"
            ).encode()
            for data, size in zip(items, self.sizes, strict=True)
        ]
        self.tail = f"--{boundary}--\r\n".encode()
        self.length = sum(len(h) + n + 2 for h, n in zip(self.heads, self.sizes, strict=True))
        self.length += len(self.tail)

    def __len__(self) -> int:
        return self.length

    def __iter__(self) -> Iterator[bytes]:
        for head, data, size in zip(self.heads, self.items, self.sizes, strict=True):
            yield head
            if isinstance(data, Path):
                yield from file_chunks(data, size)
            else:
                yield data
            yield b"\r\n"
        yield self.tail


def file_chunks(path: Path, size: int, offset: int = 0) -> Iterator[bytes]:
    """``size`` bytes of the file from ``offset``, in chunks; CloudUnavailable if it is shorter
    (the body's length was announced: a changed file must fail the request, not send other
    bytes)."""
    left = size
    with open(path, "rb") as fh:
        fh.seek(offset)
        while left:
            chunk = fh.read(min(_READ_BYTES, left))
            if not chunk:
                raise CloudUnavailable(f"{path.name} shrank while it was being sent")
            left -= len(chunk)
            yield chunk


class PinnedAdapter(HTTPAdapter):
    """Trusts exactly one certificate, whatever its chain and names."""

    def __init__(self, cert_file: Path, connections: int) -> None:
        self._ctx = ssl.create_default_context(cafile=str(cert_file))
        self._ctx.check_hostname = False
        self._ctx.verify_flags |= ssl.VERIFY_X509_PARTIAL_CHAIN
        super().__init__(pool_connections=1, pool_maxsize=connections, max_retries=0)

    def init_poolmanager(self, *args: Any, **kwargs: Any) -> None:
        kwargs["ssl_context"] = self._ctx
        kwargs["assert_hostname"] = False
        super().init_poolmanager(*args, **kwargs)


class HttpIngestSink:
    """IngestSink over the cloud's ingest API (thread-safe: the uploader's workers share it)."""

    def __init__(
        self,
        credential: GatewayCredential,
        settings: CloudSinkSettings,
        *,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.credential = credential
        self.settings = settings
        self.base = settings.cloud_url.rstrip("/")
        self.clock = clock
        self.session = CloudSession()
        adapter = HTTPAdapter(
            pool_connections=1, pool_maxsize=max(1, settings.connections), max_retries=0
        )
        self.session.mount("http://", adapter)
        if settings.pinned_certificate is not None:
            adapter = PinnedAdapter(settings.pinned_certificate, max(1, settings.connections))
        self.session.mount("https://", adapter)
        self.session.verify = str(settings.ca_bundle) if settings.ca_bundle else True
        self._token: _Token | None = None
        self._lock = threading.Lock()
        self._warned_hospital = False
        self.exchanges = 0
        """Tokens obtained so far (for metrics and tests)."""

    def close(self) -> None:
        self.session.close()

    # -- tokens ------------------------------------------------------------------------------

    def _post(self, url: str, **kwargs: Any) -> requests.Response:
        try:
            return self.session.post(
                url,
                timeout=(self.settings.connect_timeout_s, self.settings.read_timeout_s),
                allow_redirects=False,
                **kwargs,
            )
        except requests.RequestException as exc:
            raise CloudUnavailable(f"the cloud at {self.base} cannot be reached: {exc}") from exc

    def token(self, *, renew: bool = False) -> _Token:
        """A live token, exchanged anew when there is none, it is about to expire or
        ``renew`` (after a 401)."""
        with self._lock:
            now = self.clock()
            current = self._token
            if (
                current is not None
                and not renew
                and current.expires_at - self.settings.renew_before_s > now
            ):
                return current
            assertion = self.credential.assertion(self.base, now=now)
            resp = self._post(
                token_url(self.base),
                data={
                    "grant_type": "client_credentials",
                    "client_assertion_type": ASSERTION_TYPE,
                    "client_assertion": assertion,
                },
            )
            if resp.status_code in (400, 401, 403):
                message = error_text(resp)
                logger.error(
                    "the cloud refuses gateway credential %s (%d): %s; instances stay spooled",
                    self.credential.credential_id,
                    resp.status_code,
                    message,
                )
                raise CredentialRefused(
                    f"credential {self.credential.credential_id} refused "
                    f"({resp.status_code}): {message}"
                )
            if resp.status_code != 200:
                raise CloudUnavailable(f"token exchange answered {resp.status_code}")
            try:
                body = resp.json()
                token = _Token(
                    str(body["access_token"]),
                    now + float(body["expires_in"]),
                    int(body.get("max_part_bytes", 0)),
                    int(body.get("max_request_bytes", 0)),
                )
            except (ValueError, KeyError, TypeError) as exc:
                raise CloudUnavailable("the token endpoint's answer cannot be read") from exc
            if body.get("hospital") != self.credential.hospital:
                raise CredentialRefused(
                    f"the cloud says credential {self.credential.credential_id} is for "
                    f"{body.get('hospital')!r}, the file says {self.credential.hospital!r}"
                )
            self._token = token
            self.exchanges += 1
            return token

    # -- batches -----------------------------------------------------------------------------

    def ingest(self, hospital: str, items: Sequence[IngestItem]) -> list[IngestOutcome]:
        """Deliver ``items`` as the credential's hospital (``hospital`` is what the gateway
        is configured as: a different one is logged, never sent; the cloud takes the hospital
        from the credential)."""
        if hospital != self.credential.hospital and not self._warned_hospital:
            self._warned_hospital = True
            logger.warning(
                "gateway configured as %s delivers with a credential of %s: the cloud stores "
                "under %s",
                hospital,
                self.credential.hospital,
                self.credential.hospital,
            )
        token = self.token()
        outcomes: list[IngestOutcome | None] = [None] * len(items)
        group: list[int] = []
        group_bytes = 0
        limit = token.max_request_bytes or (1 << 62)
        for i, data in enumerate(items):
            size = item_size(data)
            if isinstance(data, Path) and 0 < self.settings.large_object_bytes <= size:
                from pacs_gateway.large_upload import upload_large  # it builds on this module

                outcomes[i] = upload_large(self, data, self.settings.large_chunk_bytes)
                continue
            if token.max_part_bytes and size > token.max_part_bytes:
                outcomes[i] = IngestOutcome(
                    ok=False,
                    reason=f"larger than the {token.max_part_bytes} bytes the cloud accepts",
                )
                continue
            if group and group_bytes + size + 512 > limit:
                self._send(items, group, outcomes)
                group, group_bytes = [], 0
            group.append(i)
            group_bytes += size + 512
        if group:
            self._send(items, group, outcomes)
        return [o if o is not None else IngestOutcome(ok=False, reason="lost") for o in outcomes]

    def _send(
        self, items: Sequence[IngestItem], which: list[int], outcomes: list[IngestOutcome | None]
    ) -> None:
        batch = [items[i] for i in which]
        resp = self._post_batch(batch, renew=False)
        if resp.status_code == 401:
            resp.close()
            resp = self._post_batch(batch, renew=True)
        if resp.status_code in (401, 403):
            message = error_text(resp)
            logger.error(
                "the cloud refuses gateway credential %s (%d): %s; instances stay spooled",
                self.credential.credential_id,
                resp.status_code,
                message,
            )
            raise CredentialRefused(f"batch refused ({resp.status_code}): {message}")
        if resp.status_code != 200:
            raise CloudUnavailable(
                f"the cloud answered {resp.status_code} to a batch of {len(batch)}: "
                f"{error_text(resp)}"
            )
        try:
            listed = resp.json()["instances"]
            if len(listed) != len(batch):
                raise ValueError(f"{len(listed)} outcomes for {len(batch)} instances")
            mapped = [ingest_outcome(entry) for entry in listed]
        except (ValueError, KeyError, TypeError) as exc:
            raise CloudUnavailable(f"the cloud's answer to a batch cannot be read: {exc}") from exc
        for i, outcome in zip(which, mapped, strict=True):
            outcomes[i] = outcome

    def _post_batch(self, batch: list[IngestItem], *, renew: bool) -> requests.Response:
        token = self.token(renew=renew)
        boundary = "cfb-" + secrets.token_hex(12)
        return self._post(
            self.base + BATCH_PATH,
            data=_Body(batch, boundary),
            headers={
                "Authorization": f"Bearer {token.value}",
                "Content-Type": (
                    f'multipart/related; type="application/dicom"; boundary={boundary}'
                ),
                "Accept": "application/json",
            },
        )


def error_text(resp: requests.Response) -> str:
    """The error message of a JSON error answer (cut to 300 characters), or its raw text."""
    try:
        return str(resp.json().get("error", ""))[:300]
    except (ValueError, AttributeError):  # not JSON, or JSON that is not an object
        return resp.text[:300]


def ingest_outcome(entry: dict[str, Any]) -> IngestOutcome:
    """One instance's answer; CloudUnavailable for a refusal the cloud marks transient."""
    kind = entry["outcome"]
    if kind in ("stored", "duplicate"):
        return IngestOutcome(
            ok=True,
            sop_uid=str(entry["sop_uid"]),
            study_uid=str(entry["study_uid"]),
            series_uid=str(entry["series_uid"]),
        )
    if kind != "refused":
        raise ValueError(f"unknown outcome {kind!r}")
    if entry.get("retry"):
        raise CloudUnavailable(f"part {entry.get('part')} must be sent again: {entry['reason']}")
    return IngestOutcome(ok=False, sop_uid=str(entry.get("sop_uid", "")), reason=entry["reason"])

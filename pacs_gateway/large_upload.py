"""A large instance delivered through a resumable upload session of the cloud
(viewer_api/upload_sessions.py): opened with its size, sha256 and SOP Instance UID, sent in
chunks streamed from the spool file, resumed where the cloud's bytes end after a crash or an
outage, then finalized (the cloud checks the hash and commits it like a part of a batch).

The session id is remembered beside the spool file, in ``<entry>.upload`` (JSON: session,
size, sha256; written 0600 and fsynced before the first chunk), so a gateway that restarts
asks the cloud for the session's offset and continues from there, not from byte 0. The
sidecar is removed once the instance has its outcome, or when the cloud no longer knows the
session (expired, or dropped after a hash mismatch): the next attempt opens a new one.

Transient failures (the cloud unreachable, 5xx, a dropped session) raise
pacs_gateway.cloud_sink.CloudUnavailable and a refused credential CredentialRefused, like a
batch: the uploader backs off and retries, and the spool keeps the instance.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import requests

from image_store.errors import ImageStoreError
from image_store.fsutil import fsync_dir
from image_store.ingest import IngestOutcome
from image_store.metadata import read_header
from pacs_gateway.cloud_sink import (
    CloudUnavailable,
    CredentialRefused,
    HttpIngestSink,
    error_text,
    file_chunks,
    ingest_outcome,
    sha256_digest,
)

logger = logging.getLogger(__name__)

UPLOADS_PATH = "/gateway/uploads"
OFFSET_HEADER = "Upload-Offset"
SIDECAR_SUFFIX = ".upload"
_MAX_CONFLICTS = 8
"""409s in a row (another writer, a lost answer) before the attempt is given up for now."""


@dataclass(frozen=True, slots=True)
class Sidecar:
    session: str
    size: int
    sha256: str


def sidecar_path(path: Path) -> Path:
    return path.with_name(path.name + SIDECAR_SUFFIX)


def read_sidecar(path: Path) -> Sidecar | None:
    """The session remembered for the spool file at ``path`` (None if none or unreadable)."""
    try:
        raw = json.loads(sidecar_path(path).read_text(encoding="utf-8"))
        return Sidecar(str(raw["session"]), int(raw["size"]), str(raw["sha256"]))
    except (OSError, ValueError, KeyError, TypeError):
        return None


def _write_sidecar(path: Path, car: Sidecar) -> None:
    target = sidecar_path(path)
    tmp = target.with_name(target.name + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as fh:
        json.dump({"session": car.session, "size": car.size, "sha256": car.sha256}, fh)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, target)
    fsync_dir(target.parent)


def _drop_sidecar(path: Path) -> None:
    with contextlib.suppress(FileNotFoundError):
        sidecar_path(path).unlink()


class _Range:
    """``length`` bytes of a file from ``offset``, read a MiB at a time (a known length, so
    ``requests`` sends a Content-Length)."""

    def __init__(self, path: Path, offset: int, length: int) -> None:
        self.path, self.offset, self.length = path, offset, length

    def __len__(self) -> int:
        return self.length

    def __iter__(self) -> Iterator[bytes]:
        return file_chunks(self.path, self.length, self.offset)


class LargeUpload:
    """One instance's delivery through an upload session, over ``sink``'s connections and
    token."""

    def __init__(self, sink: HttpIngestSink, path: Path, chunk_bytes: int) -> None:
        self.sink = sink
        self.path = path
        self.chunk_bytes = max(1, chunk_bytes)
        self.sent_bytes = 0
        """Chunk bytes sent in this attempt (for tests and metrics)."""
        self.resumed_from = 0
        """The offset this attempt started sending from."""

    def _request(
        self,
        method: str,
        url: str,
        *,
        renew: bool = False,
        headers: dict[str, str] | None = None,
        **kwargs: Any,
    ) -> requests.Response:
        token = self.sink.token(renew=renew)
        extra = headers or {}
        try:
            resp = self.sink.session.request(
                method,
                self.sink.base + url,
                headers={**extra, "Authorization": f"Bearer {token.value}"},
                timeout=(self.sink.settings.connect_timeout_s, self.sink.settings.read_timeout_s),
                allow_redirects=False,
                **kwargs,
            )
        except requests.RequestException as exc:
            raise CloudUnavailable(
                f"the cloud at {self.sink.base} cannot be reached: {exc}"
            ) from exc
        if resp.status_code == 401 and not renew:
            resp.close()
            return self._request(method, url, renew=True, headers=extra, **kwargs)
        if resp.status_code in (401, 403):
            raise CredentialRefused(f"upload refused ({resp.status_code}): {error_text(resp)}")
        if resp.status_code >= 500:
            raise CloudUnavailable(f"the cloud answered {resp.status_code}: {error_text(resp)}")
        return resp

    def _open(self, size: int) -> Sidecar | IngestOutcome:
        """A new session (remembered in the sidecar), or the refusal of a too-large instance."""
        try:
            sop_uid = read_header(self.path).sop_uid
        except ImageStoreError as exc:
            return IngestOutcome(ok=False, reason=f"not a DICOM instance: {exc}")
        sha = sha256_digest(self.path, size).hex()
        resp = self._request(
            "POST", UPLOADS_PATH, json={"size": size, "sha256": sha, "sop_uid": sop_uid}
        )
        if resp.status_code == 413:
            return IngestOutcome(ok=False, sop_uid=sop_uid, reason=error_text(resp))
        if resp.status_code not in (200, 201):
            raise CloudUnavailable(
                f"the cloud answered {resp.status_code} to an upload session: {error_text(resp)}"
            )
        car = Sidecar(str(resp.json()["session"]), size, sha)
        _write_sidecar(self.path, car)
        logger.info("%s goes up through upload session %s", self.path.name, car.session)
        return car

    def _offset(self, car: Sidecar) -> int | None:
        """The bytes the cloud has of the session, or None if it no longer knows it."""
        resp = self._request("HEAD", f"{UPLOADS_PATH}/{car.session}")
        if resp.status_code == 404:
            return None
        if resp.status_code != 200:
            raise CloudUnavailable(f"the cloud answered {resp.status_code} to a session's offset")
        return int(resp.headers[OFFSET_HEADER])

    def run(self) -> IngestOutcome:
        """Deliver the file; its outcome (refused for good, or ok)."""
        size = self.path.stat().st_size
        car = read_sidecar(self.path)
        if car is not None and car.size != size:
            car = None
        offset = self._offset(car) if car is not None else None
        if car is None or offset is None:
            opened = self._open(size)
            if isinstance(opened, IngestOutcome):
                _drop_sidecar(self.path)
                return opened
            car = opened
            offset = self._offset(car)
            if offset is None:
                _drop_sidecar(self.path)
                raise CloudUnavailable(f"upload session {car.session} vanished")
        elif offset:
            logger.info(
                "%s resumes upload session %s at byte %d of %d",
                self.path.name,
                car.session,
                offset,
                size,
            )
        self.resumed_from = offset
        conflicts = 0
        while offset < size:
            length = min(self.chunk_bytes, size - offset)
            resp = self._request(
                "PATCH",
                f"{UPLOADS_PATH}/{car.session}",
                data=_Range(self.path, offset, length),
                headers={
                    OFFSET_HEADER: str(offset),
                    "Content-Type": "application/offset+octet-stream",
                },
            )
            if resp.status_code == 409:
                conflicts += 1
                if conflicts > _MAX_CONFLICTS:
                    raise CloudUnavailable(f"upload session {car.session} stays in conflict")
                known = int(resp.headers.get(OFFSET_HEADER, offset))
                if known == offset:  # another request (a cut one, say) still holds the session
                    time.sleep(min(2.0, 0.1 * conflicts))
                offset = known
                continue
            if resp.status_code == 404:
                _drop_sidecar(self.path)
                raise CloudUnavailable(f"upload session {car.session} expired: starting anew")
            if resp.status_code != 204:
                raise CloudUnavailable(
                    f"the cloud answered {resp.status_code} to a chunk: {error_text(resp)}"
                )
            conflicts = 0
            self.sent_bytes += length
            offset = int(resp.headers[OFFSET_HEADER])
        return self._finalize(car)

    def _finalize(self, car: Sidecar) -> IngestOutcome:
        resp = self._request("POST", f"{UPLOADS_PATH}/{car.session}/finalize")
        if resp.status_code in (400, 404):
            # the staged bytes were not the file's (dropped by the cloud), or the session is
            # gone: the next attempt sends the file again from its start
            _drop_sidecar(self.path)
            raise CloudUnavailable(
                f"upload session {car.session} not finalized ({resp.status_code}): "
                f"{error_text(resp)}"
            )
        if resp.status_code != 200:
            raise CloudUnavailable(
                f"the cloud answered {resp.status_code} to finalizing upload session "
                f"{car.session}: {error_text(resp)}"
            )
        try:
            outcome = ingest_outcome(resp.json()["instance"])
        except (ValueError, KeyError, TypeError) as exc:
            raise CloudUnavailable(
                f"the cloud's answer to a finalize cannot be read: {exc}"
            ) from exc
        _drop_sidecar(self.path)
        logger.info(
            "%s delivered through upload session %s (%d bytes sent from byte %d)",
            self.path.name,
            car.session,
            self.sent_bytes,
            self.resumed_from,
        )
        return outcome


def upload_large(sink: HttpIngestSink, path: Path, chunk_bytes: int) -> IngestOutcome:
    """Deliver the instance in ``path`` through a resumable upload session (see the module's
    docstring)."""
    return LargeUpload(sink, path, chunk_bytes).run()

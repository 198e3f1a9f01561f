"""multipart/related framing (RFC 2387), Accept negotiation for WADO-RS, and the receiving of
a STOW-RS body: each part streamed to its own temporary file as it arrives, under a per-part and
a per-request cap, so no request is ever held in memory whole."""

from __future__ import annotations

import asyncio
import os
import secrets
import shutil
import tempfile
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path

from aiohttp import BodyPartReader, MultipartReader, web

from viewer_api.errors import BadRequest, NotAcceptable, PayloadTooLarge

DICOM = "application/dicom"


def new_boundary() -> str:
    return "cloudfilm-" + secrets.token_hex(16)


def content_type(boundary: str, part_type: str = DICOM) -> str:
    return f'multipart/related; type="{part_type}"; boundary={boundary}'


def part_header(boundary: str, part_type: str = DICOM, *, first: bool) -> bytes:
    lead = b"" if first else b"\r\n"
    return lead + f"--{boundary}\r\nContent-Type: {part_type}\r\n\r\n".encode()


def closing(boundary: str) -> bytes:
    return f"\r\n--{boundary}--\r\n".encode()


WRITE_BYTES = 1 << 20
"""Bytes gathered in memory before they are written to the part's file (in a worker thread)."""
MAX_PARTS = 10_000
"""Most parts one request may carry (each is a file while the request lasts)."""


@dataclass(frozen=True, slots=True)
class ReceivedPart:
    """One part of a multipart/related body, on disk."""

    path: Path | None
    """Its temporary file (mode 0600); None when the part was over the per-part cap (its bytes
    were read and dropped)."""
    size: int


@asynccontextmanager
async def part_files(tmp_dir: Path | None) -> AsyncIterator[Path]:
    """A private directory (0700) for one request's parts, removed with everything in it when
    the request is done, whatever happened."""
    if tmp_dir is not None:
        await asyncio.to_thread(tmp_dir.mkdir, mode=0o700, parents=True, exist_ok=True)
    where = Path(await asyncio.to_thread(tempfile.mkdtemp, prefix="stow-", dir=tmp_dir))
    try:
        yield where
    finally:
        await asyncio.to_thread(shutil.rmtree, where, True)


def _open_part(where: Path, n: int) -> int:
    return os.open(where / f"part-{n:05d}.dcm", os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]


async def _spool_part(
    part: BodyPartReader, where: Path, n: int, *, max_part: int, budget: int
) -> ReceivedPart:
    """Stream one part to ``where``; PayloadTooLarge once more than ``budget`` bytes came."""
    fd = await asyncio.to_thread(_open_part, where, n)
    path: Path | None = where / f"part-{n:05d}.dcm"
    size = 0
    pending: list[bytes] = []
    pending_bytes = 0
    try:
        while chunk := await part.read_chunk(WRITE_BYTES):
            size += len(chunk)
            if size > budget:
                raise PayloadTooLarge(
                    "the request body is larger than this server accepts in one request"
                )
            if size > max_part:
                path, pending, pending_bytes = None, [], 0  # the rest is read and dropped
                continue
            pending.append(chunk)
            pending_bytes += len(chunk)
            if pending_bytes >= WRITE_BYTES:
                await asyncio.to_thread(_write_all, fd, b"".join(pending))
                pending, pending_bytes = [], 0
        if pending:
            await asyncio.to_thread(_write_all, fd, b"".join(pending))
    finally:
        await asyncio.to_thread(os.close, fd)
    return ReceivedPart(path, size)


async def receive_dicom_parts(
    request: web.Request, where: Path, *, max_part: int, max_total: int
) -> list[ReceivedPart]:
    """The application/dicom parts of a multipart/related request body, each streamed to a file
    in ``where`` as it arrives. A part over ``max_part`` bytes comes back without a file (its
    instance fails alone); a body over ``max_total`` bytes (declared or read) is
    PayloadTooLarge before the rest is read. NotAcceptable for another content type,
    BadRequest for a malformed body or a part of another type."""
    ctype = request.headers.get("Content-Type", "")
    if not ctype.lower().startswith("multipart/related"):
        raise NotAcceptable('STOW-RS takes multipart/related; type="application/dicom"')
    if request.content_length is not None and request.content_length > max_total:
        raise PayloadTooLarge(
            f"the request body ({request.content_length} bytes) is larger than the "
            f"{max_total} bytes this server accepts in one request"
        )
    out: list[ReceivedPart] = []
    received = 0
    try:
        reader = MultipartReader(request.headers, request.content)
        while True:
            part = await reader.next()
            if part is None:
                return out
            if len(out) >= MAX_PARTS:
                raise PayloadTooLarge(f"a request carries at most {MAX_PARTS} instances")
            if not isinstance(part, BodyPartReader):
                raise BadRequest("nested multipart bodies are not accepted")
            ptype = part.headers.get("Content-Type", DICOM).split(";")[0].strip()
            if ptype.lower() != DICOM:
                raise BadRequest(f"part of type {ptype[:80]!r}: only application/dicom is accepted")
            got = await _spool_part(
                part, where, len(out), max_part=max_part, budget=max_total - received
            )
            received += got.size
            out.append(got)
    except (ValueError, AssertionError) as exc:
        if isinstance(exc, (BadRequest, PayloadTooLarge)):
            raise
        raise BadRequest(f"malformed multipart body: {str(exc)[:200]}") from exc

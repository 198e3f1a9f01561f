"""multipart/related framing (RFC 2387) and Accept negotiation for WADO-RS."""

from __future__ import annotations

import secrets
from dataclasses import dataclass

from viewer_api.errors import NotAcceptable

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


@dataclass(frozen=True, slots=True)
class DicomAccept:
    """What a WADO-RS client accepts: the stored bytes, or one named transfer syntax."""

    transfer_syntax: str | None
    """None or '*' means the stored transfer syntax."""


def _params(text: str) -> dict[str, str]:
    out = {}
    for piece in text.split(";"):
        key, sep, value = piece.partition("=")
        if sep:
            out[key.strip().lower()] = value.strip().strip('"')
    return out


def negotiate_dicom(accept: str | None) -> DicomAccept:
    """Pick the first acceptable media range for DICOM instances (PS3.18 8.7.3)."""
    if not accept or not accept.strip():
        return DicomAccept(None)
    for item in accept.split(","):
        media, _, rest = item.strip().partition(";")
        media = media.strip().lower()
        params = _params(rest)
        if media in ("*/*", "multipart/*", "multipart/related"):
            ptype = params.get("type", DICOM).lower()
            if media != "multipart/related" or ptype in (DICOM, "*/*", "application/*"):
                return DicomAccept(params.get("transfer-syntax"))
        elif media == DICOM:
            return DicomAccept(params.get("transfer-syntax"))
    raise NotAcceptable(f"none of the accepted media types can be served: {accept[:200]!r}")

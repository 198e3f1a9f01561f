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
    """What a WADO-RS client accepts for DICOM instances."""

    transfer_syntaxes: tuple[str, ...]
    """The transfer syntaxes named in acceptable media ranges, in the client's order; '*' (a
    range without transfer-syntax, or with transfer-syntax=*) means the stored one."""

    def allows(self, stored: str) -> bool:
        """True when the stored bytes of an instance in ``stored`` syntax may be sent."""
        return "*" in self.transfer_syntaxes or stored in self.transfer_syntaxes


def _params(text: str) -> dict[str, str]:
    out = {}
    for piece in text.split(";"):
        key, sep, value = piece.partition("=")
        if sep:
            out[key.strip().lower()] = value.strip().strip('"')
    return out


def _refused(params: dict[str, str]) -> bool:
    """A media range with q=0 is one the client does not accept."""
    try:
        return float(params.get("q", "1")) <= 0
    except ValueError:
        return False


def negotiate_dicom(accept: str | None) -> DicomAccept:
    """The acceptable media ranges for DICOM instances (PS3.18 8.7.3); NotAcceptable if none.

    No Accept header means the stored bytes.
    """
    if not accept or not accept.strip():
        return DicomAccept(("*",))
    syntaxes: list[str] = []
    for item in accept.split(","):
        media, _, rest = item.strip().partition(";")
        media = media.strip().lower()
        params = _params(rest)
        if _refused(params):
            continue
        if media in ("*/*", "multipart/*", "multipart/related"):
            ptype = params.get("type", DICOM).lower()
            if media != "multipart/related" or ptype in (DICOM, "*/*", "application/*"):
                syntaxes.append(params.get("transfer-syntax") or "*")
        elif media == DICOM:
            syntaxes.append(params.get("transfer-syntax") or "*")
    if not syntaxes:
        raise NotAcceptable(f"none of the accepted media types can be served: {accept[:200]!r}")
    return DicomAccept(tuple(syntaxes))

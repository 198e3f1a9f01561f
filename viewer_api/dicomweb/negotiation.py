"""Media type and transfer syntax negotiation for WADO-RS (PS3.18 8.7), in one place.

Pure functions: the Accept header (or the ``accept`` query parameter, which replaces it) is
parsed into media ranges ordered by q-value; then, for one kind of resource and the syntax an
instance is stored in, the first range we can satisfy decides what is sent. The PS3.18
defaults apply when a range names no transfer syntax: Explicit VR Little Endian for
``application/dicom``, uncompressed little endian for ``application/octet-stream``, the
media type's own default for image types (``image/jls`` is JPEG-LS Lossless, ...).
``transfer-syntax=*`` means as stored. NotAcceptable (406) when no range can be satisfied.

What can be produced is the caller's to say (``dicom_codecs.transcode.can_transcode``), so
these rules stay free of codecs and I/O.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from enum import Enum

from viewer_api.errors import NotAcceptable

EXPLICIT_LE = "1.2.840.10008.1.2.1"
DICOM = "application/dicom"
OCTETS = "application/octet-stream"
ANY = "*"

IMAGE_SYNTAXES: dict[str, tuple[str, ...]] = {
    "image/jpeg": (
        "1.2.840.10008.1.2.4.50",
        "1.2.840.10008.1.2.4.51",
        "1.2.840.10008.1.2.4.57",
        "1.2.840.10008.1.2.4.70",
    ),
    "image/jls": ("1.2.840.10008.1.2.4.80", "1.2.840.10008.1.2.4.81"),
    "image/jp2": ("1.2.840.10008.1.2.4.90", "1.2.840.10008.1.2.4.91"),
    "image/jpx": ("1.2.840.10008.1.2.4.92", "1.2.840.10008.1.2.4.93"),
    "image/jphc": ("1.2.840.10008.1.2.4.201", "1.2.840.10008.1.2.4.202", "1.2.840.10008.1.2.4.203"),
    "image/dicom-rle": ("1.2.840.10008.1.2.5",),
}
"""Compressed single-frame media types (PS3.18 Table 8.7.3-3) and their transfer syntaxes, the
default first."""
_ALIASES = {"image/x-jls": "image/jls", "image/x-dicom-rle": "image/dicom-rle"}
NATIVE = frozenset({"1.2.840.10008.1.2", EXPLICIT_LE, "1.2.840.10008.1.2.1.99"})
"""Little-endian syntaxes with native pixel data: their frames are Explicit VR Little Endian's."""
RENDERED = ("image/jpeg", "image/png")
"""Media types of rendered resources, the default first."""


class Resource(Enum):
    """What is retrieved, which decides the media types on offer."""

    INSTANCES = "instances"  # study, series, instance: application/dicom
    PIXELS = "pixels"  # frames, Pixel Data bulk data: octet-stream or an image type
    BULK = "bulk"  # any other bulk data: octet-stream, no transfer syntax
    RENDERED = "rendered"  # image/jpeg or image/png


@dataclass(frozen=True, slots=True)
class MediaRange:
    """One acceptable media range: the part's media type (multipart/related's ``type`` when
    wrapped), its transfer-syntax parameter ('' when absent, '*' for any) and its q-value."""

    media_type: str
    transfer_syntax: str = ""
    q: float = 1.0


@dataclass(frozen=True, slots=True)
class Choice:
    """What to send: the part media type and the transfer syntax ('' for none)."""

    media_type: str
    transfer_syntax: str

    def part_type(self) -> str:
        """The Content-Type of a part, naming the syntax actually sent."""
        if not self.transfer_syntax:
            return self.media_type
        return f"{self.media_type}; transfer-syntax={self.transfer_syntax}"


MAX_RANGES = 64


def _params(text: str) -> dict[str, str]:
    out: dict[str, str] = {}
    for piece in text.split(";"):
        key, sep, value = piece.partition("=")
        if sep:
            out.setdefault(key.strip().lower(), value.strip().strip('"').strip())
    return out


def _q(text: str) -> float:
    try:
        q = float(text)
    except ValueError:
        return 1.0
    return min(max(q, 0.0), 1.0)


def parse_accept(header: str | None, query: Sequence[str] = ()) -> list[MediaRange]:
    """The acceptable media ranges, highest q first (ties in the client's order). The
    ``accept`` query parameter, when given, replaces the header (PS3.18 8.3.3.1). Nothing
    given means anything (``*/*``); ranges with q=0 are dropped."""
    text = ",".join(v for v in query if v.strip()) if any(v.strip() for v in query) else header
    if text is None or not text.strip():
        return [MediaRange("*/*")]
    ranges: list[MediaRange] = []
    for item in text.split(",")[:MAX_RANGES]:
        media, _, rest = item.strip().partition(";")
        media = media.strip().lower()
        if not media:
            continue
        params = _params(rest)
        q = _q(params.get("q", "1"))
        if q <= 0:
            continue
        if media in ("multipart/related", "multipart/*"):
            media = params.get("type", "").lower() or "*/*"
        media = _ALIASES.get(media, media)
        ranges.append(MediaRange(media, params.get("transfer-syntax", ""), q))
    return sorted(ranges, key=lambda r: -r.q)


def _offer(
    r: MediaRange, resource: Resource, stored: str, can: Callable[[str, str], bool]
) -> Choice | None:
    """What range ``r`` lets us send for an instance stored in ``stored``, or None."""
    media, ts = r.media_type, r.transfer_syntax
    if resource is Resource.RENDERED:
        if media in RENDERED:
            return Choice(media, "")
        return Choice(RENDERED[0], "") if media in ("*/*", "image/*") else None
    if resource is Resource.BULK:
        return Choice(OCTETS, "") if media in (OCTETS, "*/*", "application/*") else None
    if resource is Resource.INSTANCES:
        if media not in (DICOM, "*/*", "application/*"):
            return None
        syntax = stored if ts == ANY else ts or EXPLICIT_LE
        return Choice(DICOM, syntax) if can(stored, syntax) else None
    # pixel data: uncompressed as octet-stream, compressed under its image type
    if media in (OCTETS, "*/*", "application/*"):
        as_stored = EXPLICIT_LE if stored in NATIVE else stored
        syntax = as_stored if ts == ANY else ts or EXPLICIT_LE
        return Choice(OCTETS, syntax) if can(stored, syntax) else None
    candidates = (
        [m for m, s in IMAGE_SYNTAXES.items() if stored in s]
        if media == "image/*"
        else [media]
        if media in IMAGE_SYNTAXES
        else []
    )
    for m in candidates:
        syntaxes = IMAGE_SYNTAXES[m]
        default = stored if ts == ANY and stored in syntaxes else syntaxes[0]
        syntax = default if ts in ("", ANY) else ts
        if syntax in syntaxes and can(stored, syntax):
            return Choice(m, syntax)
    return None


def choose(
    ranges: Sequence[MediaRange],
    resource: Resource,
    stored: str,
    can: Callable[[str, str], bool],
) -> Choice:
    """The first acceptable range (by q, then order) we can satisfy for an instance stored in
    ``stored``; ``can(stored, syntax)`` says whether a syntax can be produced from it.
    NotAcceptable when none can."""
    for r in ranges:
        got = _offer(r, resource, stored, can)
        if got is not None:
            return got
    asked = ", ".join(
        r.media_type + (f"; transfer-syntax={r.transfer_syntax}" if r.transfer_syntax else "")
        for r in ranges
    )
    raise NotAcceptable(
        f"cannot send {resource.value} stored as {stored or 'no pixel data'} in any of: "
        f"{asked[:300]}; {offered(resource)}"
    )


def offered(resource: Resource) -> str:
    """A sentence for 406 bodies: what this kind of resource can be asked for."""
    if resource is Resource.RENDERED:
        return "rendered images come as image/jpeg or image/png"
    if resource is Resource.BULK:
        return "bulk data comes as application/octet-stream"
    if resource is Resource.INSTANCES:
        return (
            'ask for multipart/related; type="application/dicom" with no transfer-syntax '
            "(Explicit VR Little Endian), transfer-syntax=* (as stored) or a syntax we encode"
        )
    return (
        'ask for multipart/related; type="application/octet-stream" (uncompressed), '
        "transfer-syntax=* (as stored) or the image type of the stored syntax"
    )

"""A grey frame's stored values, packed losslessly and compactly for the browser to window.

The cloud-film page draws windowed slices itself from these values (window/level, presets, the
HU probe and measurements need no server round trip). The packing is a LOCO-I (JPEG-LS) median
edge predictor over the 16-bit values, the residuals zigzag-coded into two byte planes (low
bytes, then high bytes: mostly zeros) for the HTTP layer's gzip to squeeze; the script undoes
it in one pass. Layout (little endian)::

    b"CFP1"  rows:u16  columns:u16  flags:u8  bits:u8  pad:u16  slope:f32  intercept:f32
    low-byte plane (rows*columns bytes)  high-byte plane (rows*columns bytes)

``flags`` bit 0: the stored values are signed (they were offset by 32768 before prediction);
bit 1: MONOCHROME1 (low values are white). The modality value (HU for CT) of a pixel is
``(value - offset) * slope + intercept``.
"""

from __future__ import annotations

import io
import struct

import numpy as np
import pydicom
from numpy.typing import NDArray
from pydicom.pixels.decoders.base import get_decoder

MAX_PIXELS = 4096 * 4096
"""The largest frame sent as values (a 4k x 4k radiograph; larger ones get the JPEG only)."""

MAGIC = b"CFP1"
HEADER = struct.Struct("<4sHHBBHff")
SIGNED = 1
MONOCHROME1 = 2


class NotGreyPixels(ValueError):
    """The frame is not a single-sample grey image of at most 16 bits (or is too large)."""


def predict_residuals(values: NDArray[np.int32]) -> NDArray[np.uint16]:
    """Zigzag-coded residuals of the median edge predictor (a: left, b: above, c: above-left;
    outside the image counts as 0), modulo 2**16."""
    a = np.zeros_like(values)
    b = np.zeros_like(values)
    c = np.zeros_like(values)
    a[:, 1:] = values[:, :-1]
    b[1:, :] = values[:-1, :]
    c[1:, 1:] = values[:-1, :-1]
    hi = np.maximum(a, b)
    lo = np.minimum(a, b)
    pred = np.where(c >= hi, lo, np.where(c <= lo, hi, a + b - c))
    r = ((values - pred) & 0xFFFF).astype(np.uint16).view(np.int16).astype(np.int32)
    return (((r << 1) ^ (r >> 31)) & 0xFFFF).astype(np.uint16)


def pack_values(
    stored: NDArray[np.generic],
    *,
    signed: bool,
    bits: int,
    slope: float,
    intercept: float,
    monochrome1: bool,
) -> bytes:
    """The packed form of one frame of stored values (2-D, at most 16 bits)."""
    if stored.ndim != 2:
        raise NotGreyPixels(f"a grey frame must be 2-D, got shape {stored.shape}")
    rows, cols = stored.shape
    if rows * cols > MAX_PIXELS or rows > 0xFFFF or cols > 0xFFFF:
        raise NotGreyPixels(f"frame of {cols}x{rows} is over {MAX_PIXELS} pixels")
    values = np.asarray(stored, dtype=np.int32)
    if signed:
        values = values + 32768
    values &= 0xFFFF
    z = predict_residuals(values)
    flags = (SIGNED if signed else 0) | (MONOCHROME1 if monochrome1 else 0)
    head = HEADER.pack(MAGIC, rows, cols, flags, bits, 0, slope, intercept)
    low = (z & 0xFF).astype(np.uint8)
    high = (z >> 8).astype(np.uint8)
    return head + low.tobytes() + high.tobytes()


def unpack_values(data: bytes) -> NDArray[np.int32]:
    """The stored values of a packed frame (the inverse of :func:`pack_values`; the tests and
    the bench check the script's decoding against it)."""
    magic, rows, cols, flags, _bits, _pad, _slope, _intercept = HEADER.unpack_from(data)
    if magic != MAGIC:
        raise ValueError(f"not a packed frame: magic {magic!r}")
    n = rows * cols
    body = np.frombuffer(data, dtype=np.uint8, offset=HEADER.size)
    if body.size != 2 * n:
        raise ValueError(f"packed frame of {cols}x{rows} needs {2 * n} bytes, got {body.size}")
    z = body[:n].astype(np.int32) | (body[n:].astype(np.int32) << 8)
    r = ((z >> 1) ^ -(z & 1)).reshape(rows, cols)
    out = np.zeros((rows, cols), dtype=np.int32)
    for y in range(rows):
        for x in range(cols):
            a = int(out[y, x - 1]) if x else 0
            b = int(out[y - 1, x]) if y else 0
            c = int(out[y - 1, x - 1]) if x and y else 0
            pred = min(a, b) if c >= max(a, b) else max(a, b) if c <= min(a, b) else a + b - c
            out[y, x] = (pred + int(r[y, x])) & 0xFFFF
    return out - 32768 if flags & SIGNED else out


def pack_frame(data: bytes, frame: int) -> bytes:
    """The packed values of frame ``frame`` (0-based) of a DICOM Part 10 file held in memory.
    Raises NotGreyPixels for colour, float or oversized images, IndexError past the last frame."""
    ds = pydicom.dcmread(io.BytesIO(data), force=True)
    photometric = str(ds.get("PhotometricInterpretation", "")).strip()
    if photometric not in ("MONOCHROME1", "MONOCHROME2") or int(ds.get("SamplesPerPixel", 1)) != 1:
        raise NotGreyPixels(f"not a grey image: {photometric or 'no photometric interpretation'}")
    bits = int(ds.get("BitsStored") or 0)
    if not 1 <= bits <= 16 or "PixelData" not in ds:
        raise NotGreyPixels(f"not 1..16-bit integer pixels (BitsStored {bits})")
    rows, cols = int(ds.get("Rows") or 0), int(ds.get("Columns") or 0)
    if rows * cols > MAX_PIXELS:
        raise NotGreyPixels(f"frame of {cols}x{rows} is over {MAX_PIXELS} pixels")
    frames = int(ds.get("NumberOfFrames") or 1)
    if not 0 <= frame < frames:
        raise IndexError(f"frame must be 1..{frames}, got {frame + 1}")
    arr, _ = get_decoder(ds.file_meta.TransferSyntaxUID).as_array(ds, index=frame)
    slope = float(ds.get("RescaleSlope") or 1) or 1.0
    intercept = float(ds.get("RescaleIntercept") or 0)
    return pack_values(
        np.asarray(arr),
        signed=int(ds.get("PixelRepresentation") or 0) == 1,
        bits=bits,
        slope=slope,
        intercept=intercept,
        monochrome1=photometric == "MONOCHROME1",
    )

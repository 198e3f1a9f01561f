"""DICOM RLE (PS3.5 Annex G) byte-segment kernels: PackBits per row, in Numba.

The kernels trust their callers for shapes and buffer sizes (dicom_codecs.rle checks them) but
never read or write outside the arrays they are given: a corrupt segment makes the decoder
return -1, not crash.
"""

from __future__ import annotations

import numpy as np
from numba import njit
from numpy.typing import NDArray

_MAX_RUN = 128


@njit(cache=True, nogil=True)
def encode_segment(plane: NDArray[np.uint8], out: NDArray[np.uint8]) -> int:  # pragma: no cover
    """PackBits-encode a (rows, columns) byte plane row by row into ``out``; returns the
    length, padded to even. ``out`` must hold rows * (columns + columns // 128 + 2) + 1."""
    rows, cols = plane.shape
    n = 0
    for r in range(rows):
        row = plane[r]
        i = 0
        while i < cols:
            # a run of equal bytes?
            j = i + 1
            while j < cols and j - i < _MAX_RUN and row[j] == row[i]:
                j += 1
            run = j - i
            if run >= 3 or (run == 2 and (j >= cols)):
                out[n] = np.uint8((257 - run) & 0xFF)  # -(run - 1) as a byte
                out[n + 1] = row[i]
                n += 2
                i = j
                continue
            # a literal: up to the next run of 3 or the row end
            start = i
            while i < cols and i - start < _MAX_RUN:
                if i + 2 < cols and row[i] == row[i + 1] and row[i] == row[i + 2]:
                    break
                i += 1
            length = i - start
            out[n] = np.uint8(length - 1)
            n += 1
            for k in range(length):
                out[n + k] = row[start + k]
            n += length
    if n & 1:
        out[n] = 0
        n += 1
    return n


@njit(cache=True, nogil=True)
def _unpack(
    src: NDArray[np.uint8], start: int, end: int, plane: NDArray[np.uint8]
) -> bool:  # pragma: no cover
    """PackBits-decode src[start:end] into ``plane``; False if corrupt or not exactly one plane."""
    i = start
    n = 0
    limit = plane.shape[0]
    while i < end and n < limit:
        header = int(src[i])
        i += 1
        if header < 128:  # a literal of header + 1 bytes
            length = header + 1
            if i + length > end or n + length > limit:
                return False
            plane[n : n + length] = src[i : i + length]
            i += length
            n += length
        elif header > 128:  # the next byte, 257 - header times
            length = 257 - header
            if i >= end or n + length > limit:
                return False
            plane[n : n + length] = src[i]
            i += 1
            n += length
        # header == 128: no operation
    return bool(n == limit)


@njit(cache=True, nogil=True)
def decode_frame(  # pragma: no cover
    src: NDArray[np.uint8],
    offsets: NDArray[np.int64],
    out: NDArray[np.uint8],
    plane_size: int,
    bytes_per_sample: int,
) -> int:
    """Decode every segment of a frame into ``out``, laid out as planar configuration 1 with
    little-endian samples (segment k is sample k // bps, byte bps - 1 - k % bps). Segments are
    unpacked contiguously, then interleaved in one pass. Returns the index of the first corrupt
    segment, else -1. ``out`` must hold plane_size * (number of segments) bytes."""
    segments = offsets.shape[0] - 1
    size = src.shape[0]
    scratch = np.empty((segments, plane_size), dtype=np.uint8)
    for seg in range(segments):
        if not _unpack(src, offsets[seg], min(offsets[seg + 1], size), scratch[seg]):
            return seg
    samples = segments // bytes_per_sample
    if bytes_per_sample == 2:  # the common 16-bit case: combine MSB and LSB planes in one pass
        wide = out.view(np.uint16)
        for sample in range(samples):
            msb = scratch[2 * sample]
            lsb = scratch[2 * sample + 1]
            base = sample * plane_size
            for p in range(plane_size):
                wide[base + p] = (np.uint16(msb[p]) << 8) | np.uint16(lsb[p])
        return -1
    for sample in range(samples):
        base = sample * plane_size * bytes_per_sample
        for b in range(bytes_per_sample):
            row = scratch[sample * bytes_per_sample + bytes_per_sample - 1 - b]
            for p in range(plane_size):
                out[base + p * bytes_per_sample + b] = row[p]
    return -1

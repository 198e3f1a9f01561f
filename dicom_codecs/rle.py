"""RLE Lossless frames (PS3.5 Annex G): validation and segment layout around Numba kernels.

``encode_rle_frame`` takes the little-endian, pixel-interleaved bytes of one frame (what
pydicom's encoder interface hands a plugin); ``decode_rle_frame`` returns a frame in planar
configuration 1 with little-endian samples (what pydicom's decoder interface expects).
"""

from __future__ import annotations

import itertools
import struct
from dataclasses import dataclass

import numpy as np

from dicom_codecs.errors import CodecError
from dicom_codecs.kernels.rle import decode_frame, encode_segment


class CorruptRLE(CodecError, ValueError):
    """RLE data that cannot be decoded (bad header, wrong segment count, truncated segment)."""


@dataclass(frozen=True, slots=True)
class FrameSpec:
    rows: int
    columns: int
    samples_per_pixel: int
    bits_allocated: int

    def __post_init__(self) -> None:
        if self.rows < 1 or self.columns < 1:
            raise ValueError(f"rows and columns must be positive, got {self.rows}x{self.columns}")
        if self.samples_per_pixel not in (1, 3):
            raise ValueError(f"samples_per_pixel must be 1 or 3, got {self.samples_per_pixel}")
        if self.bits_allocated not in (8, 16, 32, 64):
            raise ValueError(f"bits_allocated must be 8, 16, 32 or 64, got {self.bits_allocated}")
        if self.segments > 15:
            raise ValueError(f"RLE allows 15 segments; this frame needs {self.segments}")

    @property
    def bytes_per_sample(self) -> int:
        return self.bits_allocated // 8

    @property
    def segments(self) -> int:
        return self.samples_per_pixel * self.bytes_per_sample

    @property
    def frame_bytes(self) -> int:
        return self.rows * self.columns * self.segments


def encode_rle_frame(src: bytes | bytearray | memoryview, spec: FrameSpec) -> bytes:
    if len(src) != spec.frame_bytes:
        raise ValueError(f"frame must hold {spec.frame_bytes} bytes, got {len(src)}")
    data = np.frombuffer(src, dtype=np.uint8).reshape(spec.rows, spec.columns, spec.segments)
    bound = spec.rows * (spec.columns + spec.columns // 128 + 2) + 2
    out = np.empty(bound * spec.segments, dtype=np.uint8)
    offsets = []
    pos = 0
    bps = spec.bytes_per_sample
    for sample in range(spec.samples_per_pixel):
        for byte in reversed(range(bps)):  # most significant byte first
            plane = np.ascontiguousarray(data[:, :, sample * bps + byte])
            offsets.append(64 + pos)
            pos += encode_segment(plane, out[pos : pos + bound])
    header = struct.pack(f"<{1 + len(offsets)}L", len(offsets), *offsets).ljust(64, b"\0")
    return header + out[:pos].tobytes()


def decode_rle_frame(src: bytes | bytearray | memoryview, spec: FrameSpec) -> bytearray:
    if len(src) < 64:
        raise CorruptRLE(f"RLE frame of {len(src)} bytes is shorter than its 64-byte header")
    header = struct.unpack("<16L", bytes(src[:64]))
    count = header[0]
    if count != spec.segments:
        raise CorruptRLE(f"RLE header names {count} segments, the frame needs {spec.segments}")
    offsets = [*header[1 : 1 + count], len(src)]
    if offsets[0] != 64 or any(b < a for a, b in itertools.pairwise(offsets)):
        raise CorruptRLE(f"RLE segment offsets are out of order: {offsets[:-1]}")
    if offsets[-2] > len(src):
        raise CorruptRLE("an RLE segment starts past the end of the frame")
    buf = np.frombuffer(src, dtype=np.uint8)
    frame = bytearray(spec.frame_bytes)
    out = np.frombuffer(frame, dtype=np.uint8)  # the kernel writes into the bytearray itself
    bad = decode_frame(
        buf,
        np.asarray(offsets, dtype=np.int64),
        out,
        spec.rows * spec.columns,
        spec.bytes_per_sample,
    )
    if bad >= 0:
        raise CorruptRLE(f"RLE segment {bad} is corrupt or does not decode to one plane")
    return frame

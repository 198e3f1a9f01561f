"""Grey rendering in one pass, in Numba: Modality LUT (slope/intercept) + VOI window + box
downsampling -> uint8.

Each stored value is read once, mapped to a display value in [0, 255] (PS3.3 C.11.2.1.2 linear,
C.11.2.1.3 linear-exact and sigmoid) and accumulated straight into the output pixel(s) it falls
in; nothing of full size is allocated. The box weights follow Pillow's BOX filter (a pixel
belongs to the output pixels whose box contains its centre), so the result is within one grey
level of "window with numpy, then ``Image.resize(..., BOX)``".

The kernels trust their callers (dicom_codecs.render) for shapes and weights and only index
inside the arrays they are given.
"""

from __future__ import annotations

import math

import numpy as np
from numba import njit
from numpy.typing import NDArray

LINEAR = 0
LINEAR_EXACT = 1
SIGMOID = 2


@njit(cache=True, nogil=True, inline="always")
def _display(
    raw: float, slope: float, intercept: float, center: float, width: float, function: int
) -> float:  # pragma: no cover
    x = raw * slope + intercept
    if function == LINEAR:
        if width <= 1.0:
            return 255.0 if x > center - 0.5 else 0.0
        y = ((x - (center - 0.5)) / (width - 1.0) + 0.5) * 255.0
    elif function == LINEAR_EXACT:
        y = ((x - center) / width + 0.5) * 255.0
    else:
        t = -4.0 * (x - center) / width
        if t > 80.0:
            t = 80.0
        elif t < -80.0:
            t = -80.0
        return 255.0 / (1.0 + math.exp(t))
    if y < 0.0:
        return 0.0
    if y > 255.0:
        return 255.0
    return y


@njit(cache=True, nogil=True)
def voi_resample(
    frame: NDArray[np.generic],
    slope: float,
    intercept: float,
    center: float,
    width: float,
    function: int,
    invert: bool,
    x_start: NDArray[np.int64],
    x_weights: NDArray[np.float64],
    y_start: NDArray[np.int64],
    y_weights: NDArray[np.float64],
    out: NDArray[np.uint8],
) -> None:  # pragma: no cover
    """``out[oy, ox]`` = rounded weighted mean of the display values of the input pixels in its
    box. Output column ``ox`` takes input columns ``x_start[ox] + k`` with ``x_weights[ox, k]``
    (weights of a row sum to 1, trailing zeros pad the row); rows likewise."""
    out_h, out_w = out.shape
    kx = x_weights.shape[1]
    ky = y_weights.shape[1]
    line = np.empty(out_w, dtype=np.float64)
    acc = np.empty(out_w, dtype=np.float64)
    for oy in range(out_h):
        acc[:] = 0.0
        for j in range(ky):
            wy = y_weights[oy, j]
            if wy == 0.0:
                continue
            row = frame[y_start[oy] + j]
            for ox in range(out_w):
                s = 0.0
                x0 = x_start[ox]
                for k in range(kx):
                    wx = x_weights[ox, k]
                    if wx != 0.0:
                        s += wx * _display(
                            float(row[x0 + k]), slope, intercept, center, width, function
                        )
                line[ox] = s
            for ox in range(out_w):
                acc[ox] += wy * line[ox]
        for ox in range(out_w):
            v = acc[ox]
            if invert:
                v = 255.0 - v
            v = math.floor(v + 0.5)
            out[oy, ox] = np.uint8(0.0 if v < 0.0 else (255.0 if v > 255.0 else v))


@njit(cache=True, nogil=True)
def value_range(
    frame: NDArray[np.generic], pad_lo: float, pad_hi: float, has_padding: bool
) -> tuple[float, float, bool]:  # pragma: no cover
    """(min, max, found) of the stored values outside [pad_lo, pad_hi] (all when no padding)."""
    lo = np.inf
    hi = -np.inf
    rows, cols = frame.shape
    for r in range(rows):
        for c in range(cols):
            v = float(frame[r, c])
            if has_padding and pad_lo <= v <= pad_hi:
                continue
            if v < lo:
                lo = v
            if v > hi:
                hi = v
    return lo, hi, lo <= hi


@njit(cache=True, nogil=True)
def display_lut(
    lo: int,
    hi: int,
    slope: float,
    intercept: float,
    center: float,
    width: float,
    function: int,
    invert: bool,
) -> NDArray[np.float32]:  # pragma: no cover
    """Display value (0..255, inverted for MONOCHROME1) of every stored value in lo..hi."""
    lut = np.empty(hi - lo + 1, dtype=np.float32)
    for i in range(hi - lo + 1):
        v = _display(float(lo + i), slope, intercept, center, width, function)
        lut[i] = 255.0 - v if invert else v
    return lut


@njit(cache=True, nogil=True)
def lut_resample(
    frame: NDArray[np.generic],
    lut: NDArray[np.float32],
    lo: int,
    col_map: NDArray[np.int64],
    row_map: NDArray[np.int64],
    col_count: NDArray[np.int64],
    row_count: NDArray[np.int64],
    out: NDArray[np.uint8],
) -> None:  # pragma: no cover
    """Box downsampling where every input pixel lies in exactly one output box: input column
    ``x`` goes to output column ``col_map[x]`` (rows likewise, -1 = none); each output pixel is
    the mean of the looked-up display values of its ``col_count * row_count`` inputs."""
    out_w = out.shape[1]
    rows, cols = frame.shape
    acc = np.zeros(out_w, dtype=np.float32)
    current = -1
    for y in range(rows + 1):
        oy = row_map[y] if y < rows else -2
        if oy != current:
            if current >= 0:
                for ox in range(out_w):
                    v = acc[ox] / (col_count[ox] * row_count[current])
                    out[current, ox] = np.uint8(min(max(math.floor(v + 0.5), 0.0), 255.0))
                    acc[ox] = 0.0
            current = oy
        if oy < 0:
            continue
        row = frame[y]
        for x in range(cols):
            ox = col_map[x]
            if ox >= 0:
                acc[ox] += lut[row[x] - lo]


@njit(cache=True, nogil=True)
def lut_halve(
    frame: NDArray[np.generic], lut: NDArray[np.float32], lo: int, out: NDArray[np.uint8]
) -> None:  # pragma: no cover
    """The 2x2 box case (512 -> 256) without index maps: out = mean of each 2x2 block."""
    out_h, out_w = out.shape
    for oy in range(out_h):
        a = frame[2 * oy]
        b = frame[2 * oy + 1]
        for ox in range(out_w):
            x = 2 * ox
            s = lut[a[x] - lo] + lut[a[x + 1] - lo] + lut[b[x] - lo] + lut[b[x + 1] - lo]
            out[oy, ox] = np.uint8(math.floor(s * 0.25 + 0.5))


@njit(cache=True, nogil=True)
def lut_map(
    frame: NDArray[np.generic], lut: NDArray[np.float32], lo: int, out: NDArray[np.uint8]
) -> None:  # pragma: no cover
    """No resampling: every pixel through the lookup table."""
    rows, cols = frame.shape
    for y in range(rows):
        row = frame[y]
        line = out[y]
        for x in range(cols):
            line[x] = np.uint8(math.floor(lut[row[x] - lo] + 0.5))

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

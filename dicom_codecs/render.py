"""Rendering DICOM images to 8-bit pictures: thumbnails (first cut, numpy + Pillow).

The grey-level pipeline follows PS3.3 C.11: Modality LUT (rescale slope/intercept), VOI LUT
(linear window, C.11.2.1.2) or the frame's range, MONOCHROME1 inverted. Pure array functions
are kept apart from decoding (pydicom) and encoding (Pillow).
"""

from __future__ import annotations

import io
from dataclasses import dataclass

import numpy as np
import pydicom
from numpy.typing import NDArray
from PIL import Image
from pydicom.dataset import Dataset

from dicom_codecs.errors import RenderError


@dataclass(frozen=True, slots=True)
class RenderOptions:
    size: int = 256
    """Longest side of the output, in pixels (never upscaled)."""
    quality: int = 85
    frame: int | None = None
    """Frame of a multi-frame image; None picks the middle one."""


def window_to_uint8(arr: NDArray[np.floating], center: float, width: float) -> NDArray[np.uint8]:
    """Linear VOI function of PS3.3 C.11.2.1.2.1 mapped onto 0..255."""
    if width < 1:
        raise RenderError(f"window width must be >= 1, got {width}")
    c, w = center - 0.5, width - 1.0
    out = ((arr - c) / w + 0.5) * 255.0
    return np.asarray(np.clip(np.rint(out), 0, 255), dtype=np.uint8)


def range_to_uint8(arr: NDArray[np.floating]) -> NDArray[np.uint8]:
    """Stretch the values' min..max onto 0..255 (when the dataset names no window)."""
    lo, hi = float(arr.min()), float(arr.max())
    if hi <= lo:
        return np.zeros(arr.shape, dtype=np.uint8)
    return np.asarray(np.clip(np.rint((arr - lo) * (255.0 / (hi - lo))), 0, 255), dtype=np.uint8)


def _first(value: object) -> float | None:
    if value is None:
        return None
    if isinstance(value, list | tuple | pydicom.multival.MultiValue):
        value = value[0] if len(value) else None
    try:
        return None if value is None else float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return None


def grey_to_uint8(frame: NDArray[np.generic], ds: Dataset) -> NDArray[np.uint8]:
    """Modality LUT, VOI window (or range) and MONOCHROME1 inversion of one grey frame."""
    slope = _first(ds.get("RescaleSlope")) or 1.0
    intercept = _first(ds.get("RescaleIntercept")) or 0.0
    values = frame.astype(np.float32) * np.float32(slope) + np.float32(intercept)
    center, width = _first(ds.get("WindowCenter")), _first(ds.get("WindowWidth"))
    if center is not None and width is not None and width >= 1:
        out = window_to_uint8(values, center, width)
    else:
        out = range_to_uint8(values)
    if ds.get("PhotometricInterpretation") == "MONOCHROME1":
        out = 255 - out
    return out


def _frame(ds: Dataset, options: RenderOptions) -> NDArray[np.generic]:
    if "PixelData" not in ds and "FloatPixelData" not in ds:
        raise RenderError("the dataset has no pixel data")
    frames = int(ds.get("NumberOfFrames") or 1)
    index = frames // 2 if options.frame is None else options.frame
    if not 0 <= index < frames:
        raise RenderError(f"frame must be 0..{frames - 1}, got {index}")
    try:
        arr = ds.pixel_array
    except Exception as exc:  # pydicom raises many types for undecodable pixel data
        raise RenderError(f"cannot decode pixel data: {exc}") from exc
    if frames > 1:
        arr = arr[index]
    return np.asarray(arr)


def render_dataset(ds: Dataset, options: RenderOptions = RenderOptions()) -> bytes:
    """JPEG of one frame of a decoded dataset, its longest side at most ``options.size``."""
    arr = _frame(ds, options)
    samples = int(ds.get("SamplesPerPixel") or 1)
    if samples == 1:
        img = Image.fromarray(grey_to_uint8(arr, ds), mode="L")
    elif samples == 3 and arr.ndim == 3:
        if arr.dtype != np.uint8:
            arr = range_to_uint8(arr.astype(np.float32))
        img = Image.fromarray(np.ascontiguousarray(arr, dtype=np.uint8), mode="RGB")
    else:
        raise RenderError(f"cannot render {samples} samples per pixel with shape {arr.shape}")
    longest = max(img.size)
    if longest > options.size:
        scale = options.size / longest
        target = (max(1, round(img.size[0] * scale)), max(1, round(img.size[1] * scale)))
        img = img.resize(target, Image.Resampling.BOX)
    out = io.BytesIO()
    img.save(out, format="JPEG", quality=options.quality)
    return out.getvalue()


def render_thumbnail(data: bytes, options: RenderOptions = RenderOptions()) -> bytes:
    """JPEG thumbnail of a DICOM Part 10 file held in memory."""
    try:
        ds = pydicom.dcmread(io.BytesIO(data), force=True)
    except Exception as exc:
        raise RenderError(f"cannot read the DICOM file: {exc}") from exc
    return render_dataset(ds, options)

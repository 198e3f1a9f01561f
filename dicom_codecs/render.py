"""Rendering DICOM images to 8-bit pictures: thumbnails (first cut, numpy + Pillow).

The grey pipeline follows PS3.3 C.11: Modality LUT (rescale slope/intercept, or a Modality LUT
Sequence), VOI (the first window, C.11.2.1.2, with its VOI LUT Function; else a VOI LUT
Sequence; else the frame's range without padding), then MONOCHROME1 inverted. Colour images
keep their colour: YBR is converted to RGB by the decoder, palette colour goes through its
lookup tables. Only the frame being rendered is decoded. The pure array functions are kept
apart from decoding (pydicom) and encoding (Pillow).
"""

from __future__ import annotations

import io
import logging
from dataclasses import dataclass

import numpy as np
import pydicom
from numpy.typing import NDArray
from PIL import Image
from pydicom.dataset import Dataset
from pydicom.multival import MultiValue
from pydicom.pixels.decoders.base import get_decoder
from pydicom.pixels.processing import (
    apply_color_lut,
    apply_modality_lut,
    apply_voi,
    convert_color_space,
)

from dicom_codecs.errors import RenderError

logger = logging.getLogger(__name__)

_PIXEL_KEYWORDS = ("PixelData", "FloatPixelData", "DoubleFloatPixelData")
_VOI_FUNCTIONS = ("LINEAR", "LINEAR_EXACT", "SIGMOID")


@dataclass(frozen=True, slots=True)
class RenderOptions:
    size: int = 256
    """Longest side of the output in pixels; images are never enlarged to reach it."""
    quality: int = 85
    """JPEG quality, 1..100."""
    frame: int | None = None
    """Frame of a multi-frame image, from 0; None picks the middle one."""

    def __post_init__(self) -> None:
        if self.size < 1:
            raise RenderError(f"size must be at least 1, got {self.size}")
        if not 1 <= self.quality <= 100:
            raise RenderError(f"quality must be 1..100, got {self.quality}")
        if self.frame is not None and self.frame < 0:
            raise RenderError(f"frame must be >= 0 or None, got {self.frame}")


# --- pure array functions -------------------------------------------------------------------


def window_to_uint8(
    arr: NDArray[np.floating], center: float, width: float, function: str = "LINEAR"
) -> NDArray[np.uint8]:
    """VOI window of PS3.3 C.11.2.1.2 (LINEAR) or C.11.2.1.3 (LINEAR_EXACT, SIGMOID) to 0..255."""
    if function not in _VOI_FUNCTIONS:
        raise RenderError(f"function must be one of {', '.join(_VOI_FUNCTIONS)}, got {function!r}")
    if width < 1 if function == "LINEAR" else width <= 0:
        raise RenderError(f"width must be {'>= 1' if function == 'LINEAR' else '> 0'}, got {width}")
    x = np.asarray(arr, dtype=np.float32)
    if function == "SIGMOID":
        out = 255.0 / (1.0 + np.exp(np.clip(-4.0 * (x - center) / width, -80.0, 80.0)))
    elif function == "LINEAR_EXACT":
        out = ((x - center) / width + 0.5) * 255.0
    elif width == 1:  # the linear window degenerates to a threshold
        out = np.where(x > center - 0.5, np.float32(255.0), np.float32(0.0))
    else:
        out = ((x - (center - 0.5)) / (width - 1.0) + 0.5) * 255.0
    return np.asarray(np.clip(np.rint(out), 0, 255), dtype=np.uint8)


def range_to_uint8(
    arr: NDArray[np.floating], valid: NDArray[np.bool_] | None = None
) -> NDArray[np.uint8]:
    """Stretch min..max of the values (of the ``valid`` ones, if given) onto 0..255."""
    x = np.asarray(arr, dtype=np.float32)
    sample = x if valid is None else x[valid]
    if sample.size == 0:
        return np.zeros(x.shape, dtype=np.uint8)
    lo, hi = float(sample.min()), float(sample.max())
    if not hi > lo:
        return np.zeros(x.shape, dtype=np.uint8)
    return np.asarray(np.clip(np.rint((x - lo) * (255.0 / (hi - lo))), 0, 255), dtype=np.uint8)


def scale_to_uint8(arr: NDArray[np.integer], bits: int) -> NDArray[np.uint8]:
    """Map unsigned ``bits``-bit samples (colour, LUT output) onto 0..255."""
    if bits <= 8:
        return np.asarray(np.clip(arr, 0, 255), dtype=np.uint8)
    top = float(2**bits - 1)
    x = np.clip(np.asarray(arr, dtype=np.float32), 0.0, top)
    return np.asarray(np.rint(x * (255.0 / top)), dtype=np.uint8)


# --- dataset attributes ---------------------------------------------------------------------


def _first(value: object) -> float | None:
    """First number of a single or multi-valued element, None if absent or not a number."""
    if isinstance(value, MultiValue | list | tuple):
        value = value[0] if len(value) else None
    if value is None or value == "":
        return None
    try:
        return float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return None


def _row_to_column_spacing(ds: Dataset) -> float:
    """Physical height / width of a pixel; 1 when unknown or implausible."""
    for keyword in ("PixelSpacing", "ImagerPixelSpacing", "NominalScannedPixelSpacing"):
        value = ds.get(keyword)
        if isinstance(value, MultiValue | list) and len(value) == 2:
            row, col = _first(value[0]), _first(value[1])
            if row and col and row > 0 and col > 0:
                ratio = row / col
                return ratio if 0.1 <= ratio <= 10 else 1.0
    value = ds.get("PixelAspectRatio")
    if isinstance(value, MultiValue | list) and len(value) == 2:
        vertical, horizontal = _first(value[0]), _first(value[1])
        if vertical and horizontal and vertical > 0 and horizontal > 0:
            ratio = vertical / horizontal
            return ratio if 0.1 <= ratio <= 10 else 1.0
    return 1.0


def _padding_mask(stored: NDArray[np.generic], ds: Dataset) -> NDArray[np.bool_] | None:
    """True where a stored value is not Pixel Padding (C.7.5.1.1.2); None without padding."""
    pad = _first(ds.get("PixelPaddingValue"))
    if pad is None:
        return None
    limit = _first(ds.get("PixelPaddingRangeLimit"))
    lo, hi = (pad, pad) if limit is None else (min(pad, limit), max(pad, limit))
    values = np.asarray(stored, dtype=np.float64)
    return np.asarray((values < lo) | (values > hi), dtype=np.bool_)


def grey_to_uint8(frame: NDArray[np.generic], ds: Dataset) -> NDArray[np.uint8]:
    """Modality LUT, VOI (window, VOI LUT or range) and MONOCHROME1 inversion of one frame."""
    if "ModalityLUTSequence" in ds:
        values = np.asarray(apply_modality_lut(frame, ds), dtype=np.float32)
    else:
        slope = _first(ds.get("RescaleSlope"))
        intercept = _first(ds.get("RescaleIntercept")) or 0.0
        values = frame.astype(np.float32)
        if slope is not None and slope != 0 and slope != 1:
            values *= np.float32(slope)
        if intercept:
            values += np.float32(intercept)
    center, width = _first(ds.get("WindowCenter")), _first(ds.get("WindowWidth"))
    function = str(ds.get("VOILUTFunction") or "LINEAR").strip().upper()
    if function not in _VOI_FUNCTIONS:
        function = "LINEAR"
    if center is not None and width is not None and width >= (1 if function == "LINEAR" else 0):
        out = window_to_uint8(values, center, width, function)
    elif ds.get("VOILUTSequence") and np.issubdtype(frame.dtype, np.integer):
        bits = int(ds.VOILUTSequence[0].LUTDescriptor[2])
        lut_in = np.rint(values).astype(np.int64)
        out = scale_to_uint8(np.asarray(apply_voi(lut_in, ds)), bits)
    else:
        out = range_to_uint8(values, _padding_mask(frame, ds))
    if str(ds.get("PhotometricInterpretation", "")).strip() == "MONOCHROME1":
        out = 255 - out
    return out


# --- decoding and encoding ------------------------------------------------------------------


def _frame(ds: Dataset, options: RenderOptions) -> tuple[NDArray[np.generic], str]:
    """Decode only the frame to render; returns it and its photometric interpretation."""
    if not any(keyword in ds for keyword in _PIXEL_KEYWORDS):
        raise RenderError("the dataset has no pixel data")
    try:
        frames = int(ds.get("NumberOfFrames") or 1)
    except (TypeError, ValueError) as exc:
        raise RenderError(f"NumberOfFrames is not a number: {ds.get('NumberOfFrames')!r}") from exc
    index = frames // 2 if options.frame is None else options.frame
    if not 0 <= index < frames:
        raise RenderError(f"frame must be 0..{frames - 1} for this image, got {index}")
    meta = getattr(ds, "file_meta", None)
    tsyntax = meta.get("TransferSyntaxUID") if meta is not None else None
    if tsyntax is None:
        raise RenderError("cannot decode pixel data: the dataset names no Transfer Syntax UID")
    try:
        arr, info = get_decoder(tsyntax).as_array(ds, index=index)
    except Exception as exc:  # pydicom and its plugins raise many types for bad pixel data
        raise RenderError(f"cannot decode pixel data ({tsyntax.name}): {exc}") from exc
    photometric = str(info.get("photometric_interpretation") or ds.get("PhotometricInterpretation"))
    return np.asarray(arr), photometric.strip()


def _to_picture(arr: NDArray[np.generic], photometric: str, ds: Dataset) -> Image.Image:
    if photometric == "PALETTE COLOR":
        try:
            rgb = np.asarray(apply_color_lut(arr, ds))
        except (ValueError, KeyError, AttributeError, IndexError) as exc:
            raise RenderError(f"cannot apply the palette colour lookup tables: {exc}") from exc
        bits = 16 if rgb.dtype.itemsize > 1 else 8
        return Image.fromarray(scale_to_uint8(rgb, bits), mode="RGB")
    if arr.ndim == 2:
        return Image.fromarray(grey_to_uint8(arr, ds), mode="L")
    if arr.ndim == 3 and arr.shape[-1] == 3:
        if photometric.startswith("YBR"):
            arr = convert_color_space(arr, photometric, "RGB")
        if arr.dtype == np.uint8:
            return Image.fromarray(np.ascontiguousarray(arr), mode="RGB")
        if np.issubdtype(arr.dtype, np.integer):
            bits = int(ds.get("BitsStored") or arr.dtype.itemsize * 8)
            return Image.fromarray(scale_to_uint8(np.asarray(arr), bits), mode="RGB")
        return Image.fromarray(range_to_uint8(np.asarray(arr, dtype=np.float32)), mode="RGB")
    raise RenderError(f"cannot render {photometric} pixels of shape {arr.shape}")


def _target_size(width: int, height: int, aspect: float, longest: int) -> tuple[int, int]:
    """Output size showing pixels at their physical aspect, longest side at most ``longest``."""
    w, h = float(width), height * aspect
    scale = min(1.0, longest / max(w, h))
    return max(1, round(w * scale)), max(1, round(h * scale))


def render_dataset(ds: Dataset, options: RenderOptions = RenderOptions()) -> bytes:
    """JPEG of one frame of a dataset, its longest side at most ``options.size``."""
    arr, photometric = _frame(ds, options)
    img = _to_picture(arr, photometric, ds)
    target = _target_size(img.width, img.height, _row_to_column_spacing(ds), options.size)
    if target != img.size:
        shrink = target[0] <= img.width and target[1] <= img.height
        method = Image.Resampling.BOX if shrink else Image.Resampling.BILINEAR
        img = img.resize(target, method)
    out = io.BytesIO()
    img.save(out, format="JPEG", quality=options.quality)
    return out.getvalue()


def render_thumbnail(data: bytes, options: RenderOptions = RenderOptions()) -> bytes:
    """JPEG thumbnail of a DICOM Part 10 file held in memory."""
    try:
        ds = pydicom.dcmread(io.BytesIO(data), force=True)
    except Exception as exc:  # pydicom raises many types for malformed files
        raise RenderError(f"cannot read the DICOM file: {exc}") from exc
    try:
        return render_dataset(ds, options)
    except RenderError as exc:
        logger.debug("no thumbnail for SOP instance %s: %s", ds.get("SOPInstanceUID", "?"), exc)
        raise

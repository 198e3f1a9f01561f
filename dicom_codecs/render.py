"""Rendering DICOM images to 8-bit pictures: thumbnails and rendered frames.

The grey pipeline follows PS3.3 C.11: Modality LUT (rescale slope/intercept, or a Modality LUT
Sequence), VOI (the first window, C.11.2.1.2, with its VOI LUT Function; else a VOI LUT
Sequence; else the frame's range without padding), then MONOCHROME1 inverted. Colour images
keep their colour: YBR is converted to RGB by the decoder, palette colour goes through its
lookup tables. Only the frame being rendered is decoded. The pure array functions are kept
apart from decoding (pydicom) and encoding (Pillow).

Grey images with a linear Modality LUT (the common case: CT, MR, CR, DX) take the fused Numba
kernel of ``dicom_codecs.kernels.render`` (rescale + window + box downsampling in one pass);
``grey_to_uint8`` + Pillow is the reference it is tested against and the path for LUT
sequences.
"""

from __future__ import annotations

import functools
import io
import logging
import math
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
_MAX_SIDE = 8192


@dataclass(frozen=True, slots=True)
class Window:
    """A VOI window asked for by the viewer (instead of the one in the dataset)."""

    center: float
    width: float
    function: str = "LINEAR"

    def __post_init__(self) -> None:
        if self.function not in _VOI_FUNCTIONS:
            raise RenderError(
                f"function must be one of {', '.join(_VOI_FUNCTIONS)}, got {self.function!r}"
            )
        if not (math.isfinite(self.center) and math.isfinite(self.width)):
            raise RenderError("window center and width must be finite numbers")
        if self.width < 1 if self.function == "LINEAR" else self.width <= 0:
            minimum = ">= 1" if self.function == "LINEAR" else "> 0"
            raise RenderError(f"width must be {minimum}, got {self.width}")


@dataclass(frozen=True, slots=True)
class RenderOptions:
    size: int = 256
    """Longest side of the output in pixels; images are never enlarged to reach it."""
    quality: int = 85
    """JPEG quality, 1..100."""
    frame: int | None = None
    """Frame of a multi-frame image, from 0; None picks the middle one."""
    window: Window | None = None
    """VOI window to apply to grey images; None uses the dataset's."""
    viewport: tuple[int, int] | None = None
    """(width, height) to fit the image into, enlarging if needed; overrides ``size``."""
    image_format: str = "JPEG"
    """JPEG or PNG."""

    def __post_init__(self) -> None:
        if self.size < 1:
            raise RenderError(f"size must be at least 1, got {self.size}")
        if not 1 <= self.quality <= 100:
            raise RenderError(f"quality must be 1..100, got {self.quality}")
        if self.frame is not None and self.frame < 0:
            raise RenderError(f"frame must be >= 0 or None, got {self.frame}")
        if self.viewport is not None and not (
            1 <= self.viewport[0] <= _MAX_SIDE and 1 <= self.viewport[1] <= _MAX_SIDE
        ):
            raise RenderError(f"viewport must be 1..{_MAX_SIDE} on each side, got {self.viewport}")
        if self.image_format not in ("JPEG", "PNG"):
            raise RenderError(f"image_format must be JPEG or PNG, got {self.image_format!r}")


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


def _modality_linear(ds: Dataset) -> tuple[float, float]:
    """(slope, intercept) of the Modality LUT; slope 1 when absent or 0."""
    slope = _first(ds.get("RescaleSlope"))
    intercept = _first(ds.get("RescaleIntercept")) or 0.0
    return (slope if slope is not None and slope != 0 else 1.0), intercept


def _dataset_window(ds: Dataset) -> Window | None:
    """The dataset's first window (C.11.2.1.2), None when it has none or it is unusable."""
    center, width = _first(ds.get("WindowCenter")), _first(ds.get("WindowWidth"))
    function = str(ds.get("VOILUTFunction") or "LINEAR").strip().upper()
    if function not in _VOI_FUNCTIONS:
        function = "LINEAR"
    if center is None or width is None:
        return None
    try:
        return Window(center, width, function)
    except RenderError:
        return None


def _inverted(ds: Dataset) -> bool:
    return str(ds.get("PhotometricInterpretation", "")).strip() == "MONOCHROME1"


def grey_to_uint8(
    frame: NDArray[np.generic], ds: Dataset, window: Window | None = None
) -> NDArray[np.uint8]:
    """Modality LUT, VOI (window, VOI LUT or range) and MONOCHROME1 inversion of one frame,
    with numpy: the reference for the fused kernel and the path for LUT sequences."""
    if "ModalityLUTSequence" in ds:
        values = np.asarray(apply_modality_lut(frame, ds), dtype=np.float32)
    else:
        slope, intercept = _modality_linear(ds)
        values = frame.astype(np.float32)
        if slope != 1:
            values *= np.float32(slope)
        if intercept:
            values += np.float32(intercept)
    window = window or _dataset_window(ds)
    if window is not None:
        out = window_to_uint8(values, window.center, window.width, window.function)
    elif ds.get("VOILUTSequence") and np.issubdtype(frame.dtype, np.integer):
        bits = int(ds.VOILUTSequence[0].LUTDescriptor[2])
        lut_in = np.rint(values).astype(np.int64)
        out = scale_to_uint8(np.asarray(apply_voi(lut_in, ds)), bits)
    else:
        out = range_to_uint8(values, _padding_mask(frame, ds))
    if _inverted(ds):
        out = 255 - out
    return out


# --- the fused kernel -----------------------------------------------------------------------


@functools.lru_cache(maxsize=64)
def box_weights(in_size: int, out_size: int) -> tuple[NDArray[np.int64], NDArray[np.float64]]:
    """Per output pixel: the first input pixel and the normalised weights of Pillow's BOX filter
    (Resample.c, precompute_coeffs), so the kernel resamples as ``Image.resize(BOX)`` does.
    Cached: a series asks for the same sizes again and again (callers must not modify them)."""
    scale = in_size / out_size
    filterscale = max(scale, 1.0)
    support = 0.5 * filterscale
    ksize = math.ceil(support) * 2 + 1
    centers = (np.arange(out_size) + 0.5) * scale
    xmin = np.maximum((centers - support + 0.5).astype(np.int64), 0)
    xmax = np.minimum((centers + support + 0.5).astype(np.int64), in_size) - xmin
    k = np.arange(ksize)
    offsets = (k[None, :] + xmin[:, None] - centers[:, None] + 0.5) / filterscale
    inside = (offsets > -0.5) & (offsets <= 0.5) & (k[None, :] < xmax[:, None])
    weights = inside.astype(np.float64)
    totals = weights.sum(axis=1, keepdims=True)
    np.divide(weights, totals, out=weights, where=totals != 0)
    weights.setflags(write=False)
    xmin.setflags(write=False)
    return xmin, weights


@functools.lru_cache(maxsize=64)
def box_partition(
    in_size: int, out_size: int
) -> tuple[NDArray[np.int64], NDArray[np.int64]] | None:
    """(output index of every input pixel or -1, input count of every output pixel) when the
    BOX weights give every input pixel to at most one output pixel with equal weights, as
    they do when shrinking; None otherwise (the general kernel handles it)."""
    if out_size > in_size:
        return None
    starts, weights = box_weights(in_size, out_size)
    outputs, offsets = np.nonzero(weights)
    inputs = starts[outputs] + offsets
    if len(np.unique(inputs)) != len(inputs):
        return None
    mapping = np.full(in_size, -1, dtype=np.int64)
    mapping[inputs] = outputs
    counts = np.bincount(outputs, minlength=out_size).astype(np.int64)
    mapping.setflags(write=False)
    counts.setflags(write=False)
    return mapping, counts


_LUT_LIMIT = 1 << 20
_FUNCTION_CODES = {"LINEAR": 0, "LINEAR_EXACT": 1, "SIGMOID": 2}


def fused_grey(
    frame: NDArray[np.generic], ds: Dataset, size: tuple[int, int], window: Window | None = None
) -> NDArray[np.uint8] | None:
    """``grey_to_uint8`` followed by a BOX resize to ``size`` (width, height), in one Numba pass;
    None when the dataset needs the numpy path (LUT sequences, or no window and a VOI LUT)."""
    if frame.ndim != 2 or frame.dtype.kind not in "iuf" or "ModalityLUTSequence" in ds:
        return None
    if frame.dtype.kind == "f" and frame.dtype.itemsize < 4:
        return None
    if not frame.dtype.isnative:
        frame = frame.astype(frame.dtype.newbyteorder("="))
    from dicom_codecs.kernels.render import value_range, voi_resample

    slope, intercept = _modality_linear(ds)
    window = window or _dataset_window(ds)
    if window is None:
        if ds.get("VOILUTSequence") and frame.dtype.kind in "iu":
            return None
        pad = _first(ds.get("PixelPaddingValue"))
        limit = _first(ds.get("PixelPaddingRangeLimit"))
        pad_lo, pad_hi = (0.0, 0.0) if pad is None else (pad, pad if limit is None else limit)
        lo, hi, found = value_range(
            frame, min(pad_lo, pad_hi), max(pad_lo, pad_hi), pad is not None
        )
        lo, hi = sorted((lo * slope + intercept, hi * slope + intercept))
        if not found or not hi > lo:
            return np.full((size[1], size[0]), 255 if _inverted(ds) else 0, dtype=np.uint8)
        window = Window((lo + hi) / 2, hi - lo, "LINEAR_EXACT")
    out = np.empty((size[1], size[0]), dtype=np.uint8)
    if frame.dtype.kind in "iu" and _lut_resample(frame, slope, intercept, window, ds, out):
        return out
    x_start, x_weights = box_weights(frame.shape[1], size[0])
    y_start, y_weights = box_weights(frame.shape[0], size[1])
    voi_resample(
        frame,
        slope,
        intercept,
        window.center,
        window.width,
        _FUNCTION_CODES[window.function],
        _inverted(ds),
        x_start,
        x_weights,
        y_start,
        y_weights,
        out,
    )
    return out


def _lut_resample(
    frame: NDArray[np.generic],
    slope: float,
    intercept: float,
    window: Window,
    ds: Dataset,
    out: NDArray[np.uint8],
) -> bool:
    """The fast path for integer frames: a display-value lookup table over the frame's range,
    then box sums. False when it does not apply (huge value range, or boxes that overlap)."""
    from dicom_codecs.kernels.render import display_lut, lut_halve, lut_map, lut_resample

    rows, cols = frame.shape
    out_h, out_w = out.shape
    lo, hi = int(frame.min()), int(frame.max())
    if hi - lo >= _LUT_LIMIT:
        return False
    lut = display_lut(
        lo,
        hi,
        slope,
        intercept,
        window.center,
        window.width,
        _FUNCTION_CODES[window.function],
        _inverted(ds),
    )
    if rows == out_h and cols == out_w:
        lut_map(frame, lut, lo, out)
        return True
    if rows == 2 * out_h and cols == 2 * out_w:
        lut_halve(frame, lut, lo, out)
        return True
    across, down = box_partition(cols, out_w), box_partition(rows, out_h)
    if across is None or down is None:
        return False
    lut_resample(frame, lut, lo, across[0], down[0], across[1], down[1], out)
    return True


def warm_up() -> None:
    """Compile (or load from the cache) the render kernels with a tiny frame."""
    ds = Dataset()
    ds.PhotometricInterpretation = "MONOCHROME2"
    for dtype in (np.int16, np.uint16):  # CT, MR, CR, DX; other types compile on first use
        frame = np.arange(36, dtype=dtype).reshape(6, 6)
        for size in ((3, 3), (6, 6), (4, 4)):  # 2x2 boxes, 1:1, a partition
            fused_grey(frame, ds, size, Window(8, 16))


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


def _to_picture(
    arr: NDArray[np.generic], photometric: str, ds: Dataset, window: Window | None
) -> Image.Image:
    if photometric == "PALETTE COLOR":
        try:
            rgb = np.asarray(apply_color_lut(arr, ds))
        except (ValueError, KeyError, AttributeError, IndexError) as exc:
            raise RenderError(f"cannot apply the palette colour lookup tables: {exc}") from exc
        bits = 16 if rgb.dtype.itemsize > 1 else 8
        return Image.fromarray(scale_to_uint8(rgb, bits), mode="RGB")
    if arr.ndim == 2:
        return Image.fromarray(grey_to_uint8(arr, ds, window), mode="L")
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


def _target_size(width: int, height: int, aspect: float, options: RenderOptions) -> tuple[int, int]:
    """Output size showing pixels at their physical aspect: the longest side at most
    ``options.size`` (never enlarged), or fitted into ``options.viewport``."""
    w, h = float(width), height * aspect
    if options.viewport is not None:
        scale = min(options.viewport[0] / w, options.viewport[1] / h)
    else:
        scale = min(1.0, options.size / max(w, h))
    return max(1, round(w * scale)), max(1, round(h * scale))


def render_array(
    arr: NDArray[np.generic], photometric: str, ds: Dataset, options: RenderOptions
) -> Image.Image:
    """One decoded frame -> an 8-bit picture of the size ``options`` asks for."""
    aspect = _row_to_column_spacing(ds)
    width, height = (arr.shape[1], arr.shape[0]) if arr.ndim >= 2 else (0, 0)
    target = _target_size(width, height, aspect, options)
    shrink = target[0] <= width and target[1] <= height
    if photometric.startswith("MONOCHROME") and arr.ndim == 2:
        fused = fused_grey(arr, ds, target if shrink else (width, height), options.window)
        if fused is not None:
            img = Image.fromarray(fused, mode="L")
            return img if shrink else img.resize(target, Image.Resampling.BILINEAR)
    img = _to_picture(arr, photometric, ds, options.window)
    if target != img.size:
        method = Image.Resampling.BOX if shrink else Image.Resampling.BILINEAR
        img = img.resize(target, method)
    return img


def encode_picture(img: Image.Image, options: RenderOptions) -> bytes:
    out = io.BytesIO()
    if options.image_format == "PNG":
        img.save(out, format="PNG", compress_level=1)
    else:
        img.save(out, format="JPEG", quality=options.quality)
    return out.getvalue()


def render_dataset(ds: Dataset, options: RenderOptions = RenderOptions()) -> bytes:
    """JPEG (or PNG) of one frame of a dataset, sized as ``options`` asks."""
    arr, photometric = _frame(ds, options)
    return encode_picture(render_array(arr, photometric, ds, options), options)


def render_thumbnail(data: bytes, options: RenderOptions = RenderOptions()) -> bytes:
    """JPEG thumbnail (or rendered frame) of a DICOM Part 10 file held in memory."""
    try:
        ds = pydicom.dcmread(io.BytesIO(data), force=True)
    except Exception as exc:  # pydicom raises many types for malformed files
        raise RenderError(f"cannot read the DICOM file: {exc}") from exc
    try:
        return render_dataset(ds, options)
    except RenderError as exc:
        logger.debug("no picture of SOP instance %s: %s", ds.get("SOPInstanceUID", "?"), exc)
        raise

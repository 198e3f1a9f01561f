"""CloudFilm's Numba RLE codec as a pydicom 3 encoder and decoder plugin ("cloudfilm").

    from dicom_codecs.pydicom_plugin import register
    register()
    ds.compress(RLELossless, encoding_plugin="cloudfilm")
    arr = ds.pixel_array  # or pixel_array(ds, decoding_plugin="cloudfilm")

Registration is explicit (no work at import time); ``warm_up`` loads the cached JIT so the
first request after a service starts does not pay for compilation.
"""

from __future__ import annotations

import numpy as np
from pydicom.pixels.decoders.base import DecodeRunner
from pydicom.pixels.encoders.base import EncodeRunner
from pydicom.uid import RLELossless

from dicom_codecs.rle import FrameSpec, decode_rle_frame, encode_rle_frame

PLUGIN = "cloudfilm"
DECODER_DEPENDENCIES: dict[str, tuple[str, ...]] = {RLELossless: ()}
ENCODER_DEPENDENCIES: dict[str, tuple[str, ...]] = {RLELossless: ()}


def is_available(uid: str) -> bool:
    return uid == RLELossless


def _spec(runner: DecodeRunner | EncodeRunner) -> FrameSpec:
    return FrameSpec(
        rows=runner.rows,
        columns=runner.columns,
        samples_per_pixel=runner.samples_per_pixel,
        bits_allocated=runner.bits_allocated,
    )


def _decode_frame(src: bytes, runner: DecodeRunner) -> bytearray:
    if runner.get_option("rle_segment_order", ">") != ">":
        raise ValueError("the cloudfilm RLE decoder reads the standard (MSB first) segment order")
    frame = decode_rle_frame(src, _spec(runner))
    runner.set_option("planar_configuration", 1)
    return frame


def _encode_frame(src: bytes, runner: EncodeRunner) -> bytes:
    if runner.get_option("byteorder", "<") == ">":
        raise ValueError("the cloudfilm RLE encoder takes little-endian frames")
    return encode_rle_frame(src, _spec(runner))


def register() -> None:
    """Add the plugin to pydicom's RLE Lossless encoder and decoder (idempotent)."""
    from pydicom.pixels.decoders.base import RLELosslessDecoder
    from pydicom.pixels.encoders.base import RLELosslessEncoder

    for coder, function in (
        (RLELosslessDecoder, "_decode_frame"),
        (RLELosslessEncoder, "_encode_frame"),
    ):
        if PLUGIN not in coder.available_plugins:
            coder.add_plugin(PLUGIN, ("dicom_codecs.pydicom_plugin", function))


def warm_up() -> None:
    """Compile (or load from the cache) the kernels with a tiny frame."""
    spec = FrameSpec(rows=2, columns=3, samples_per_pixel=1, bits_allocated=16)
    data = np.arange(6, dtype="<u2").tobytes()
    if bytes(decode_rle_frame(encode_rle_frame(data, spec), spec)) != data:
        raise RuntimeError("the RLE kernels do not round-trip")

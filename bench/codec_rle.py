"""RLE Lossless side by side in one run: CloudFilm's Numba codec vs pylibjpeg-rle (C/Rust) vs
pydicom's pure-Python codec, on a synthetic 512x512 CT slice and a 2500x2048 DX image.

    .venv/bin/python bench/codec_rle.py [--repeat 15]

Prints MB/s of raw pixel data (median of --repeat runs, after a warm-up so JIT compilation is
not counted; the first-call time is printed separately) and the ratio to pylibjpeg-rle.
"""

from __future__ import annotations

import argparse
import functools
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import pydicom
import rle.utils as pylibjpeg_rle
from pydicom.pixels.decoders.rle import _rle_decode_frame
from pydicom.pixels.encoders.native import _encode_frame as pydicom_encode_frame

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from timing import median_s

from cloudfilm.synth import synthesize_study
from dicom_codecs.rle import FrameSpec, decode_rle_frame, encode_rle_frame


class _Runner:
    def __init__(self, spec: FrameSpec) -> None:
        self.rows, self.columns = spec.rows, spec.columns
        self.samples_per_pixel, self.bits_allocated = spec.samples_per_pixel, spec.bits_allocated

    def get_option(self, name: str, default: object = None) -> object:
        return default


Codec = tuple[Callable[[], bytes], Callable[[bytes], object]]


def _codecs(raw: bytes, spec: FrameSpec, *, with_pydicom: bool) -> dict[str, Codec]:
    kw = {
        "rows": spec.rows,
        "columns": spec.columns,
        "samples_per_pixel": 1,
        "bits_allocated": spec.bits_allocated,
        "byteorder": "<",
    }
    codecs: dict[str, Codec] = {
        "cloudfilm": (
            functools.partial(encode_rle_frame, raw, spec),
            functools.partial(_ours_decode, spec=spec),
        ),
        "pylibjpeg-rle": (
            functools.partial(pylibjpeg_rle.encode_pixel_data, raw, **kw),
            functools.partial(pylibjpeg_rle.decode_pixel_data, version=2, **kw),
        ),
    }
    if with_pydicom:
        codecs["pydicom"] = (
            functools.partial(pydicom_encode_frame, raw, _Runner(spec)),  # type: ignore[arg-type]
            functools.partial(_pydicom_decode, spec=spec),
        )
    return codecs


def _ours_decode(encoded: bytes, *, spec: FrameSpec) -> object:
    return decode_rle_frame(encoded, spec)


def _pydicom_decode(encoded: bytes, *, spec: FrameSpec) -> object:
    return _rle_decode_frame(encoded, spec.rows, spec.columns, 1, spec.bits_allocated, ">")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--repeat", type=int, default=15)
    args = ap.parse_args()
    t0 = time.perf_counter()
    spec0 = FrameSpec(2, 2, 1, 16)
    decode_rle_frame(encode_rle_frame(b"\0" * 8, spec0), spec0)
    print(f"first call (JIT load or compile): {(time.perf_counter() - t0) * 1000:.0f} ms")
    with tempfile.TemporaryDirectory() as d:
        ct = pydicom.dcmread(synthesize_study(Path(d) / "ct", modality="CT", images=3, seed=1)[2])
        dx = pydicom.dcmread(synthesize_study(Path(d) / "dx", modality="DX", images=1, seed=1)[0])
    print(
        f"{'image':8} {'codec':14} {'encode MB/s':>12} {'decode MB/s':>12} {'ratio':>6} "
        f"{'enc x ref':>9} {'dec x ref':>9}"
    )
    for name, ds in (("CT 512", ct), ("DX 2500", dx)):
        spec = FrameSpec(ds.Rows, ds.Columns, ds.SamplesPerPixel, ds.BitsAllocated)
        raw = ds.PixelData
        mb = len(raw) / 1e6
        codecs = _codecs(raw, spec, with_pydicom=name.startswith("CT"))
        rows = {}
        for codec, (enc, dec) in codecs.items():
            encoded = enc()
            reps = args.repeat if codec != "pydicom" else 3
            rows[codec] = (
                mb / median_s(enc, reps, warm_up=False),
                mb / median_s(functools.partial(dec, encoded), reps, warm_up=False),
                len(raw) / len(encoded),
            )
        ref = rows["pylibjpeg-rle"]
        for codec, (e, dd, ratio) in rows.items():
            print(
                f"{name:8} {codec:14} {e:12.0f} {dd:12.0f} {ratio:6.2f} {e / ref[0]:9.2f} "
                f"{dd / ref[1]:9.2f}"
            )
    return 0


if __name__ == "__main__":
    sys.exit(main())

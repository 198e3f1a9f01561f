"""The codec table, side by side in one run: thumbnails (CloudFilm's fused Numba kernel vs
numpy + Pillow) and lossless compression for upload (JPEG-LS, HTJ2K, JPEG 2000, RLE, deflate),
on synthetic images and on the real ones shipped with pydicom-data.

    .venv/bin/python bench/codec_table.py [--repeat 9]

Thumbnails: milliseconds per 256-pixel thumbnail from the decoded frame, with and without the
JPEG encoding both paths share. Compression: ratio of raw pixel bytes to encoded bytes, and
MB/s of raw data per core (numthreads=1 where a library has threads). Then, for a 300-slice CT
study, the time to get it to the cloud over 100 Mbit/s and 1 Gbit/s uplinks when compression runs
on the gateway's 2 cores in parallel with the upload: max(encode time / 2, bytes / link). The
cheapest is the gateway's upload transfer syntax (``cloudfilm.config`` ``upload_compression``).
"""

from __future__ import annotations

import argparse
import functools
import io
import sys
import tempfile
import time
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import imagecodecs
import numpy as np
import pydicom
from numpy.typing import NDArray
from PIL import Image
from pydicom.data import get_testdata_file
from pydicom.dataset import Dataset
from pydicom.pixels.encoders import (
    JPEG2000LosslessEncoder,
    JPEGLSLosslessEncoder,
    RLELosslessEncoder,
)

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from timing import median_s

from cloudfilm.synth import synthesize_study
from dicom_codecs.edge import UploadCompression, compress_for_upload
from dicom_codecs.pydicom_plugin import register
from dicom_codecs.render import fused_grey, grey_to_uint8, warm_up

# --- thumbnails -----------------------------------------------------------------------------


def _size(arr: NDArray[np.generic]) -> tuple[int, int]:
    rows, cols = arr.shape[:2]
    scale = 256 / max(rows, cols)
    return max(1, round(cols * scale)), max(1, round(rows * scale))


def _kernel(arr: NDArray[np.generic], ds: Dataset) -> Image.Image:
    out = fused_grey(arr, ds, _size(arr))
    assert out is not None
    return Image.fromarray(out, mode="L")


def _numpy_pillow(arr: NDArray[np.generic], ds: Dataset) -> Image.Image:
    img = Image.fromarray(grey_to_uint8(arr, ds), mode="L")
    return img.resize(_size(arr), Image.Resampling.BOX)


def _jpeg(img: Image.Image) -> bytes:
    out = io.BytesIO()
    img.save(out, format="JPEG", quality=85)
    return out.getvalue()


def thumbnails(images: dict[str, Dataset], repeat: int) -> None:
    print("\nThumbnails, 256 px (ms per image, median; decoded frame in, JPEG q85 out)")
    print(
        f"{'image':18} {'kernel':>8} {'numpy+PIL':>10} {'x':>5}   "
        f"{'kernel+JPEG':>11} {'numpy+PIL+JPEG':>14} {'x':>5}  max diff"
    )
    for name, ds in images.items():
        arr = ds.pixel_array
        kernel = functools.partial(_kernel, arr, ds)
        reference = functools.partial(_numpy_pillow, arr, ds)
        k = median_s(kernel, repeat) * 1000
        n = median_s(reference, repeat) * 1000
        kj = median_s(lambda: _jpeg(kernel()), repeat) * 1000  # noqa: B023 (called right here)
        nj = median_s(lambda: _jpeg(reference()), repeat) * 1000  # noqa: B023
        a = np.asarray(_kernel(arr, ds), dtype=np.int16)
        b = np.asarray(_numpy_pillow(arr, ds), dtype=np.int16)
        diff = int(np.abs(a - b).max())
        print(
            f"{name:18} {k:8.2f} {n:10.2f} {n / k:5.1f}   {kj:11.2f} {nj:14.2f} "
            f"{nj / kj:5.1f}  {diff}"
        )


# --- compression ----------------------------------------------------------------------------


@dataclass(frozen=True)
class Row:
    image: str
    codec: str
    ratio: float
    encode_mbs: float
    decode_mbs: float


def _pydicom_encoder(encoder: object, plugin: str) -> Callable[[Dataset], bytes]:
    def encode(ds: Dataset) -> bytes:
        return encoder.encode(ds, index=0, encoding_plugin=plugin)  # type: ignore[attr-defined, no-any-return]

    return encode


def _codecs() -> dict[str, tuple[Callable[[Dataset], bytes], Callable[[bytes, Dataset], object]]]:
    def frame(ds: Dataset) -> NDArray[np.generic]:
        arr = ds.pixel_array
        return arr if int(ds.get("NumberOfFrames") or 1) == 1 else arr[0]

    def rle_decode(data: bytes, ds: Dataset) -> object:
        from dicom_codecs.rle import FrameSpec, decode_rle_frame

        spec = FrameSpec(ds.Rows, ds.Columns, ds.SamplesPerPixel, ds.BitsAllocated)
        return decode_rle_frame(data, spec)

    return {
        "JPEG-LS (CharLS)": (
            _pydicom_encoder(JPEGLSLosslessEncoder, "pyjpegls"),
            lambda data, ds: imagecodecs.jpegls_decode(data),
        ),
        "HTJ2K (OpenJPH)": (
            lambda ds: imagecodecs.htj2k_encode(frame(ds), level=0),
            lambda data, ds: imagecodecs.htj2k_decode(data),
        ),
        "J2K (OpenJPEG)": (
            _pydicom_encoder(JPEG2000LosslessEncoder, "pylibjpeg"),
            lambda data, ds: imagecodecs.jpeg2k_decode(data, numthreads=1),
        ),
        "RLE (CloudFilm)": (_pydicom_encoder(RLELosslessEncoder, "cloudfilm"), rle_decode),
        "deflate-1 (zlib)": (
            lambda ds: zlib.compress(_raw_frame(ds), 1),
            lambda data, ds: zlib.decompress(data),
        ),
    }


def _raw_frame(ds: Dataset) -> bytes:
    frames = int(ds.get("NumberOfFrames") or 1)
    data: bytes = ds.PixelData
    return data[: len(data) // frames]


def compression(images: dict[str, Dataset], repeat: int) -> list[Row]:
    print("\nLossless compression of one frame (ratio = raw / encoded; MB/s of raw, one core)")
    print(f"{'image':18} {'codec':18} {'ratio':>6} {'enc MB/s':>9} {'dec MB/s':>9}")
    rows = []
    for name, ds in images.items():
        raw = len(_raw_frame(ds))
        for codec, (encode, decode) in _codecs().items():
            try:
                encoded = encode(ds)
            except Exception as exc:  # a library that cannot take this image: say so
                print(f"{name:18} {codec:18} {'n/a':>6}  ({type(exc).__name__}: {exc})"[:110])
                continue
            enc = median_s(functools.partial(encode, ds), repeat)
            dec = median_s(functools.partial(decode, encoded, ds), repeat)
            row = Row(name, codec, raw / len(encoded), raw / enc / 1e6, raw / dec / 1e6)
            rows.append(row)
            print(
                f"{name:18} {codec:18} {row.ratio:6.2f} {row.encode_mbs:9.0f} {row.decode_mbs:9.0f}"
            )
    return rows


def choice(rows: list[Row], study: str, cores: int = 2) -> None:
    slices, slice_bytes = 300, 512 * 512 * 2
    total = slices * slice_bytes
    print(
        f"\nA 300-slice CT study ({total / 1e6:.0f} MB raw), codec figures of {study!r}, "
        f"compression on {cores} cores in parallel with the upload"
    )
    print(f"{'codec':18} {'% of raw':>8} {'encode s':>9} {'100 Mbit/s':>11} {'1 Gbit/s':>9}")
    links = (100e6 / 8, 1000e6 / 8)
    best: dict[float, tuple[float, str]] = {}
    for r in (r for r in rows if r.image == study):
        encode_s = total / (r.encode_mbs * 1e6) / cores
        times = [max(encode_s, total / r.ratio / link) for link in links]
        for link, t in zip(links, times, strict=True):
            if link not in best or t < best[link][0]:
                best[link] = (t, r.codec)
        print(
            f"{r.codec:18} {100 / r.ratio:8.1f} {encode_s:9.2f} {times[0]:10.2f}s {times[1]:8.2f}s"
        )
    print(
        f"{'uncompressed':18} {100.0:8.1f} {0.0:9.2f} {total / links[0]:10.2f}s "
        f"{total / links[1]:8.2f}s"
    )
    for link, (t, codec) in best.items():
        print(f"fastest at {link * 8 / 1e6:.0f} Mbit/s: {codec} ({t:.2f} s)")


def edge_path(slices: list[bytes], repeat: int) -> None:
    """The gateway's whole path per instance: parse, encode, decode and compare, write."""
    raw = sum(len(s) for s in slices)
    print(
        f"\nEdge path (dicom_codecs.edge.compress_for_upload: encode + bit-exact check), "
        f"{len(slices)} synthetic CT slices, {raw / 1e6:.1f} MB, one core"
    )
    print(f"{'codec':10} {'% of raw':>8} {'MB/s':>7} {'2 cores Mbit/s':>15}")
    for codec in (UploadCompression.JPEG_LS, UploadCompression.RLE):
        results = [compress_for_upload(s, codec) for s in slices]
        assert all(r.compressed for r in results), [r.reason for r in results]
        sent = sum(len(r.data) for r in results)
        t = median_s(lambda: [compress_for_upload(s, codec) for s in slices], max(1, repeat // 3))  # noqa: B023
        mbs = raw / t / 1e6
        print(f"{codec.value:10} {100 * sent / raw:8.1f} {mbs:7.0f} {2 * mbs * 8:15.0f}")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--repeat", type=int, default=9)
    args = ap.parse_args()
    register()
    t0 = time.perf_counter()
    warm_up()
    first_ms = (time.perf_counter() - t0) * 1000
    print(f"render kernel first call (JIT cache load or compile): {first_ms:.0f} ms")
    with tempfile.TemporaryDirectory() as d:
        synth = {
            f"synthetic {m}": pydicom.dcmread(
                synthesize_study(Path(d) / m, modality=m, images=3 if m == "CT" else 1, seed=1)[-1]
            )
            for m in ("CT", "MR", "DX", "US")
        }
    real = {
        f"real {name.split('_')[0]}": pydicom.dcmread(get_testdata_file(name))  # type: ignore[arg-type]
        for name in ("693_UNCR.dcm", "MR2_UNCR.dcm", "RG1_UNCR.dcm", "US1_UNCR.dcm")
    }
    grey = {k: v for k, v in {**synth, **real}.items() if int(v.SamplesPerPixel) == 1}
    grey = {k: v for k, v in grey.items() if int(v.get("NumberOfFrames") or 1) == 1}
    thumbnails(grey, args.repeat)
    rows = compression({**synth, **real}, args.repeat)
    choice(rows, "synthetic CT")
    choice(rows, "real 693")
    with tempfile.TemporaryDirectory() as d:
        paths = synthesize_study(Path(d) / "ct", modality="CT", images=30, seed=2)
        edge_path([p.read_bytes() for p in paths[1:]], args.repeat)
    return 0


if __name__ == "__main__":
    sys.exit(main())

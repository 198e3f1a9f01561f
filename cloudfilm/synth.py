"""Synthetic but realistic DICOM studies for tests, benches and the demo (never real patients).

Each modality gets body-like anatomy plus noise, so lossless codecs see ratios like real images
(CT about 2.5-3x with JPEG-LS), and complete Patient / Study / Series / Equipment / Image / SOP
Common modules. Everything derives from the seed: the same arguments give the same bytes.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pydicom
from numpy.typing import NDArray
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import UID, ExplicitVRLittleEndian, generate_uid

MODALITIES = ("CT", "MR", "DX", "US")

CT_STORAGE = "1.2.840.10008.5.1.4.1.1.2"
MR_STORAGE = "1.2.840.10008.5.1.4.1.1.4"
DX_PRESENTATION = "1.2.840.10008.5.1.4.1.1.1.1"
US_STORAGE = "1.2.840.10008.5.1.4.1.1.6.1"
US_MULTIFRAME = "1.2.840.10008.5.1.4.1.1.3.1"

_NAMES = (
    ("Zhang^San", "张^三"),
    ("Li^Si", "李^四"),
    ("Wang^Wu", "王^五"),
    ("Zhao^Liu", "赵^六"),
    ("Chen^Jing", "陈^静"),
    ("Liu^Yang", "刘^洋"),
)


@dataclass(frozen=True, slots=True)
class _Study:
    seed: int
    modality: str
    patient_id: str
    name: str
    sex: str
    birth_date: str
    study_date: str
    study_uid: str


def _uid(*parts: object) -> str:
    return str(generate_uid(entropy_srcs=["cloudfilm-synth", *map(str, parts)]))


def _study(seed: int, modality: str, patient_id: str | None) -> _Study:
    rng = np.random.default_rng([seed, 7])
    alpha, ideo = _NAMES[seed % len(_NAMES)]
    day = dt.date(2024, 1, 1) + dt.timedelta(days=int(rng.integers(0, 700)))
    birth = dt.date(1940, 1, 1) + dt.timedelta(days=int(rng.integers(0, 25000)))
    return _Study(
        seed=seed,
        modality=modality,
        patient_id=patient_id or f"P{seed:08d}",
        name=f"{alpha}={ideo}",
        sex="MF"[seed % 2],
        birth_date=birth.strftime("%Y%m%d"),
        study_date=day.strftime("%Y%m%d"),
        study_uid=_uid(seed, modality, "study"),
    )


def _age(birth: str, on: str) -> str:
    b, d = dt.datetime.strptime(birth, "%Y%m%d"), dt.datetime.strptime(on, "%Y%m%d")
    return f"{min(999, (d - b).days // 365):03d}Y"


def _base(st: _Study, sop_class: str, sop_uid: str, series_uid: str) -> Dataset:
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = UID(sop_class)
    meta.MediaStorageSOPInstanceUID = UID(sop_uid)
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SpecificCharacterSet = "ISO_IR 192"
    ds.SOPClassUID = sop_class
    ds.SOPInstanceUID = sop_uid
    ds.StudyDate = ds.SeriesDate = ds.ContentDate = st.study_date
    ds.StudyTime = "093000"
    ds.SeriesTime = "093100"
    ds.AccessionNumber = f"A{st.seed:07d}{st.modality}"
    ds.Modality = st.modality
    ds.Manufacturer = "CloudFilm Synth"
    ds.InstitutionName = "CloudFilm Demo Hospital"
    ds.ReferringPhysicianName = "Li^Ming=李^明"
    ds.StudyDescription = {
        "CT": "CT CHEST",
        "MR": "MR BRAIN",
        "DX": "DX CHEST PA",
        "US": "US ABDOMEN",
    }[st.modality]
    ds.PatientName = st.name
    ds.PatientID = st.patient_id
    ds.IssuerOfPatientID = "CLOUDFILM-SYNTH"
    ds.PatientBirthDate = st.birth_date
    ds.PatientSex = st.sex
    ds.PatientAge = _age(st.birth_date, st.study_date)
    ds.StudyInstanceUID = st.study_uid
    ds.SeriesInstanceUID = series_uid
    ds.StudyID = str(st.seed % 100000)
    ds.FrameOfReferenceUID = _uid(st.seed, st.modality, "for")
    ds.PositionReferenceIndicator = ""
    ds.PatientOrientation = ""
    return ds


def _set_pixels(
    ds: Dataset, arr: NDArray[np.generic], *, samples: int, bits_stored: int, signed: bool
) -> None:
    frames = arr.shape[0] if (arr.ndim == 3 and samples == 1) or arr.ndim == 4 else 1
    rows, cols = (arr.shape[-3], arr.shape[-2]) if samples == 3 else (arr.shape[-2], arr.shape[-1])
    ds.SamplesPerPixel = samples
    ds.PhotometricInterpretation = (
        "RGB" if samples == 3 else ds.get("PhotometricInterpretation", "MONOCHROME2")
    )
    if samples == 3:
        ds.PlanarConfiguration = 0
    ds.Rows, ds.Columns = rows, cols
    ds.BitsAllocated = arr.dtype.itemsize * 8
    ds.BitsStored = bits_stored
    ds.HighBit = bits_stored - 1
    ds.PixelRepresentation = 1 if signed else 0
    if frames > 1:
        ds.NumberOfFrames = frames
    ds.PixelData = np.ascontiguousarray(arr).astype(arr.dtype.newbyteorder("<")).tobytes()


class _Grid:
    """Pixel coordinates, computed once per image size."""

    def __init__(self, rows: int, cols: int) -> None:
        yy, xx = np.mgrid[0:rows, 0:cols]
        self.y = yy.astype(np.float32)
        self.x = xx.astype(np.float32)

    def ellipse(self, cy: float, cx: float, ry: float, rx: float) -> NDArray[np.bool_]:
        return bool_((((self.y - cy) / ry) ** 2 + ((self.x - cx) / rx) ** 2) <= 1.0)


def bool_(a: NDArray[np.generic]) -> NDArray[np.bool_]:
    return np.asarray(a, dtype=np.bool_)


def _ct_slice(
    g: _Grid, z: float, rng: np.random.Generator, vessels: NDArray[np.float32]
) -> NDArray[np.int16]:
    """One axial chest slice in HU (z in [0, 1] from neck to abdomen)."""
    hu = np.full(g.y.shape, -1000.0, dtype=np.float32)
    table = (g.y > 440) & (g.y < 452) & (g.x > 40) & (g.x < 472)
    hu[table] = 150.0
    ry, rx = 150 + 12 * np.sin(np.pi * z), 205 + 15 * np.sin(np.pi * z)
    body = g.ellipse(270, 256, ry, rx)
    inner = g.ellipse(270, 256, ry - 14, rx - 14)
    hu[body] = -100.0  # subcutaneous fat
    hu[inner] = 40.0  # muscle and organs
    lung_scale = max(0.0, np.sin(np.pi * min(1.0, z * 1.25)))
    if lung_scale > 0.05:
        for cx in (170.0, 342.0):
            lung = g.ellipse(255, cx, 95 * lung_scale + 5, 62 * lung_scale + 4)
            hu[lung] = -850.0
            # vessels: small bright blobs inside the lungs, drifting with z
            for vy, vx, vr in vessels:
                blob = g.ellipse(255 + vy * 80 * lung_scale, cx + vx * 50 * lung_scale, vr, vr)
                hu[blob & lung] = 40.0
    heart = g.ellipse(285, 245, 60 * lung_scale + 1, 70 * lung_scale + 1)
    hu[heart & inner] = 45.0 if z < 0.7 else 60.0
    liver_scale = max(0.0, (z - 0.6) / 0.4)
    if liver_scale > 0:
        hu[g.ellipse(250, 180, 90 * liver_scale + 1, 100 * liver_scale + 1) & inner] = 60.0
    vert = g.ellipse(370, 256, 24, 26)
    hu[vert] = 1000.0
    hu[g.ellipse(370, 256, 19, 21)] = 300.0
    hu[g.ellipse(345, 256, 9, 6) & ~vert] = 20.0  # spinal canal
    ribs = (np.abs(np.hypot(g.y - 270, (g.x - 256) * ry / rx) - (ry - 30)) < 5) & inner
    rib_mask = ribs & (np.sin(np.arctan2(g.y - 270, g.x - 256) * 9 + z * 20) > 0.3)
    hu[rib_mask] = 700.0
    noise = np.asarray(rng.normal(0.0, 14.0, size=hu.shape), dtype=np.float32)
    hu += np.where(body | table, noise, noise * 0.25)
    return np.clip(np.rint(hu), -1024, 3071).astype(np.int16)


def _ct(st: _Study, images: int, rows: int, cols: int) -> Iterator[Dataset]:
    rng = np.random.default_rng([st.seed, 1])
    g = _Grid(rows, cols)
    vessels = np.column_stack(
        [rng.uniform(-1, 1, 14), rng.uniform(-1, 1, 14), rng.uniform(2, 5, 14)]
    ).astype(np.float32)
    # localizer: one coronal-like projection image
    loc_series = _uid(st.seed, "CT", "series", 0)
    sop = _uid(st.seed, "CT", "localizer")
    ds = _base(st, CT_STORAGE, sop, loc_series)
    ds.SeriesNumber, ds.InstanceNumber = 1, 1
    ds.SeriesDescription, ds.BodyPartExamined = "SCOUT", "CHEST"
    ds.ImageType = ["ORIGINAL", "PRIMARY", "LOCALIZER"]
    proj = _ct_slice(g, 0.5, rng, vessels).astype(np.int32)
    _ct_image(ds, np.clip(proj, -1024, 3071).astype(np.int16), 0.0)
    ds.ImageOrientationPatient = [1, 0, 0, 0, 0, -1]
    yield ds
    series = _uid(st.seed, "CT", "series", 1)
    for i in range(images):
        z = i / max(1, images - 1)
        ds = _base(st, CT_STORAGE, _uid(st.seed, "CT", "image", i), series)
        ds.SeriesNumber, ds.InstanceNumber = 2, i + 1
        ds.SeriesDescription, ds.BodyPartExamined = "AXIAL 1.25mm", "CHEST"
        ds.ImageType = ["ORIGINAL", "PRIMARY", "AXIAL"]
        _ct_image(ds, _ct_slice(g, z, rng, vessels), -1.25 * i)
        yield ds


def _ct_image(ds: Dataset, hu: NDArray[np.int16], slice_z: float) -> None:
    ds.ImageOrientationPatient = [1, 0, 0, 0, 1, 0]
    ds.ImagePositionPatient = [-200.0, -200.0, slice_z]
    ds.SliceLocation = slice_z
    ds.SliceThickness = 1.25
    ds.PixelSpacing = [0.78125, 0.78125]
    ds.KVP = 120
    ds.RescaleIntercept = -1024
    ds.RescaleSlope = 1
    ds.RescaleType = "HU"
    ds.WindowCenter = [40, -600]
    ds.WindowWidth = [400, 1500]
    ds.PhotometricInterpretation = "MONOCHROME2"
    stored = (hu.astype(np.int32) + 1024).astype(np.uint16)
    _set_pixels(ds, stored, samples=1, bits_stored=12, signed=False)


def _mr(st: _Study, images: int, rows: int, cols: int) -> Iterator[Dataset]:
    rng = np.random.default_rng([st.seed, 2])
    g = _Grid(rows, cols)
    series = _uid(st.seed, "MR", "series", 1)
    cy, cx = rows / 2, cols / 2
    for i in range(images):
        z = i / max(1, images - 1)
        s = np.sin(np.pi * (0.15 + 0.7 * z))
        img = np.zeros((rows, cols), dtype=np.float32)
        head = g.ellipse(cy, cx, rows * 0.42 * s + 4, cols * 0.34 * s + 4)
        img[head] = 300.0  # scalp
        brain = g.ellipse(cy, cx, rows * 0.37 * s + 2, cols * 0.29 * s + 2)
        img[brain] = 700.0  # grey matter
        white = g.ellipse(cy, cx, rows * 0.27 * s + 1, cols * 0.2 * s + 1)
        gyri = np.sin(g.x * 0.35 + z * 3) * np.sin(g.y * 0.3) > 0.2
        img[white & gyri] = 850.0
        for dx in (-0.07, 0.07):
            img[
                g.ellipse(cy - rows * 0.03, cx + cols * dx, rows * 0.1 * s + 1, cols * 0.03 + 1)
            ] = 150
        img += np.abs(rng.normal(0, 18, img.shape)).astype(np.float32)
        ds = _base(st, MR_STORAGE, _uid(st.seed, "MR", "image", i), series)
        ds.SeriesNumber, ds.InstanceNumber = 1, i + 1
        ds.SeriesDescription, ds.BodyPartExamined = "T2 AX", "BRAIN"
        ds.ImageType = ["ORIGINAL", "PRIMARY", "M", "ND"]
        ds.ScanningSequence, ds.SequenceVariant, ds.ScanOptions = "SE", "NONE", ""
        ds.MRAcquisitionType, ds.EchoTime, ds.RepetitionTime = "2D", 90, 4000
        ds.MagneticFieldStrength = 3
        ds.ImageOrientationPatient = [1, 0, 0, 0, 1, 0]
        ds.ImagePositionPatient = [-115.0, -115.0, 5.0 * i]
        ds.SliceThickness, ds.PixelSpacing = 5.0, [0.9, 0.9]
        ds.WindowCenter, ds.WindowWidth = 600, 1200
        ds.PhotometricInterpretation = "MONOCHROME2"
        _set_pixels(
            ds, np.clip(img, 0, 4095).astype(np.uint16), samples=1, bits_stored=12, signed=False
        )
        yield ds


def _dx(st: _Study, images: int, rows: int, cols: int) -> Iterator[Dataset]:
    rng = np.random.default_rng([st.seed, 3])
    g = _Grid(rows, cols)
    series = _uid(st.seed, "DX", "series", 1)
    for i in range(images):
        img = np.full((rows, cols), 300.0, dtype=np.float32)
        body = g.ellipse(rows * 0.55, cols * 0.5, rows * 0.5, cols * 0.42)
        img[body] = 2400.0
        for side in (-1, 1):
            lung = g.ellipse(rows * 0.45, cols * (0.5 + side * 0.18), rows * 0.3, cols * 0.13)
            img[lung] = 1200.0
        ribs = np.sin(g.y / rows * 60 + np.abs(g.x - cols / 2) / cols * 8) > 0.75
        img[ribs & body] += 500.0
        img[np.abs(g.x - cols / 2) < cols * 0.035] += 900.0  # spine
        img += rng.normal(0, 25, img.shape).astype(np.float32) + i * 10
        ds = _base(st, DX_PRESENTATION, _uid(st.seed, "DX", "image", i), series)
        ds.SeriesNumber, ds.InstanceNumber = 1, i + 1
        ds.SeriesDescription, ds.BodyPartExamined = "CHEST PA", "CHEST"
        ds.ImageType = ["ORIGINAL", "PRIMARY"]
        ds.PresentationIntentType = "FOR PRESENTATION"
        ds.ImagerPixelSpacing = [0.139, 0.139]
        ds.ViewPosition = "PA"
        ds.WindowCenter, ds.WindowWidth = 2048, 4096
        ds.RescaleIntercept, ds.RescaleSlope = 0, 1
        ds.PhotometricInterpretation = "MONOCHROME2"
        _set_pixels(
            ds, np.clip(img, 0, 4095).astype(np.uint16), samples=1, bits_stored=12, signed=False
        )
        yield ds


def _us(st: _Study, images: int, frames: int, rows: int, cols: int) -> Iterator[Dataset]:
    rng = np.random.default_rng([st.seed, 4])
    g = _Grid(rows, cols)
    series = _uid(st.seed, "US", "series", 1)
    r = np.hypot(g.y - 20, g.x - cols / 2)
    angle = np.arctan2(g.x - cols / 2, g.y - 20)
    fan = (r < rows * 0.95) & (r > 30) & (np.abs(angle) < 0.75)
    for i in range(images):
        cine = np.zeros((frames, rows, cols, 3), dtype=np.uint8)
        for f in range(frames):
            organ = g.ellipse(rows * 0.5 + 8 * np.sin(f / 3), cols * 0.5, rows * 0.18, cols * 0.2)
            tissue = rng.rayleigh(45, (rows, cols)).astype(np.float32) * (1.0 - r / (rows * 1.4))
            tissue[organ] *= 0.35
            grey = np.clip(np.where(fan, tissue, 0), 0, 255).astype(np.uint8)
            cine[f] = grey[..., None]
            cine[f, 8:20, 8:120] = (255, 220, 0)  # burned-in colour scale bar
        ds = _base(
            st, US_MULTIFRAME if frames > 1 else US_STORAGE, _uid(st.seed, "US", "image", i), series
        )
        ds.SeriesNumber, ds.InstanceNumber = 1, i + 1
        ds.SeriesDescription, ds.BodyPartExamined = "ABDOMEN", "ABDOMEN"
        ds.ImageType = ["ORIGINAL", "PRIMARY", "ABDOMINAL"]
        ds.PhotometricInterpretation = "RGB"
        if frames > 1:
            ds.FrameTime = 33.3
            ds.CineRate = 30
            ds.FrameIncrementPointer = 0x00181063
        _set_pixels(ds, cine if frames > 1 else cine[0], samples=3, bits_stored=8, signed=False)
        yield ds


def synthesize_study(
    out_dir: Path,
    *,
    modality: str,
    images: int,
    seed: int,
    frames: int | None = None,
    patient_id: str | None = None,
    rows: int | None = None,
    columns: int | None = None,
) -> list[Path]:
    """Write a synthetic study as DICOM Part 10 files ``IM00001.dcm``... in ``out_dir``.

    CT studies hold a one-image localizer series plus an axial series of ``images`` slices
    (so ``images + 1`` files); other modalities one series of ``images`` instances. US images
    are multi-frame cines of ``frames`` frames (default 10). Returns the paths in order.
    """
    if modality not in MODALITIES:
        raise ValueError(f"modality must be one of {', '.join(MODALITIES)}, got {modality!r}")
    if images < 1:
        raise ValueError(f"images must be at least 1, got {images}")
    if frames is not None and frames < 1:
        raise ValueError(f"frames must be at least 1, got {frames}")
    default_size = {"CT": (512, 512), "MR": (256, 256), "DX": (2500, 2048), "US": (480, 640)}
    r0, c0 = default_size[modality]
    r, c = rows or r0, columns or c0
    if not (16 <= r <= 8192 and 16 <= c <= 8192):
        raise ValueError(f"rows and columns must be 16..8192, got {r}x{c}")
    st = _study(seed, modality, patient_id)
    datasets: Iterator[Dataset]
    if modality == "CT":
        datasets = _ct(st, images, r, c)
    elif modality == "MR":
        datasets = _mr(st, images, r, c)
    elif modality == "DX":
        datasets = _dx(st, images, r, c)
    else:
        datasets = _us(st, images, frames or 10, r, c)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = []
    for n, ds in enumerate(datasets, start=1):
        path = out_dir / f"IM{n:05d}.dcm"
        ds.ContentTime = f"0931{n % 60:02d}"
        pydicom.dcmwrite(path, ds, enforce_file_format=True)
        paths.append(path)
    return paths

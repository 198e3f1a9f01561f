"""Synthetic but realistic DICOM studies for tests, benches and the demo (never real patients).

Each modality gets body-like anatomy plus noise, so lossless codecs see ratios like real images
(CT about 2.7x with JPEG-LS), and complete Patient / Study / Series / Frame of Reference /
Equipment / Image / SOP Common modules. Everything derives from the arguments: the same
arguments give the same bytes, and any other argument gives other UIDs.

Anatomy is painted in patient millimetres with ellipses that only touch their bounding boxes,
so a 512x512 CT slice costs a few milliseconds, most of it noise.
"""

from __future__ import annotations

import datetime as dt
import logging
import math
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pydicom
from numpy.typing import NDArray
from PIL import Image
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import UID, ExplicitVRLittleEndian, generate_uid

logger = logging.getLogger(__name__)

MODALITIES = ("CT", "MR", "DX", "US")

CT_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.2"
MR_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.4"
DX_FOR_PRESENTATION_STORAGE = "1.2.840.10008.5.1.4.1.1.1.1"
US_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.6.1"
US_MULTIFRAME_STORAGE = "1.2.840.10008.5.1.4.1.1.3.1"

_DEFAULT_SIZE = {"CT": (512, 512), "MR": (256, 256), "DX": (2500, 2048), "US": (480, 640)}
_MIN_SIZE, _MAX_SIZE = 16, 8192
_NAMES = (
    ("Zhang^San", "张^三"),
    ("Li^Si", "李^四"),
    ("Wang^Wu", "王^五"),
    ("Zhao^Liu", "赵^六"),
    ("Chen^Jing", "陈^静"),
    ("Liu^Yang", "刘^洋"),
)
_CT_CHEST_MM = 375.0  # thoracic inlet (t=0) to upper abdomen (t=1)
_CT_FOV_MM = 400.0
_CT_NOISE_HU = 20.0  # 1.25 mm slices, standard kernel; with the anatomy, sets the JPEG-LS ratio

_F32 = NDArray[np.float32]
_Range = tuple[float, float] | None


@dataclass(frozen=True, slots=True)
class _Study:
    key: tuple[object, ...]  # every argument that shapes the pixels: the UIDs' entropy
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


def _study(key: tuple[object, ...], seed: int, modality: str, patient_id: str | None) -> _Study:
    rng = np.random.default_rng([seed, 7])
    alpha, ideo = _NAMES[seed % len(_NAMES)]
    day = dt.date(2024, 1, 1) + dt.timedelta(days=int(rng.integers(0, 700)))
    birth = dt.date(1940, 1, 1) + dt.timedelta(days=int(rng.integers(0, 25000)))
    return _Study(
        key=key,
        seed=seed,
        modality=modality,
        patient_id=f"P{seed:08d}" if patient_id is None else patient_id,
        name=f"{alpha}={ideo}",
        sex="MF"[seed % 2],
        birth_date=birth.strftime("%Y%m%d"),
        study_date=day.strftime("%Y%m%d"),
        study_uid=_uid(*key, "study"),
    )


def _age(birth: str, on: str) -> str:
    b, d = dt.datetime.strptime(birth, "%Y%m%d"), dt.datetime.strptime(on, "%Y%m%d")
    return f"{min(999, (d - b).days // 365):03d}Y"


def _base(
    st: _Study, sop_class: str, series: int, instance: int, description: str, body_part: str
) -> Dataset:
    """Patient, General Study / Series / Equipment / Image, Frame of Reference and SOP Common."""
    sop_uid = _uid(*st.key, "image", series, instance)
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = UID(sop_class)
    meta.MediaStorageSOPInstanceUID = UID(sop_uid)
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SpecificCharacterSet = "ISO_IR 192"
    ds.SOPClassUID = sop_class
    ds.SOPInstanceUID = sop_uid
    ds.InstanceCreationDate = ds.StudyDate = ds.SeriesDate = st.study_date
    ds.AcquisitionDate = ds.ContentDate = st.study_date
    ds.StudyTime = "093000"
    ds.SeriesTime = f"0931{series:02d}"
    ds.AcquisitionTime = ds.ContentTime = f"0931{series:02d}.{instance % 10**6:06d}"
    ds.InstanceCreationTime = ds.ContentTime
    ds.AccessionNumber = f"A{st.seed % 10**9:09d}{st.modality}"
    ds.Modality = st.modality
    ds.Manufacturer = "CloudFilm Synth"
    ds.ManufacturerModelName = f"Synth {st.modality}"
    ds.SoftwareVersions = "cloudfilm-synth 1"
    ds.DeviceSerialNumber = f"SYN{st.modality}001"
    ds.StationName = f"SYN{st.modality}1"
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
    ds.StudyID = str(st.seed % 100000)
    ds.SeriesInstanceUID = _uid(*st.key, "series", series)
    ds.SeriesNumber = series
    ds.SeriesDescription = description
    ds.BodyPartExamined = body_part
    ds.InstanceNumber = instance
    ds.AcquisitionNumber = 1
    ds.FrameOfReferenceUID = _uid(*st.key, "frame-of-reference")
    ds.PositionReferenceIndicator = ""
    ds.BurnedInAnnotation = "NO"
    ds.LossyImageCompression = "00"
    return ds


def _set_pixels(ds: Dataset, arr: NDArray[np.uint8] | NDArray[np.uint16], bits: int) -> None:
    """Image Pixel module for unsigned ``arr``: (rows, cols), (frames, rows, cols, 3) or similar."""
    colour = ds.PhotometricInterpretation == "RGB"
    ds.SamplesPerPixel = 3 if colour else 1
    if colour:
        ds.PlanarConfiguration = 0
    multi = arr.ndim == (4 if colour else 3)
    ds.Rows, ds.Columns = arr.shape[int(multi)], arr.shape[int(multi) + 1]
    ds.BitsAllocated = arr.dtype.itemsize * 8
    ds.BitsStored = bits
    ds.HighBit = bits - 1
    ds.PixelRepresentation = 0
    if multi:
        ds.NumberOfFrames = arr.shape[0]
    ds.PixelData = np.ascontiguousarray(arr, dtype=arr.dtype.newbyteorder("<")).tobytes()


def _ds(*values: float) -> list[float]:
    """Decimal String values: at most 16 characters, so rounded to micrometres."""
    return [round(float(v), 6) for v in values]


def _smooth(t: float, a: float, b: float) -> float:
    """0 up to ``a``, 1 from ``b``, smoothstep in between."""
    x = min(1.0, max(0.0, (t - a) / (b - a)))
    return x * x * (3.0 - 2.0 * x)


def _axis(n: int, spacing: float) -> _F32:
    """Pixel-centre coordinates in mm, centred on 0."""
    return ((np.arange(n, dtype=np.float32) - (n - 1) / 2.0) * spacing).astype(np.float32)


class _Canvas:
    """A float32 picture over pixel-centre coordinates (mm), painted with ellipses and boxes.

    Every primitive only touches its bounding box, so small structures cost microseconds.
    """

    __slots__ = ("img", "x", "y")

    def __init__(self, x: _F32, y: _F32, fill: float) -> None:
        self.x, self.y = x, y  # ascending column and row coordinates
        self.img: _F32 = np.full((y.size, x.size), fill, dtype=np.float32)

    def _box(self, x0: float, x1: float, y0: float, y1: float) -> tuple[slice, slice] | None:
        cols = slice(int(np.searchsorted(self.x, x0)), int(np.searchsorted(self.x, x1, "right")))
        rows = slice(int(np.searchsorted(self.y, y0)), int(np.searchsorted(self.y, y1, "right")))
        return None if cols.start >= cols.stop or rows.start >= rows.stop else (rows, cols)

    def _dist(self, box: tuple[slice, slice], cx: float, cy: float, ax: float, ay: float) -> _F32:
        """Squared normalised elliptic radius over ``box``."""
        u = ((self.x[box[1]] - cx) / ax) ** 2
        v = ((self.y[box[0]] - cy) / ay) ** 2
        return np.asarray(v[:, None] + u[None, :], dtype=np.float32)

    def _fill(
        self, box: tuple[slice, slice], mask: NDArray[np.bool_], value: float, within: _Range
    ) -> None:
        patch = self.img[box]
        if within is not None:
            mask &= (patch >= within[0]) & (patch <= within[1])
        patch[mask] = value

    def ellipse(
        self, cx: float, cy: float, ax: float, ay: float, value: float, within: _Range = None
    ) -> None:
        """Set ``value`` inside the ellipse, where the picture is within the given range."""
        if ax > 0 and ay > 0:
            box = self._box(cx - ax, cx + ax, cy - ay, cy + ay)
            if box is not None:
                self._fill(box, self._dist(box, cx, cy, ax, ay) <= 1.0, value, within)

    def rect(
        self, x0: float, x1: float, y0: float, y1: float, value: float, within: _Range = None
    ) -> None:
        box = self._box(x0, x1, y0, y1)
        if box is not None:
            shape = (box[0].stop - box[0].start, box[1].stop - box[1].start)
            self._fill(box, np.ones(shape, dtype=np.bool_), value, within)

    def dome(self, cx: float, cy: float, ax: float, ay: float, height: float) -> None:
        """Add the thickness of an ellipsoid, ``height * sqrt(1 - r^2)`` (radiography)."""
        box = self._box(cx - ax, cx + ax, cy - ay, cy + ay)
        if box is not None:
            d = self._dist(box, cx, cy, ax, ay)
            self.img[box] += height * np.sqrt(np.maximum(1.0 - d, 0.0))

    def arc(
        self,
        centre: tuple[float, float],
        axes: tuple[float, float],
        half_width: float,
        value: float,
        x_range: tuple[float, float],
    ) -> None:
        """Add ``value`` along the upper half of an elliptic band (ribs, clavicles)."""
        (cx, cy), (ax, ay) = centre, axes
        box = self._box(x_range[0], x_range[1], cy - ay * (1 + half_width), cy)
        if box is not None:
            d = np.sqrt(self._dist(box, cx, cy, ax, ay))
            self.img[box] += value * np.sqrt(np.maximum(1.0 - np.abs(d - 1.0) / half_width, 0.0))


def _noise(rng: np.random.Generator, shape: tuple[int, ...], sigma: float) -> _F32:
    n = rng.standard_normal(shape, dtype=np.float32)
    n *= np.float32(sigma)
    return n


def _texture(rng: np.random.Generator, rows: int, cols: int, cells: int = 24) -> _F32:
    """Smooth random field of about unit amplitude (organ texture, bias fields)."""
    coarse = rng.standard_normal((cells, cells)).astype(np.float32)
    img = Image.fromarray(coarse).resize((cols, rows), Image.Resampling.BICUBIC)
    return np.asarray(img, dtype=np.float32)


# --- CT -------------------------------------------------------------------------------------


def _ct_vessels(rng: np.random.Generator, per_lung: int = 36) -> _F32:
    """Lung vessels as straight tubes: side, u0, v0, du, dv, radius (u lateral, v posterior)."""
    n = 2 * per_lung
    side = np.repeat(np.array([-1.0, 1.0]), per_lung)
    angle, radius = rng.uniform(0, 2 * np.pi, n), np.sqrt(rng.uniform(0, 1, n)) * 0.9
    u0, v0 = radius * np.cos(angle), radius * np.sin(angle)
    du, dv = rng.normal(0, 0.35, n), rng.normal(0, 0.35, n)
    hilum = np.exp(-((u0 + 0.6) ** 2 + v0**2) / 0.2)
    r = 0.8 + 3.8 * hilum * rng.uniform(0.6, 1.0, n)
    return np.column_stack([side, u0, v0, du, dv, r]).astype(np.float32)


def _ct_lungs(cv: _Canvas, t: float, vessels: _F32, detail: bool) -> None:
    soft = (0.0, 100.0)
    for side, end in ((-1.0, 0.84), (1.0, 0.9)):  # the right hemidiaphragm sits higher
        if not -0.02 < t < end:
            continue
        grow = _smooth(t, -0.02, 0.55)
        lcx, lax, lay = side * 72.0, 58.0 * (0.35 + 0.65 * grow), 80.0 * (0.3 + 0.7 * grow)
        cv.ellipse(lcx, -5, lax, lay, -860, soft)
        cv.ellipse(lcx, -5 + 0.6 * lay, 0.8 * lax, 0.4 * lay, -815, (-900.0, -840.0))
        if detail:
            for vs, u0, v0, du, dv, r in vessels[vessels[:, 0] == side].tolist():
                u, v = u0 + du * (t - 0.5), v0 + dv * (t - 0.5)
                if u * u + v * v < 1.0:
                    rr = r * (0.5 + 0.5 * grow)
                    cv.ellipse(lcx + vs * u * lax, -5 + v * lay, rr, rr, 35, (-1000.0, -700.0))
            for dy in (-8.0, 8.0):  # lobar bronchi near the hilum
                bx = lcx - side * 0.45 * lax
                cv.ellipse(bx, -12 + dy, 4.5, 4.5, 20, (-1000.0, -700.0))
                cv.ellipse(bx, -12 + dy, 3.0, 3.0, -990, (0.0, 40.0))
        dome = _smooth(t, end - 0.32, end + 0.02)  # liver / spleen rising into the lung base
        organ = 58.0 if side < 0 else 48.0
        cv.ellipse(lcx, -10, 1.1 * lax * dome, 1.1 * lay * dome, organ, (-1000.0, -600.0))


def _ct_mediastinum(cv: _Canvas, t: float) -> None:
    if t < 0.85:
        fat = (-1000.0, 50.0)  # replaces lung and muscle, never the liver
        size = 1.0 - _smooth(t, 0.7, 0.85)
        cv.ellipse(0, -15, 36 * size, 62 * (0.6 + 0.4 * _smooth(t, 0, 0.3)) * size, -80, fat)
        if t < 0.3:  # trachea, then main bronchi
            cv.ellipse(0, -22, 10, 9, 30)
            cv.ellipse(0, -22, 8, 7, -1000)
        elif t < 0.37:
            for side in (-1.0, 1.0):
                cv.ellipse(side * 12, -14, 7, 6, 30)
                cv.ellipse(side * 12, -14, 5, 4, -1000)
        if 0.18 < t < 0.5:
            cv.ellipse(-14, -38, 15, 15, 42)  # ascending aorta
        if 0.12 < t < 0.18:
            for k in range(7):  # aortic arch, running back and to the left
                cv.ellipse(-14 + 32 * k / 6, -38 + 80 * k / 6, 13, 13, 42)
        if 0.32 < t < 0.45:
            cv.ellipse(8, -30, 14, 14, 40)  # pulmonary trunk
        if 0.1 < t < 0.42:
            cv.ellipse(-28, -30, 9, 9, 38)  # superior vena cava
        cv.ellipse(6, 34, 7, 7, 35)  # oesophagus
        cv.ellipse(6, 34, 2, 2, -990)
        heart = _smooth(t, 0.36, 0.5) * (1.0 - _smooth(t, 0.68, 0.82))
        cv.ellipse(20, -25, 66 * heart + 4, 56 * heart + 4, -90, fat)  # pericardial fat
        cv.ellipse(20, -25, 62 * heart, 52 * heart, 42, fat)
    if t > 0.12:
        cv.ellipse(18 - 14 * _smooth(t, 0.75, 1.0), 42, 12, 12, 42)  # descending aorta
    if t > 0.75:
        cv.ellipse(-22, 38, 11, 11, 40)  # inferior vena cava


def _ct_bones(cv: _Canvas, t: float, z_mm: float, body: tuple[float, float, float]) -> None:
    bax, bay, bcy = body
    grow = 1.0 + 0.3 * min(1.0, max(0.0, t))
    if (z_mm % 28.0) / 28.0 > 0.82:  # vertebrae about 28 mm apart, discs between
        cv.ellipse(0, 52, 19 * grow, 16 * grow, 85)
    else:
        cv.ellipse(0, 52, 19 * grow, 16 * grow, 650)
        cv.ellipse(0, 52, 16 * grow, 13 * grow, 220)
        for side in (-1.0, 1.0):
            cv.ellipse(side * 24, 78, 12, 5, 600)  # transverse processes
    cv.ellipse(0, 76, 16, 13, 600)  # lamina, spinal canal, spinous process
    cv.ellipse(0, 74, 8, 7, 15)
    cv.ellipse(0, 89, 5, 7, 600)
    if t < 0.95:  # ribs in the chest wall, sliding round as they run obliquely
        rax, ray = bax - 19, bay - 14
        for side in (-1.0, 1.0):
            for k in range(7):
                phi = 0.6 + 0.36 * k + 0.12 * math.sin(2 * math.pi * (3 * t + 0.37 * k))
                x, y = side * rax * math.sin(phi), bcy - ray * math.cos(phi)
                cortex, marrow = (150.0, 120.0) if k == 0 else (620.0, 230.0)  # k=0: cartilage
                cv.ellipse(x, y, 4.5, 4.0, cortex)
                cv.ellipse(x, y, 2.5, 2.0, marrow)
    if 0.08 < t < 0.68:
        ys = bcy - bay + 20
        cv.ellipse(0, ys, 15, 6, 550)  # sternum
        cv.ellipse(0, ys, 12, 3.5, 220)
    if t < 0.45:
        for side in (-1.0, 1.0):  # scapulae: thin oblique plates behind the ribs
            for k in range(13):
                cv.ellipse(side * (70 + 55 * k / 12), 80 - 35 * k / 12, 4.0, 4.0, 550, (0.0, 100.0))


def _ct_slice(cv: _Canvas, t: float, z_mm: float, vessels: _F32, detail: bool) -> None:
    """Paint one axial chest slice in HU onto an air canvas (t: 0 thoracic inlet, 1 abdomen)."""
    sb = 0.94 + 0.06 * math.sin(math.pi * min(1.0, max(0.0, t)))
    bax, bay, bcy = 165.0 * sb, 110.0 * sb, -2.0
    cv.rect(-200, 200, bcy + bay + 1, 116, -600)  # pad
    cv.rect(-200, 200, 116, 119, 350)  # carbon-fibre table: skins round a foam core
    cv.rect(-200, 200, 119, 131, -880)
    cv.rect(-200, 200, 131, 134, 350)
    cv.ellipse(0, bcy, bax, bay, -100)  # skin and subcutaneous fat
    cv.ellipse(0, bcy, bax - 14, bay - 10, 45)  # muscle, organs
    _ct_lungs(cv, t, vessels, detail)
    soft = (0.0, 100.0)
    liver = _smooth(t, 0.6, 0.95)
    cv.ellipse(-50, 5, 105 * liver, 85 * liver, 58, soft)
    gut = _smooth(t, 0.7, 0.92)
    cv.ellipse(95, 40, 30 * gut, 50 * gut, 48, soft)  # spleen
    cv.ellipse(55, -20, 48 * gut, 40 * gut, 25, soft)  # stomach with its air cap
    cv.ellipse(55, -20 - 24 * gut, 32 * gut, 13 * gut, -995, (20.0, 30.0))
    kidney = _smooth(t, 0.92, 1.1)
    for side in (-1.0, 1.0):
        cv.ellipse(side * 60, 55, 34 * kidney, 44 * kidney, -90, soft)
        cv.ellipse(side * 60, 55, 26 * kidney, 36 * kidney, 35, (-100.0, 100.0))
    _ct_mediastinum(cv, t)
    _ct_bones(cv, t, z_mm, (bax, bay, bcy))


def _ct_thickness(images: int) -> float:
    """Thickest usual slice that keeps the series about a chest long."""
    fits = [thk for thk in (10.0, 5.0, 2.5, 1.25) if images * thk <= 400.0]
    return fits[0] if fits else 1.25


def _ct_common(ds: Dataset) -> None:
    ds.PatientPosition = "HFS"
    ds.KVP = 120
    ds.XRayTubeCurrent = 200
    ds.ExposureTime = 500
    ds.Exposure = 100
    ds.GantryDetectorTilt = 0
    ds.TableHeight = 160
    ds.ConvolutionKernel = "STANDARD"
    ds.RescaleIntercept = -1024
    ds.RescaleSlope = 1
    ds.RescaleType = "HU"
    ds.PhotometricInterpretation = "MONOCHROME2"


def _hu_to_stored(hu: _F32) -> NDArray[np.uint16]:
    np.rint(hu, out=hu)
    hu += 1024.0
    np.clip(hu, 0.0, 4095.0, out=hu)
    return hu.astype(np.uint16)


CALIBRATION_DIAMETER_MM = 50.0
CALIBRATION_HU = 100
CALIBRATION_CENTER_MM = (0.0, -155.0)
"""The calibration disc of ``synthesize_study(..., calibration=True)``: a uniform rod of
+100 HU, 50.0 mm across, anterior to the chest (x right, y posterior, mm from the centre of
the reconstruction circle), in every axial slice."""


def _calibration_mask(x: _F32, y: _F32) -> NDArray[np.bool_]:
    cx, cy = CALIBRATION_CENTER_MM
    r = CALIBRATION_DIAMETER_MM / 2
    return np.asarray((x[None, :] - cx) ** 2 + (y[:, None] - cy) ** 2 <= r * r, dtype=np.bool_)


def _ct(
    st: _Study, images: int, rows: int, cols: int, calibration: bool = False
) -> Iterator[Dataset]:
    rng = np.random.default_rng([st.seed, 1])
    vessels = _ct_vessels(rng)
    thk = _ct_thickness(images)
    mid = _CT_CHEST_MM / 2
    yield _ct_localizer(st, rng, vessels, mid, rows, cols)

    sp = _CT_FOV_MM / cols
    x, y = _axis(cols, sp), _axis(rows, sp)
    outside = (x[None, :] ** 2 + y[:, None] ** 2) > (_CT_FOV_MM / 2) ** 2  # reconstruction circle
    tex = _texture(rng, rows, cols) * np.float32(6.0)
    disc = _calibration_mask(x, y) if calibration else None
    for i in range(images):
        z_mm = mid + (i - (images - 1) / 2) * thk
        cv = _Canvas(x, y, -1000.0)
        _ct_slice(cv, z_mm / _CT_CHEST_MM, z_mm, vessels, detail=True)
        hu = cv.img
        hu += tex
        hu += _noise(rng, hu.shape, _CT_NOISE_HU)
        hu[outside] = -1024.0
        if disc is not None:
            hu[disc] = CALIBRATION_HU  # noise-free, so a probe anywhere in it reads the value
        ds = _base(st, CT_IMAGE_STORAGE, 2, i + 1, f"AXIAL {thk:g}mm", "CHEST")
        _ct_common(ds)
        ds.ImageType = ["ORIGINAL", "PRIMARY", "AXIAL"]
        ds.ImageOrientationPatient = [1, 0, 0, 0, 1, 0]
        ds.ImagePositionPatient = _ds(x[0], y[0], -z_mm)
        ds.SliceLocation = _ds(-z_mm)[0]
        ds.SliceThickness = thk
        ds.SpacingBetweenSlices = thk
        ds.PixelSpacing = _ds(sp, sp)
        ds.ReconstructionDiameter = _CT_FOV_MM
        ds.DataCollectionDiameter = 500
        ds.WindowCenter, ds.WindowWidth = [40, -600], [400, 1500]
        ds.WindowCenterWidthExplanation = ["MEDIASTINUM", "LUNG"]
        _set_pixels(ds, _hu_to_stored(hu), 12)
        yield ds


def _ct_localizer(
    st: _Study, rng: np.random.Generator, vessels: _F32, mid: float, rows: int, cols: int
) -> Dataset:
    """Frontal scout: line integrals through coarse axial slices, like a topogram."""
    height, width, step = 520.0, 480.0, 3.0
    xs, ys = _axis(int(width / step), step), _axis(100, step)
    n = max(8, rows // 4)
    proj = np.empty((n, xs.size), dtype=np.float32)
    for k in range(n):
        z_mm = mid - height / 2 + (k + 0.5) * height / n
        cv = _Canvas(xs, ys, -1000.0)
        _ct_slice(cv, z_mm / _CT_CHEST_MM, z_mm, vessels, detail=False)
        proj[k] = np.maximum(cv.img + 1000.0, 0.0).sum(axis=0) * (step / 1000.0)
    img = Image.fromarray(proj).resize((cols, rows), Image.Resampling.BILINEAR)
    values = np.asarray(img, dtype=np.float32) * np.float32(6.0) - np.float32(1000.0)
    values += _noise(rng, values.shape, 10.0)
    ds = _base(st, CT_IMAGE_STORAGE, 1, 1, "TOPOGRAM", "CHEST")
    _ct_common(ds)
    ds.ImageType = ["ORIGINAL", "PRIMARY", "LOCALIZER"]
    ds.ImageOrientationPatient = [1, 0, 0, 0, 0, -1]
    row_sp, col_sp = height / rows, width / cols
    ds.ImagePositionPatient = _ds(-width / 2 + col_sp / 2, 0.0, -(mid - height / 2 + row_sp / 2))
    ds.PixelSpacing = _ds(row_sp, col_sp)
    ds.SliceThickness = 1.0
    ds.WindowCenter, ds.WindowWidth = 500, 2400
    _set_pixels(ds, _hu_to_stored(values), 12)
    return ds


# --- MR -------------------------------------------------------------------------------------


def _mr_slice(cv: _Canvas, rho: _F32, theta: _F32, t: float) -> None:
    """Paint one axial T1 brain slice (t: 0 skull base, 1 vertex) onto a black canvas."""
    s = max(0.05, math.sqrt(max(0.0, 1.0 - ((t - 0.3) / 0.78) ** 2)))
    r = rho / np.float32(s)
    img = cv.img
    img[r <= 1.0] = 950.0  # scalp fat
    img[r <= 1.0 - 6.0 / (85 * s)] = 90.0  # skull
    img[r <= 1.0 - 11.0 / (85 * s)] = 260.0  # CSF
    gm_r = 1.0 - 14.0 / (85 * s)
    img[r <= gm_r * (1.0 + 0.015 * np.sin(13 * theta + 5 * t))] = 560.0  # cortex
    sulci = np.sin(17 * theta + 3 * np.sin(5 * theta) + 4 * t) > 0.9
    img[sulci & (r > 0.8 * gm_r) & (r < gm_r)] = 260.0
    wm = 0.78 * gm_r * (1.0 + 0.08 * np.sin(7 * theta + 3 * t) + 0.05 * np.sin(12 * theta - 5 * t))
    img[r <= wm] = 780.0  # white matter with gyral folds
    brain = (400.0, 800.0)
    cv.rect(-1, 1, -200, -25, 260, brain)  # interhemispheric fissure
    cv.rect(-1, 1, 40, 200, 260, brain)
    nuclei = _smooth(t, 0.3, 0.36) * (1 - _smooth(t, 0.5, 0.56))
    vent = _smooth(t, 0.35, 0.42) * (1 - _smooth(t, 0.65, 0.72))
    low = 1.0 - _smooth(t, 0.18, 0.28)
    cv.ellipse(0, -62, 15 * low, 10 * low, 5)  # sinus air
    for side in (-1.0, 1.0):
        cv.ellipse(side * 20, 0, 8 * nuclei, 14 * nuclei, 620, brain)  # basal ganglia
        cv.ellipse(side * 9, 16, 8 * nuclei, 10 * nuclei, 640, brain)  # thalami
        cv.ellipse(side * 6, -8, 4 * vent, 22 * vent, 250, brain)  # lateral ventricles
        cv.ellipse(side * 12, 24, 3.5 * vent, 11 * vent, 250, brain)
        cv.ellipse(side * 33, -66, 18 * low, 20 * low, 900)  # orbit: fat, globe, lens
        cv.ellipse(side * 31, -70, 12 * low, 12 * low, 180)
        cv.ellipse(side * 31, -81, 4 * low, 2 * low, 700)


def _mr(st: _Study, images: int, rows: int, cols: int) -> Iterator[Dataset]:
    rng = np.random.default_rng([st.seed, 2])
    sp, spacing = 230.0 / cols, 6.0
    x, y = _axis(cols, sp), _axis(rows, sp)
    rho = np.sqrt((x[None, :] / 75) ** 2 + ((y[:, None] - 5) / 95) ** 2).astype(np.float32)
    theta = np.arctan2(y[:, None] - 5, x[None, :]).astype(np.float32)
    bias = (1.0 + 0.12 * x[None, :] / 115 - 0.08 * y[:, None] / 115).astype(np.float32)
    bias *= 1.0 + 0.04 * _texture(rng, rows, cols, 8)
    for i in range(images):
        z_mm = 0.55 * 130 + (i - (images - 1) / 2) * spacing
        cv = _Canvas(x, y, 0.0)
        _mr_slice(cv, rho, theta, z_mm / 130)
        signal = cv.img * bias
        real = signal + _noise(rng, signal.shape, 14.0)
        mag = np.hypot(real, _noise(rng, signal.shape, 14.0))  # Rician magnitude
        ds = _base(st, MR_IMAGE_STORAGE, 1, i + 1, "T1 SE AX", "BRAIN")
        ds.ImageType = ["ORIGINAL", "PRIMARY", "M", "ND"]
        ds.PatientPosition = "HFS"
        ds.ScanningSequence, ds.SequenceVariant, ds.ScanOptions = "SE", "NONE", ""
        ds.MRAcquisitionType, ds.EchoTime, ds.RepetitionTime = "2D", 12, 500
        ds.EchoTrainLength, ds.FlipAngle = 1, 90
        ds.MagneticFieldStrength, ds.ImagingFrequency, ds.ImagedNucleus = 3, 127.7, "1H"
        ds.ImageOrientationPatient = [1, 0, 0, 0, 1, 0]
        ds.ImagePositionPatient = _ds(x[0], y[0], z_mm)
        ds.SliceLocation = _ds(z_mm)[0]
        ds.SliceThickness, ds.SpacingBetweenSlices, ds.PixelSpacing = 5.0, spacing, _ds(sp, sp)
        ds.WindowCenter, ds.WindowWidth = 520, 1000
        ds.PhotometricInterpretation = "MONOCHROME2"
        _set_pixels(ds, np.clip(np.rint(mag), 0, 4095).astype(np.uint16), 12)
        yield ds


# --- DX -------------------------------------------------------------------------------------


def _dx_attenuation(x: _F32, y: _F32, breath: float) -> _F32:
    """Chest PA line integrals (arbitrary units) over mm coordinates, y towards the feet."""
    tissue = _Canvas(x, y, 0.0)  # soft-tissue thickness in mm
    tissue.dome(0, -260, 62, 140, 110)  # neck
    tissue.dome(0, 60, 172, 330, 230)  # torso
    bone = _Canvas(x, y, 0.0)  # bone thickness in mm
    bone.dome(0, 0, 16, 700, 30)  # spine
    for side in (-1.0, 1.0):
        tissue.dome(side * 140, -150, 70, 50, 120)  # shoulders
        tissue.dome(side * 195, 20, 35, 260, 90)  # arms
        cy, ay = (-35.0, 128.0) if side < 0 else (-25.0, 135.0)
        tissue.dome(side * 78, cy + breath, 70, ay + breath, -170)  # lungs
        bone.dome(side * 185, -160, 28, 30, 30)  # humeral heads
        lateral = (-170.0, -15.0) if side < 0 else (15.0, 170.0)
        bone.arc((side * 95, -95), (80, 70), 0.1, 16, lateral)  # clavicles
        for k in range(10):  # posterior ribs arch out from the spine
            xr = (-165.0, -12.0) if side < 0 else (12.0, 165.0)
            bone.arc((side * 22, -100 + 25 * k), (150 - 4 * k, 60), 0.07, 7, xr)
        for k in range(7):  # anterior ribs, fainter, sloping down to the sternum
            xr = (-165.0, -30.0) if side < 0 else (30.0, 165.0)
            bone.arc((side * 170, -40 + 25 * k), (150, 90), 0.05, 4, xr)
    tissue.dome(0, -60, 26, 120, 70)  # mediastinum
    tissue.dome(28, 60 + breath, 75, 62, 110)  # heart
    tissue.dome(22, -75, 18, 16, 40)  # aortic knob
    tissue.dome(0, -150, 9, 70, -18)  # trachea
    out = tissue.img * np.float32(0.02)
    out += bone.img * np.float32(0.05)
    np.maximum(out, np.float32(0.0), out=out)
    return out


def _dx(st: _Study, images: int, rows: int, cols: int) -> Iterator[Dataset]:
    rng = np.random.default_rng([st.seed, 3])
    sp = 348.0 / cols
    lo_r, lo_c = max(8, rows // 4), max(8, cols // 4)  # smooth anatomy at a quarter size
    lo_x, lo_y = _axis(lo_c, sp * cols / lo_c), _axis(lo_r, sp * rows / lo_r)
    for i in range(images):
        a = _dx_attenuation(lo_x, lo_y, breath=6.0 * i)
        grey = np.float32(150.0) + np.float32(3800.0) * (a / (a + np.float32(2.5))) ** 1.3
        edge = max(1, lo_c // 30)  # collimator shadow
        grey[:edge], grey[-edge:], grey[:, :edge], grey[:, -edge:] = 4000, 4000, 4000, 4000
        up = Image.fromarray(grey.astype(np.float32)).resize(
            (cols, rows), Image.Resampling.BILINEAR
        )
        img = np.asarray(up, dtype=np.float32) + _noise(rng, (rows, cols), 14.0)
        ds = _base(st, DX_FOR_PRESENTATION_STORAGE, 1, i + 1, "CHEST PA", "CHEST")
        ds.ImageType = ["ORIGINAL", "PRIMARY"]
        ds.PresentationIntentType = "FOR PRESENTATION"
        ds.PatientOrientation = ["L", "F"]
        ds.ViewPosition = "PA"
        ds.ImageLaterality = "U"
        ds.DetectorType = "SCINTILLATOR"
        ds.ImagerPixelSpacing = _ds(sp, sp)
        ds.KVP, ds.ExposureInuAs = 120, 2000
        ds.DistanceSourceToDetector = 1800
        ds.PixelIntensityRelationship, ds.PixelIntensityRelationshipSign = "LOG", 1
        ds.RescaleIntercept, ds.RescaleSlope, ds.RescaleType = 0, 1, "US"
        ds.PresentationLUTShape = "IDENTITY"
        ds.WindowCenter, ds.WindowWidth = 2000, 3600
        ds.PhotometricInterpretation = "MONOCHROME2"
        _set_pixels(ds, np.clip(np.rint(img), 0, 4095).astype(np.uint16), 12)
        yield ds


# --- US -------------------------------------------------------------------------------------


def _us_overlay(cine: NDArray[np.uint8], apex_y: float, depth: float) -> None:
    """Burned-in colour bar, grey-scale bar and 1 cm depth marks, as scanners draw them."""
    rows, cols = cine.shape[1], cine.shape[2]
    cine[:, 8:20, 8 : min(cols, 120)] = (255, 220, 0)
    bar = min(256, rows - 100)
    if bar > 0:
        ramp = np.linspace(255, 0, bar).astype(np.uint8)
        cine[:, 100 : 100 + bar, 10:18] = ramp[None, :, None, None]
    for mark in np.arange(apex_y, apex_y + depth, depth / 16).astype(int).tolist():
        cine[:, mark : mark + 3, cols - 40 : cols - 37] = 255


def _us(st: _Study, images: int, frames: int, rows: int, cols: int) -> Iterator[Dataset]:
    rng = np.random.default_rng([st.seed, 4])
    apex_y, apex_x, depth = 30.0, cols / 2.0, rows * 0.92 - 30.0  # pixels; 16 cm deep
    x = np.arange(cols, dtype=np.float32)
    y = np.arange(rows, dtype=np.float32)
    r = np.hypot(y[:, None] - apex_y, x[None, :] - apex_x)
    angle = np.abs(np.arctan2(x[None, :] - apex_x, y[:, None] - apex_y))
    fan = (r < depth) & (r > 12) & (angle < 0.75)
    gain = np.where(fan, 1.0 - 0.35 * r / depth, 0.0).astype(np.float32)
    gain *= 1.0 + 0.25 * _texture(rng, rows, cols, 12)  # parenchymal inhomogeneity
    margin = 16
    period = max(2.0, min(float(frames), 30.0))
    for i in range(images):
        raw = rng.rayleigh(1.0 / math.sqrt(math.pi / 2), (rows + 2 * margin, cols))
        # speckle is elongated laterally: the beam is wider than the pulse is long
        speckle = ((raw + np.roll(raw, 1, axis=1) + np.roll(raw, -1, axis=1)) / 3).astype(
            np.float32
        )
        cine = np.zeros((frames, rows, cols, 3), dtype=np.uint8)
        for f in range(frames):
            dy = 10.0 * math.sin(2 * math.pi * f / period)  # breathing moves the liver
            echo = _Canvas(x, y, 1.0)
            echo.ellipse(apex_x + 40, rows * 1.15 + dy, cols * 0.6, rows * 0.4, 2.6)  # diaphragm
            echo.ellipse(apex_x + 40, rows * 1.15 + dy, cols * 0.6 - 8, rows * 0.4 - 8, 0.55)
            echo.ellipse(apex_x - 60, rows * 0.45 + dy, 55, 32, 0.03)  # gallbladder
            for vx, vy, vr in ((70, 0.35, 12), (20, 0.55, 7), (-5, 0.28, 5), (110, 0.6, 6)):
                echo.ellipse(apex_x + vx, rows * vy + dy, vr + 4, vr + 3, 2.2)  # portal walls
                echo.ellipse(apex_x + vx, rows * vy + dy, vr, vr - 2, 0.05)
            s0 = margin + round(dy)
            env = echo.img * speckle[s0 : s0 + rows] * gain
            cine[f] = np.clip(60.0 * np.log1p(4.0 * env), 0, 255).astype(np.uint8)[..., None]
        _us_overlay(cine, apex_y, depth)
        sop = US_MULTIFRAME_STORAGE if frames > 1 else US_IMAGE_STORAGE
        ds = _base(st, sop, 1, i + 1, "LIVER", "ABDOMEN")
        ds.ImageType = ["ORIGINAL", "PRIMARY", "ABDOMINAL"]
        ds.PhotometricInterpretation = "RGB"
        if frames > 1:
            ds.FrameTime = 33.3
            ds.CineRate = 30
            ds.RecommendedDisplayFrameRate = 30
            ds.FrameIncrementPointer = 0x00181063
        region = Dataset()
        region.RegionSpatialFormat, region.RegionDataType, region.RegionFlags = 1, 1, 0
        region.RegionLocationMinX0, region.RegionLocationMinY0 = 0, int(apex_y)
        region.RegionLocationMaxX1, region.RegionLocationMaxY1 = cols - 1, rows - 1
        region.PhysicalUnitsXDirection, region.PhysicalUnitsYDirection = 3, 3
        region.PhysicalDeltaX = region.PhysicalDeltaY = 16.0 / depth
        region.ReferencePixelX0, region.ReferencePixelY0 = int(apex_x), 0
        ds.SequenceOfUltrasoundRegions = [region]
        _set_pixels(ds, cine if frames > 1 else cine[0], 8)
        yield ds


# --- entry point ----------------------------------------------------------------------------


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
    calibration: bool = False,
) -> list[Path]:
    """Write a synthetic study as DICOM Part 10 files ``IM00001.dcm``... in ``out_dir``.

    - CT: a one-image frontal localizer (series 1, ``IM00001.dcm``) plus an axial chest series
      of ``images`` slices (series 2), so ``images + 1`` files; 512x512, 12 bits stored,
      RescaleIntercept -1024. Slices are 1.25 to 10 mm, whichever keeps the series a chest long.
    - MR: ``images`` axial T1 brain slices, 256x256.
    - DX: ``images`` chest PA radiographs, 2500 rows x 2048 columns, 12-bit MONOCHROME2.
    - US: ``images`` RGB 480x640 liver scans; cines of ``frames`` frames (default 10), single
      frame Ultrasound Image Storage when ``frames`` is 1.

    ``calibration`` (CT only) adds a calibration disc to every axial slice: 50.0 mm across,
    +100 HU, noise-free (``CALIBRATION_*``), for tests of measurements and the HU probe.
    ``frames`` applies to US only; ``rows``/``columns`` override the modality's size; the
    patient ID defaults to ``P`` and the seed in 8 digits. The same arguments give byte-identical
    files; UIDs derive from every argument, so another seed (or patient, size or count) gives
    another study. Returns the paths in instance order. Raises ValueError naming a bad argument.
    """
    if modality not in MODALITIES:
        raise ValueError(f"modality must be one of {', '.join(MODALITIES)}, got {modality!r}")
    if images < 1:
        raise ValueError(f"images must be at least 1, got {images}")
    if seed < 0:
        raise ValueError(f"seed must be >= 0, got {seed}")
    if frames is not None and frames < 1:
        raise ValueError(f"frames must be at least 1, got {frames}")
    if frames is not None and frames > 1 and modality != "US":
        raise ValueError(f"frames applies to US only ({modality} is single-frame), got {frames}")
    if patient_id is not None and not (
        0 < len(patient_id) <= 64 and patient_id.isprintable() and "\\" not in patient_id
    ):
        raise ValueError(
            f"patient_id must be 1..64 printable characters, no '\\', got {patient_id!r}"
        )
    if calibration and modality != "CT":
        raise ValueError(f"calibration applies to CT only, got {modality}")
    default_rows, default_cols = _DEFAULT_SIZE[modality]
    r = default_rows if rows is None else rows
    c = default_cols if columns is None else columns
    for name, value in (("rows", r), ("columns", c)):
        if not _MIN_SIZE <= value <= _MAX_SIZE:
            raise ValueError(f"{name} must be {_MIN_SIZE}..{_MAX_SIZE}, got {value}")
    n_frames = (frames or 10) if modality == "US" else 1
    key: tuple[object, ...] = (seed, modality, patient_id or "", images, n_frames, r, c)
    if calibration:
        key += ("calibration",)
    st = _study(key, seed, modality, patient_id)
    datasets: Iterator[Dataset]
    if modality == "CT":
        datasets = _ct(st, images, r, c, calibration)
    elif modality == "MR":
        datasets = _mr(st, images, r, c)
    elif modality == "DX":
        datasets = _dx(st, images, r, c)
    else:
        datasets = _us(st, images, n_frames, r, c)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = []
    for n, ds in enumerate(datasets, start=1):
        path = out_dir / f"IM{n:05d}.dcm"
        pydicom.dcmwrite(path, ds, enforce_file_format=True)
        paths.append(path)
    logger.debug(
        "synthesised %s study: %d files of %dx%d in %s", modality, len(paths), r, c, out_dir
    )
    return paths

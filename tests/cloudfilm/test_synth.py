from __future__ import annotations

from itertools import pairwise
from pathlib import Path
from typing import Any

import imagecodecs
import numpy as np
import pydicom
import pytest
from pydicom.uid import ExplicitVRLittleEndian

from cloudfilm.synth import (
    CT_IMAGE_STORAGE,
    DX_FOR_PRESENTATION_STORAGE,
    MR_IMAGE_STORAGE,
    US_IMAGE_STORAGE,
    US_MULTIFRAME_STORAGE,
    synthesize_study,
)

REQUIRED = (
    # Patient
    "SpecificCharacterSet",
    "PatientName",
    "PatientID",
    "IssuerOfPatientID",
    "PatientBirthDate",
    "PatientSex",
    "PatientAge",
    # General Study
    "StudyInstanceUID",
    "StudyDate",
    "StudyTime",
    "AccessionNumber",
    "ReferringPhysicianName",
    "StudyID",
    "StudyDescription",
    # General Series
    "SeriesInstanceUID",
    "Modality",
    "SeriesNumber",
    "SeriesDescription",
    "BodyPartExamined",
    # Frame of Reference, General Equipment
    "FrameOfReferenceUID",
    "Manufacturer",
    "InstitutionName",
    # Image Pixel
    "SamplesPerPixel",
    "PhotometricInterpretation",
    "Rows",
    "Columns",
    "BitsAllocated",
    "BitsStored",
    "HighBit",
    "PixelRepresentation",
    "PixelData",
    # SOP Common, General Image
    "SOPClassUID",
    "SOPInstanceUID",
    "InstanceNumber",
    "ContentDate",
    "ContentTime",
    "ImageType",
)

SMALL: dict[str, dict[str, Any]] = {
    "CT": {},
    "MR": {},
    "DX": {"rows": 300, "columns": 240},
    "US": {"frames": 2},
}


@pytest.mark.parametrize("modality", ["CT", "MR", "DX", "US"])
def test_every_modality_writes_part10_files_with_the_required_modules(
    tmp_path: Path, modality: str
) -> None:
    paths = synthesize_study(tmp_path, modality=modality, images=2, seed=3, **SMALL[modality])
    assert [p.name for p in paths] == [f"IM{n:05d}.dcm" for n in range(1, len(paths) + 1)]
    datasets = []
    for path in paths:
        assert path.read_bytes()[128:132] == b"DICM"
        ds = pydicom.dcmread(path)
        missing = [keyword for keyword in REQUIRED if keyword not in ds]
        assert not missing, (modality, missing)
        assert ds.file_meta.TransferSyntaxUID == ExplicitVRLittleEndian
        assert ds.file_meta.MediaStorageSOPInstanceUID == ds.SOPInstanceUID
        assert ds.file_meta.MediaStorageSOPClassUID == ds.SOPClassUID
        assert ds.Modality == modality and ds.Manufacturer == "CloudFilm Synth"
        assert ds.SpecificCharacterSet == "ISO_IR 192"
        assert ds.pixel_array.size > 0
        datasets.append(ds)
    assert len({ds.StudyInstanceUID for ds in datasets}) == 1
    assert len({ds.PatientID for ds in datasets}) == 1
    assert len({ds.SOPInstanceUID for ds in datasets}) == len(datasets)
    assert [int(ds.InstanceNumber) for ds in datasets if ds.SeriesNumber == 1] == list(
        range(1, 1 + sum(ds.SeriesNumber == 1 for ds in datasets))
    )


@pytest.mark.parametrize(
    ("modality", "sop_class", "shape", "kwargs"),
    [
        ("CT", CT_IMAGE_STORAGE, (512, 512), {}),
        ("MR", MR_IMAGE_STORAGE, (256, 256), {}),
        ("DX", DX_FOR_PRESENTATION_STORAGE, (2500, 2048), {}),
        ("US", US_IMAGE_STORAGE, (480, 640, 3), {"frames": 1}),
        ("MR", MR_IMAGE_STORAGE, (128, 160), {"rows": 128, "columns": 160}),
        ("CT", CT_IMAGE_STORAGE, (256, 256), {"rows": 256, "columns": 256}),
    ],
)
def test_each_modality_has_its_storage_class_and_image_size(
    tmp_path: Path, modality: str, sop_class: str, shape: tuple[int, ...], kwargs: dict[str, Any]
) -> None:
    paths = synthesize_study(tmp_path, modality=modality, images=1, seed=4, **kwargs)
    ds = pydicom.dcmread(paths[-1])
    assert ds.SOPClassUID == sop_class
    assert ds.pixel_array.shape == shape
    assert "NumberOfFrames" not in ds


@pytest.mark.parametrize("modality", ["CT", "MR", "DX"])
def test_decimal_strings_fit_in_16_characters_at_any_size(tmp_path: Path, modality: str) -> None:
    paths = synthesize_study(tmp_path, modality=modality, images=2, seed=4, rows=300, columns=300)
    for path in paths:
        ds = pydicom.dcmread(path, stop_before_pixels=True)
        decimals = [elem for elem in ds.iterall() if elem.VR == "DS" and elem.VM > 0]
        assert {e.keyword for e in decimals} & {"PixelSpacing", "ImagerPixelSpacing"}, path
        for elem in decimals:
            values = elem.value if elem.VM > 1 else [elem.value]
            assert all(len(str(v)) <= 16 for v in values), (elem.keyword, elem.value)


def test_ct_pixels_are_stored_with_a_hounsfield_rescale_and_windows(tmp_path: Path) -> None:
    paths = synthesize_study(tmp_path, modality="CT", images=1, seed=4, rows=256, columns=256)
    ds = pydicom.dcmread(paths[1])
    assert (ds.RescaleIntercept, ds.RescaleSlope, ds.BitsStored) == (-1024, 1, 12)
    assert (ds.WindowCenter[0], ds.WindowWidth[0]) == (40, 400)
    assert float(ds.PixelSpacing[0]) == pytest.approx(400 / 256)
    assert ds.KVP == 120 and float(ds.SliceThickness) > 0


def test_ct_study_is_a_localizer_series_and_an_axial_series_along_z(tmp_path: Path) -> None:
    paths = synthesize_study(tmp_path, modality="CT", images=4, seed=1)
    assert len(paths) == 5
    datasets = [pydicom.dcmread(p, stop_before_pixels=True) for p in paths]
    localizer, axial = datasets[0], datasets[1:]
    assert "LOCALIZER" in localizer.ImageType
    assert len({ds.SeriesInstanceUID for ds in axial}) == 1
    assert localizer.SeriesInstanceUID != axial[0].SeriesInstanceUID
    assert len({ds.FrameOfReferenceUID for ds in datasets}) == 1
    z = [float(ds.ImagePositionPatient[2]) for ds in axial]
    assert all(a > b for a, b in pairwise(z))
    assert [float(ds.SliceLocation) for ds in axial] == z
    assert z[0] - z[1] == pytest.approx(float(axial[0].SliceThickness))


def test_ct_slice_holds_air_lung_fat_soft_tissue_and_bone(tmp_path: Path) -> None:
    paths = synthesize_study(tmp_path, modality="CT", images=3, seed=1)
    hu = pydicom.dcmread(paths[2]).pixel_array.astype(np.float64) - 1024
    fractions = {
        "air": np.mean(hu < -950),
        "lung": np.mean((hu > -900) & (hu < -780)),
        "fat": np.mean((hu > -150) & (hu < -50)),
        "soft tissue": np.mean((hu > 0) & (hu < 90)),
        "bone": np.mean(hu > 400),
    }
    assert all(f > 0.003 for f in fractions.values()), fractions
    assert 10 < hu[(hu > 20) & (hu < 70)].std() < 30  # noisy like real CT


def test_ct_anatomy_changes_smoothly_from_slice_to_slice(tmp_path: Path) -> None:
    paths = synthesize_study(tmp_path, modality="CT", images=20, seed=1, rows=128, columns=128)
    means = [
        pydicom.dcmread(p).pixel_array.astype(np.float64).reshape(16, 8, 16, 8).mean(axis=(1, 3))
        for p in paths[1:]
    ]
    steps = [np.abs(a - b).mean() for a, b in pairwise(means)]
    assert max(steps) < 0.5 * np.abs(means[0] - means[-1]).mean()


def test_same_arguments_give_identical_bytes(tmp_path: Path) -> None:
    for modality in ("CT", "US"):
        kw: dict[str, Any] = {"modality": modality, "images": 2, "seed": 5, "rows": 64}
        a = synthesize_study(tmp_path / f"a{modality}", **kw)
        b = synthesize_study(tmp_path / f"b{modality}", **kw)
        assert [p.read_bytes() for p in a] == [p.read_bytes() for p in b]


def test_another_seed_gives_another_patient_and_other_uids(tmp_path: Path) -> None:
    a = pydicom.dcmread(synthesize_study(tmp_path / "a", modality="MR", images=1, seed=5)[0])
    b = pydicom.dcmread(synthesize_study(tmp_path / "b", modality="MR", images=1, seed=6)[0])
    for keyword in ("StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID", "PatientID"):
        assert a[keyword].value != b[keyword].value, keyword
    assert not np.array_equal(a.pixel_array, b.pixel_array)


def test_patient_id_is_used_and_gives_its_own_study(tmp_path: Path) -> None:
    a = pydicom.dcmread(synthesize_study(tmp_path / "a", modality="MR", images=1, seed=5)[0])
    b = pydicom.dcmread(
        synthesize_study(tmp_path / "b", modality="MR", images=1, seed=5, patient_id="H-42")[0]
    )
    assert a.PatientID == "P00000005" and b.PatientID == "H-42"
    assert a.StudyInstanceUID != b.StudyInstanceUID


def test_ct_compresses_losslessly_like_real_ct(tmp_path: Path) -> None:
    paths = synthesize_study(tmp_path, modality="CT", images=5, seed=2)
    ratios = []
    for path in paths[1:]:
        arr = pydicom.dcmread(path).pixel_array
        ratios.append(arr.nbytes / len(imagecodecs.jpegls_encode(arr)))
    assert 2.3 <= float(np.median(ratios)) <= 3.3


def test_us_cine_is_a_multiframe_rgb_image(tmp_path: Path) -> None:
    (path,) = synthesize_study(tmp_path, modality="US", images=1, frames=5, seed=1)
    ds = pydicom.dcmread(path)
    assert ds.SOPClassUID == US_MULTIFRAME_STORAGE
    assert int(ds.NumberOfFrames) == 5 and float(ds.FrameTime) > 0
    assert ds.FrameIncrementPointer == 0x00181063
    frames = ds.pixel_array
    assert frames.shape == (5, 480, 640, 3)
    assert not np.array_equal(frames[0], frames[2])  # the liver moves with breathing


def test_patient_name_carries_an_ideographic_group_in_utf8(tmp_path: Path) -> None:
    (path,) = synthesize_study(tmp_path, modality="MR", images=1, seed=0)
    ds = pydicom.dcmread(path)
    assert ds.PatientName.alphabetic == "Zhang^San"
    assert ds.PatientName.ideographic == "张^三"
    assert "张^三".encode() in path.read_bytes()


@pytest.mark.parametrize(
    ("kwargs", "word"),
    [
        ({"modality": "PET", "images": 1}, "modality"),
        ({"modality": "CT", "images": 0}, "images"),
        ({"modality": "US", "images": 1, "frames": 0}, "frames"),
        ({"modality": "CT", "images": 1, "frames": 3}, "frames"),
        ({"modality": "MR", "images": 1, "rows": 8}, "rows"),
        ({"modality": "MR", "images": 1, "columns": 9000}, "columns"),
        ({"modality": "MR", "images": 1, "patient_id": "a\\b"}, "patient_id"),
        ({"modality": "MR", "images": 1, "patient_id": ""}, "patient_id"),
    ],
)
def test_bad_arguments_raise_value_error_naming_the_argument(
    tmp_path: Path, kwargs: dict[str, Any], word: str
) -> None:
    with pytest.raises(ValueError, match=word):
        synthesize_study(tmp_path, seed=1, **kwargs)
    assert not list(tmp_path.iterdir())


def test_a_negative_seed_raises_value_error_naming_the_seed(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="seed"):
        synthesize_study(tmp_path, modality="MR", images=1, seed=-1)


def test_the_calibration_disc_is_50_mm_across_at_100_hu_in_every_axial_slice(
    tmp_path: Path,
) -> None:
    from cloudfilm.synth import (
        CALIBRATION_CENTER_MM,
        CALIBRATION_DIAMETER_MM,
        CALIBRATION_HU,
    )

    paths = synthesize_study(tmp_path, modality="CT", images=2, seed=7, calibration=True)
    plain = synthesize_study(tmp_path / "plain", modality="CT", images=2, seed=7)
    assert pydicom.dcmread(paths[1]).SOPInstanceUID != pydicom.dcmread(plain[1]).SOPInstanceUID
    for path in paths[1:]:
        ds = pydicom.dcmread(path)
        hu = ds.pixel_array.astype(np.int32) * int(ds.RescaleSlope) + int(ds.RescaleIntercept)
        sp = float(ds.PixelSpacing[1])
        row = round((CALIBRATION_CENTER_MM[1]) / sp + (ds.Rows - 1) / 2)
        inside = np.flatnonzero(hu[row] == CALIBRATION_HU)
        # the widest run of +100 HU pixels through the centre is the diameter, to a pixel
        assert (inside[-1] - inside[0] + 1) * sp == pytest.approx(CALIBRATION_DIAMETER_MM, abs=sp)
        assert np.all(hu[row, inside[0] : inside[-1] + 1] == CALIBRATION_HU)


def test_calibration_is_refused_for_modalities_other_than_ct(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="calibration"):
        synthesize_study(tmp_path, modality="MR", images=1, seed=1, calibration=True)

from __future__ import annotations

from pathlib import Path

import imagecodecs
import numpy as np
import pydicom
import pytest

from cloudfilm.synth import synthesize_study

REQUIRED = (
    "PatientName",
    "PatientID",
    "PatientBirthDate",
    "PatientSex",
    "StudyInstanceUID",
    "StudyDate",
    "StudyTime",
    "AccessionNumber",
    "ReferringPhysicianName",
    "StudyID",
    "SeriesInstanceUID",
    "Modality",
    "SeriesNumber",
    "SOPClassUID",
    "SOPInstanceUID",
    "InstanceNumber",
    "Rows",
    "Columns",
    "BitsAllocated",
    "PhotometricInterpretation",
    "FrameOfReferenceUID",
    "Manufacturer",
)


@pytest.mark.parametrize("modality", ["CT", "MR", "DX", "US"])
def test_every_modality_writes_complete_readable_instances(tmp_path: Path, modality: str) -> None:
    kw = {"rows": 600, "columns": 500} if modality == "DX" else {}
    paths = synthesize_study(tmp_path, modality=modality, images=2, seed=3, frames=2, **kw)
    datasets = [pydicom.dcmread(p) for p in paths]
    for ds in datasets:
        for keyword in REQUIRED:
            assert keyword in ds, (modality, keyword)
        assert ds.file_meta.MediaStorageSOPInstanceUID == ds.SOPInstanceUID
        assert ds.pixel_array.size > 0
    assert len({ds.StudyInstanceUID for ds in datasets}) == 1
    assert len({ds.SOPInstanceUID for ds in datasets}) == len(datasets)


def test_ct_has_a_localizer_and_an_axial_series(tmp_path: Path) -> None:
    paths = synthesize_study(tmp_path, modality="CT", images=4, seed=1)
    assert len(paths) == 5
    series = {pydicom.dcmread(p, stop_before_pixels=True).SeriesInstanceUID for p in paths}
    assert len(series) == 2


def test_same_seed_gives_identical_bytes_and_another_seed_other_uids(tmp_path: Path) -> None:
    a = synthesize_study(tmp_path / "a", modality="MR", images=2, seed=5)
    b = synthesize_study(tmp_path / "b", modality="MR", images=2, seed=5)
    c = synthesize_study(tmp_path / "c", modality="MR", images=2, seed=6)
    assert [p.read_bytes() for p in a] == [p.read_bytes() for p in b]
    uid = pydicom.dcmread(a[0]).StudyInstanceUID
    assert uid != pydicom.dcmread(c[0]).StudyInstanceUID


def test_ct_compresses_losslessly_like_real_ct(tmp_path: Path) -> None:
    paths = synthesize_study(tmp_path, modality="CT", images=5, seed=2)
    ratios = []
    for p in paths[1:]:
        arr = pydicom.dcmread(p).pixel_array
        ratios.append(arr.nbytes / len(imagecodecs.jpegls_encode(arr)))
    assert 2.3 <= float(np.median(ratios)) <= 3.3


def test_us_cine_is_multiframe_rgb(tmp_path: Path) -> None:
    (path,) = synthesize_study(tmp_path, modality="US", images=1, frames=5, seed=1)
    ds = pydicom.dcmread(path)
    assert int(ds.NumberOfFrames) == 5
    assert ds.pixel_array.shape == (5, 480, 640, 3)


def test_patient_name_carries_an_ideographic_group(tmp_path: Path) -> None:
    (path,) = synthesize_study(tmp_path, modality="MR", images=1, seed=0)
    ds = pydicom.dcmread(path)
    assert ds.SpecificCharacterSet == "ISO_IR 192"
    assert ds.PatientName.ideographic == "张^三"


@pytest.mark.parametrize(
    ("kwargs", "word"),
    [
        ({"modality": "PET", "images": 1}, "modality"),
        ({"modality": "CT", "images": 0}, "images"),
        ({"modality": "US", "images": 1, "frames": 0}, "frames"),
    ],
)
def test_bad_arguments_name_the_argument(
    tmp_path: Path, kwargs: dict[str, object], word: str
) -> None:
    with pytest.raises(ValueError, match=word):
        synthesize_study(tmp_path, seed=1, **kwargs)  # type: ignore[arg-type]

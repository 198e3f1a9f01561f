"""The DICOM files bundled in the pydicom wheel and in the pydicom-data package (a dev
dependency; get_testdata_files would try to download what is not installed)."""

from __future__ import annotations

from pathlib import Path

import data_store  # type: ignore[import-untyped]
import pydicom.data

CORPUS = sorted(
    str(p)
    for folder in (
        Path(pydicom.data.__file__).parent / "test_files",
        Path(data_store.__file__).parent / "data",
    )
    for p in folder.rglob("*.dcm")
)

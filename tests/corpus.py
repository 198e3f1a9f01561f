"""The DICOM files bundled in the pydicom wheel and in the pydicom-data package (a dev
dependency; get_testdata_files would try to download what is not installed)."""

from __future__ import annotations

from pathlib import Path

import data_store  # type: ignore[import-untyped]
import pydicom.data

FOLDERS = (
    Path(pydicom.data.__file__).parent / "test_files",
    Path(data_store.__file__).parent / "data",
)
CORPUS = sorted(str(p) for folder in FOLDERS for p in folder.rglob("*.dcm"))
MIN_FILES_PER_FOLDER = 60
"""Each folder held 68-79 files when the tests that use CORPUS were written; fewer means the
corpus is not installed as those tests expect, and their proportions would prove little."""


def check_corpus() -> None:
    """Fail (not skip) when either folder of the corpus is missing or nearly empty."""
    for folder in FOLDERS:
        found = sum(1 for _ in folder.rglob("*.dcm"))
        assert found >= MIN_FILES_PER_FOLDER, f"{folder} holds {found} DICOM files"


def with_sop_uid(part10: bytes, sop_uid: str) -> bytes:
    """The same instance under another SOP Instance UID (a new instance for the index)."""
    import io

    ds = pydicom.dcmread(io.BytesIO(part10))
    ds.SOPInstanceUID = sop_uid
    out = io.BytesIO()
    ds.save_as(out, enforce_file_format=True)
    return out.getvalue()

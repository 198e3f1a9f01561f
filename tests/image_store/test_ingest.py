from __future__ import annotations

from pathlib import Path

import pydicom
import pytest
from pydicom.data import get_testdata_file

from image_store.errors import InvalidUID
from image_store.index.sqlite import SqliteIndex
from image_store.ingest import LocalIngest
from image_store.keys import check_uid, instance_key
from image_store.metadata import read_header
from image_store.objects.filesystem import FilesystemObjectStore
from image_store.records import StudyQuery


def _testfile(name: str) -> bytes:
    path = get_testdata_file(name)
    assert path is not None
    return Path(path).read_bytes()


@pytest.fixture
def ingest(tmp_path: Path) -> LocalIngest:
    return LocalIngest(FilesystemObjectStore(tmp_path / "o"), SqliteIndex(tmp_path / "i.sqlite"))


def test_ingest_stores_bytes_exactly_and_indexes_the_header(ingest: LocalIngest) -> None:
    data = _testfile("CT_small.dcm")
    (out,) = ingest.ingest("H1", [data])
    assert out.ok and not out.reason
    ds = pydicom.dcmread(get_testdata_file("CT_small.dcm"))
    key = instance_key("H1", ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.SOPInstanceUID)
    assert ingest.store.get(key) == data
    (study,) = ingest.index.find_studies(StudyQuery(patient_id=ds.PatientID), limit=5)
    assert study.study_uid == ds.StudyInstanceUID and study.modalities == ("CT",)


def test_ingest_twice_stores_once(ingest: LocalIngest) -> None:
    data = _testfile("MR_small.dcm")
    ingest.ingest("H1", [data])
    (again,) = ingest.ingest("H1", [data])
    assert again.ok and not again.replaced
    assert ingest.index.count_instances() == 1


def test_garbage_is_refused_with_a_reason_and_the_rest_of_the_batch_is_kept(
    ingest: LocalIngest,
) -> None:
    outs = ingest.ingest("H1", [b"not dicom at all" * 10, _testfile("CT_small.dcm")])
    assert not outs[0].ok and outs[0].reason
    assert outs[1].ok
    assert ingest.index.count_instances() == 1


def test_a_conflicting_instance_leaves_no_orphan_object(ingest: LocalIngest) -> None:
    data = _testfile("CT_small.dcm")
    ingest.ingest("H1", [data])
    (out,) = ingest.ingest("H2", [data])
    assert not out.ok and "another hospital" in out.reason
    assert list(ingest.store.iter_keys("H2/")) == []


def test_header_keeps_the_ideographic_name_and_metadata_has_no_pixel_data() -> None:
    h = read_header(_testfile("CT_small.dcm"))
    assert h.transfer_syntax_uid == "1.2.840.10008.1.2.1"
    assert "7FE00010" not in h.metadata_json
    assert h.rows == 128


@pytest.mark.parametrize("bad", ["", "1.2.a", "1" * 65, "../1.2", "1.2/3", "...", "1.2 3"])
def test_invalid_uids_are_refused(bad: str) -> None:
    with pytest.raises(InvalidUID):
        check_uid(bad)
    with pytest.raises(ValueError):
        instance_key("H1", bad, "1.2", "1.2.3")

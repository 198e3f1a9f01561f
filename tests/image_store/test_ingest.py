from __future__ import annotations

import hashlib
import io
import json
from pathlib import Path

import pydicom
import pytest
from pydicom.data import get_testdata_file

from image_store.errors import InvalidUID
from image_store.index.sqlite import SqliteIndex
from image_store.ingest import DuplicatePolicy, LocalIngest
from image_store.keys import check_uid, instance_key
from image_store.metadata import read_header
from image_store.objects.filesystem import FilesystemObjectStore
from image_store.records import InstanceQuery, StudyQuery
from tests.corpus import with_sop_uid


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


def test_ingest_twice_stores_once_and_reports_the_second_as_a_duplicate(
    ingest: LocalIngest,
) -> None:
    data = _testfile("MR_small.dcm")
    (first,) = ingest.ingest("H1", [data])
    (again,) = ingest.ingest("H1", [data])
    assert first.ok and not first.duplicate
    assert again.ok and again.duplicate and not again.replaced
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
    pixels = json.loads(h.metadata_json)["7FE00010"]  # a reference, never the pixels
    assert set(pixels) == {"vr", "BulkDataURI"} and pixels["BulkDataURI"].endswith("/7FE00010")
    assert h.rows == 128


@pytest.mark.parametrize("bad", ["", "1.2.a", "1" * 65, "../1.2", "1.2/3", "...", "1.2 3"])
def test_invalid_uids_are_refused(bad: str) -> None:
    with pytest.raises(InvalidUID):
        check_uid(bad)
    with pytest.raises(ValueError):
        instance_key("H1", bad, "1.2", "1.2.3")


def _with_other_bytes(data: bytes) -> bytes:
    ds = pydicom.dcmread(io.BytesIO(data))
    ds.StudyDescription = "CHANGED"
    out = io.BytesIO()
    ds.save_as(out)
    return out.getvalue()


def test_same_uid_with_other_bytes_keeps_the_newer_and_the_older_as_prior_version(
    ingest: LocalIngest,
) -> None:
    old = _testfile("CT_small.dcm")
    new = _with_other_bytes(old)
    ingest.ingest("H1", [old])
    (out,) = ingest.ingest("H1", [new])
    assert out.ok and out.replaced and not out.duplicate
    (inst,) = ingest.index.find_instances(InstanceQuery(), limit=5)
    assert ingest.store.get(inst.object_key) == new
    (prior,) = ingest.index.prior_versions(inst.sop_uid)
    assert ingest.store.get(prior.key) == old
    assert prior.sha256 == hashlib.sha256(old).hexdigest()


def test_reject_policy_keeps_the_stored_instance(tmp_path: Path) -> None:
    ingest = LocalIngest(
        FilesystemObjectStore(tmp_path / "o"),
        SqliteIndex(tmp_path / "i.sqlite"),
        duplicates=DuplicatePolicy.REJECT,
    )
    old = _testfile("CT_small.dcm")
    ingest.ingest("H1", [old])
    (out,) = ingest.ingest("H1", [_with_other_bytes(old)])
    assert not out.ok and "different content" in out.reason
    (inst,) = ingest.index.find_instances(InstanceQuery(), limit=5)
    assert ingest.store.get(inst.object_key) == old


def test_the_same_instance_twice_in_one_batch_is_stored_once_with_its_history(
    ingest: LocalIngest,
) -> None:
    old = _testfile("CT_small.dcm")
    new = _with_other_bytes(old)
    outs = ingest.ingest("H1", [old, _testfile("MR_small.dcm"), new, new])
    assert [o.ok for o in outs] == [True, True, True, True]
    assert [o.duplicate for o in outs] == [False, False, False, True]
    assert ingest.index.count_instances() == 2
    (inst,) = ingest.index.find_instances(InstanceQuery(sop_uids=(outs[0].sop_uid,)), limit=5)
    assert ingest.store.get(inst.object_key) == new
    assert len(ingest.index.prior_versions(inst.sop_uid)) == 1


def test_a_replayed_batch_does_not_rewrite_objects(ingest: LocalIngest) -> None:
    data = _testfile("CT_small.dcm")
    ingest.ingest("H1", [data])
    (inst,) = ingest.index.find_instances(InstanceQuery(), limit=5)
    path = ingest.store.root / inst.object_key  # type: ignore[attr-defined]
    before = path.stat().st_mtime_ns
    ingest.ingest("H1", [data])
    assert path.stat().st_mtime_ns == before


class _FailingStore(FilesystemObjectStore):
    """Fails the ``fail_at``-th put (a disk that fills up in the middle of a batch)."""

    def __init__(self, root: Path, fail_at: int) -> None:
        super().__init__(root)
        self.fail_at = fail_at
        self.puts = 0

    def put(self, key: str, data: object, *, sha256: str | None = None) -> object:  # type: ignore[override]
        self.puts += 1
        if self.puts == self.fail_at:
            raise OSError(28, "No space left on device")
        return super().put(key, data, sha256=sha256)  # type: ignore[arg-type]


def test_a_put_failing_mid_batch_leaves_no_object_and_no_record(tmp_path: Path) -> None:
    slices = [
        with_sop_uid(_testfile("CT_small.dcm"), f"1.2.826.0.1.3680043.8.498.77{n}")
        for n in range(8)
    ]
    store = _FailingStore(tmp_path / "o", fail_at=5)
    index = SqliteIndex(tmp_path / "i.sqlite")
    with pytest.raises(OSError):
        LocalIngest(store, index).ingest("H1", slices)  # written several at a time
    assert store.puts == len(slices)  # every other put ran to its end first
    assert index.count_instances() == 0
    assert [p for p in (tmp_path / "o" / "H1").rglob("*") if p.is_file()] == []
    index.close()

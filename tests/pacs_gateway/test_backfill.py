from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from pydicom.data import get_testdata_file

from image_store.index.sqlite import SqliteIndex
from image_store.ingest import LocalIngest
from image_store.objects.filesystem import FilesystemObjectStore
from pacs_gateway.backfill import Checkpoint, backfill


class FakeOrthanc:
    """Orthanc's REST listing and file download, over a dict (paging like the real one)."""

    def __init__(self, files: dict[str, bytes]) -> None:
        self.files = files
        self.fetched: list[str] = []

    def get_instances(
        self, expand: bool = False, since: int = 0, limit: int | None = None
    ) -> list[str]:
        ids = sorted(self.files)
        return ids[since : since + limit] if limit else ids

    def get_instance_file(self, id_: str) -> Iterator[bytes]:
        self.fetched.append(id_)
        data = self.files[id_]
        yield data[:100]
        yield data[100:]


def _bytes(name: str) -> bytes:
    path = get_testdata_file(name)
    assert path is not None
    return Path(path).read_bytes()


@pytest.fixture
def sink(tmp_path: Path) -> Iterator[LocalIngest]:
    index = SqliteIndex(tmp_path / "i.sqlite")
    yield LocalIngest(FilesystemObjectStore(tmp_path / "o"), index)
    index.close()


def test_backfill_copies_everything_and_a_rerun_fetches_nothing(
    sink: LocalIngest, tmp_path: Path
) -> None:
    orthanc = FakeOrthanc({"a": _bytes("CT_small.dcm"), "b": _bytes("MR_small.dcm")})
    seen: list[tuple[int, int]] = []
    report = backfill(
        orthanc,
        sink,
        "H1",
        Checkpoint(tmp_path / "cp"),
        batch_size=1,
        progress=lambda d, t: seen.append((d, t)),
    )
    assert (report.total, report.copied, report.already_done) == (2, 2, 0)
    assert seen[-1] == (2, 2)
    assert sink.index.count_instances() == 2
    orthanc.fetched.clear()
    again = backfill(orthanc, sink, "H1", Checkpoint(tmp_path / "cp"))
    assert (again.copied, again.already_done, orthanc.fetched) == (0, 2, [])


def test_refused_instances_are_reported_and_retried_next_time(
    sink: LocalIngest, tmp_path: Path
) -> None:
    orthanc = FakeOrthanc({"a": _bytes("CT_small.dcm"), "bad": b"not dicom" * 50})
    report = backfill(orthanc, sink, "H1", Checkpoint(tmp_path / "cp"))
    assert report.copied == 1 and [r[0] for r in report.refused] == ["bad"]
    assert Checkpoint(tmp_path / "cp").done == {"a"}

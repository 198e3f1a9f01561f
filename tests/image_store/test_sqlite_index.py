from __future__ import annotations

import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from image_store.index.sqlite import SqliteIndex
from image_store.records import StudyQuery
from tests.contracts.index import IndexContract, make_record


class TestSqliteIndex(IndexContract):
    @pytest.fixture
    def index(self, tmp_path: Path) -> Iterator[SqliteIndex]:
        idx = SqliteIndex(tmp_path / "index.sqlite")
        yield idx
        idx.close()


def test_index_survives_reopen(tmp_path: Path) -> None:
    idx = SqliteIndex(tmp_path / "i.sqlite")
    idx.add_instances([make_record()])
    idx.close()
    again = SqliteIndex(tmp_path / "i.sqlite")
    assert again.count_instances() == 1
    again.close()


def test_concurrent_writers_and_readers_see_consistent_counts(tmp_path: Path) -> None:
    idx = SqliteIndex(tmp_path / "i.sqlite")
    errors: list[BaseException] = []

    def write(n: int) -> None:
        try:
            for i in range(20):
                idx.add_instances([make_record(sop=f"1.2.1.1.{n}.{i}", number=i)])
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=write, args=(n,)) for n in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    (study,) = idx.find_studies(StudyQuery(), limit=5)
    assert study.number_of_instances == 80 == idx.count_instances()
    idx.close()

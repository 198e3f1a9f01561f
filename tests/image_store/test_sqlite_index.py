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


def test_series_metadata_is_one_statement_however_many_instances(tmp_path: Path) -> None:
    """WADO-RS series metadata reads every instance's DICOM JSON in one SELECT (the bundle is
    the series' rows, in instance order), never one read per instance."""
    from image_store.records import InstanceQuery

    idx = SqliteIndex(tmp_path / "i.sqlite")
    idx.add_instances([make_record(sop=f"1.2.1.1.{i}", number=i) for i in range(1, 301)])
    statements: list[str] = []
    idx._conn().set_trace_callback(statements.append)
    docs = idx.instance_metadata(InstanceQuery(study_uid="1.2.1", series_uid="1.2.1.1"))
    idx._conn().set_trace_callback(None)
    assert len(docs) == 300
    assert len(statements) == 1 and statements[0].startswith("SELECT i.metadata FROM instances")
    idx.close()


def test_an_index_made_by_an_older_version_gets_the_name_indexes_on_open(tmp_path: Path) -> None:
    idx = SqliteIndex(tmp_path / "i.sqlite")
    idx.add_instances([make_record()])
    conn = idx._conn()
    for name in ("patients_lower_alpha", "patients_lower_ideo", "patients_lower_name"):
        conn.execute(f"DROP INDEX {name}")
    conn.execute("CREATE INDEX patients_name ON patients (name_alpha COLLATE NOCASE)")
    idx.close()
    again = SqliteIndex(tmp_path / "i.sqlite")
    names = {
        r[0] for r in again._conn().execute("SELECT name FROM sqlite_master WHERE type='index'")
    }
    assert {"patients_lower_alpha", "patients_lower_ideo", "patients_lower_name"} <= names
    assert "patients_name" not in names
    plan = " ".join(
        str(r[-1])
        for r in again._conn().execute(
            "EXPLAIN QUERY PLAN SELECT pk FROM patients WHERE lower(name_alpha) >= 'zh' "
            "AND lower(name_alpha) < 'zi'"
        )
    )
    assert "patients_lower_alpha" in plan
    assert [
        s.study_uid for s in again.find_studies(StudyQuery(patient_name="ZHANG*"), limit=5)
    ] == ["1.2.1"]
    again.close()


def test_a_process_dying_mid_batch_leaves_no_half_indexed_study(tmp_path: Path) -> None:
    """The SQLite index's writer dies (os._exit, no cleanup) in the middle of a batch: the next
    open rolls the journal back and the study is absent, not half there."""
    import subprocess
    import sys
    import textwrap

    path = tmp_path / "i.sqlite"
    child = textwrap.dedent(
        f"""
        import os
        from image_store.index.sqlite import SqliteIndex
        from tests.contracts.index import make_record
        idx = SqliteIndex({str(path)!r})
        original, calls = idx._add_one, []
        def die_on_the_third(conn, rec, now, result):
            calls.append(rec)
            if len(calls) == 3:
                os._exit(9)
            return original(conn, rec, now, result)
        idx._add_one = die_on_the_third
        idx.add_instances([make_record(sop=f"1.2.1.1.{{i}}", number=i) for i in range(1, 6)])
        """
    )
    died = subprocess.run([sys.executable, "-c", child], cwd=Path(__file__).parents[2], check=False)
    assert died.returncode == 9
    idx = SqliteIndex(path)
    assert idx.count_instances() == 0 and idx.find_studies(StudyQuery(), limit=5) == []
    assert idx.add_instances([make_record()]).added == 1
    idx.close()

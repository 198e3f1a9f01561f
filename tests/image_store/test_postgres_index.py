"""The Index contract against a real PostgreSQL (Debian package, started in a temp dir)."""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest

from image_store.index.postgres import PostgresIndex
from image_store.records import StudyQuery
from tests.contracts.index import IndexContract, make_record
from tests.servers import Postgres, postgresql

_dbs = itertools.count()


@pytest.fixture(scope="module")
def pg() -> Iterator[Postgres]:
    with postgresql() as server:
        yield server


def _fresh_db(pg: Postgres) -> str:
    name = f"cloudfilm_{next(_dbs)}"
    with psycopg.connect(pg.dsn, autocommit=True) as conn:
        conn.execute(f"CREATE DATABASE {name}")
    return pg.dsn.replace("dbname=postgres", f"dbname={name}")


class TestPostgresIndex(IndexContract):
    @pytest.fixture
    def index(self, pg: Postgres) -> Iterator[PostgresIndex]:
        idx = PostgresIndex(_fresh_db(pg))
        yield idx
        idx.close()


def test_a_connection_lost_mid_batch_leaves_no_half_indexed_study(pg: Postgres) -> None:
    dsn = _fresh_db(pg)
    idx = PostgresIndex(dsn)
    recs = [make_record(sop=f"1.2.1.1.{i}", number=i) for i in range(1, 5)]
    original = idx._add_one
    calls = {"n": 0}

    def drop_connection_on_third_record(conn, rec, now, result):  # type: ignore[no-untyped-def]
        calls["n"] += 1
        if calls["n"] == 3:  # the server ends this session in the middle of the batch
            with psycopg.connect(dsn, autocommit=True) as admin:
                admin.execute(
                    "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                    "WHERE datname = current_database() AND pid <> pg_backend_pid()"
                )
        return original(conn, rec, now, result)

    idx._add_one = drop_connection_on_third_record  # type: ignore[method-assign]
    with pytest.raises(psycopg.OperationalError):
        idx.add_instances(recs)
    fresh = PostgresIndex(dsn)
    assert fresh.find_studies(StudyQuery(study_uids=("1.2.1",)), limit=5) == []
    assert fresh.count_instances() == 0
    assert fresh.add_instances(recs[:2]).added == 2  # the index works again after the loss
    fresh.close()
    idx.close()


def test_an_ingest_cut_by_a_lost_connection_indexes_nothing_and_replays_whole(
    pg: Postgres, tmp_path: Path
) -> None:
    """Objects may already be stored when the index transaction dies; the gateway replays the
    batch (its spool entries stay) and every instance ends up stored and indexed once."""
    from cloudfilm.synth import synthesize_study
    from image_store.ingest import LocalIngest
    from image_store.objects.filesystem import FilesystemObjectStore
    from image_store.records import InstanceQuery

    dsn = _fresh_db(pg)
    items = [
        p.read_bytes() for p in synthesize_study(tmp_path / "s", modality="CT", images=4, seed=8)
    ]
    idx = PostgresIndex(dsn)
    original = idx._add_one
    calls = {"n": 0}

    def lose_the_connection_on_the_second_record(conn, rec, now, result):  # type: ignore[no-untyped-def]
        calls["n"] += 1
        if calls["n"] == 2:
            with psycopg.connect(dsn, autocommit=True) as admin:
                admin.execute(
                    "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                    "WHERE datname = current_database() AND pid <> pg_backend_pid()"
                )
        return original(conn, rec, now, result)

    idx._add_one = lose_the_connection_on_the_second_record  # type: ignore[method-assign]
    store = FilesystemObjectStore(tmp_path / "objects")
    with pytest.raises(psycopg.OperationalError):
        LocalIngest(store, idx).ingest("H1", items)
    fresh = PostgresIndex(dsn)
    assert fresh.count_instances() == 0 and fresh.find_studies(StudyQuery(), limit=5) == []
    outcomes = LocalIngest(store, fresh).ingest("H1", items)  # the replay
    assert all(o.ok for o in outcomes)
    (study,) = fresh.find_studies(StudyQuery(), limit=5)
    assert study.number_of_instances == len(items) == fresh.count_instances()
    for inst in fresh.find_instances(InstanceQuery(), limit=10):
        assert store.stat(inst.object_key) is not None
    fresh.close()
    idx.close()

"""The Index contract against a real PostgreSQL (Debian package, started in a temp dir)."""

from __future__ import annotations

import itertools
from collections.abc import Iterator

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

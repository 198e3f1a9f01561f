"""The regional-state contract on SQLite (the index's file) and on a real PostgreSQL."""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest

from image_store.state.db import PostgresStateDb
from image_store.state.ports import RegionalState
from tests.contracts.state import AUDIT_KEY, Clock, StateContract, clock  # noqa: F401
from tests.servers import Postgres, postgresql
from viewer_api.state import open_sql_state

_dbs = itertools.count()


@pytest.fixture(scope="module")
def pg() -> Iterator[Postgres]:
    with postgresql() as server:
        yield server


class TestSqliteState(StateContract):
    @pytest.fixture
    def state(self, tmp_path: Path, clock: Clock) -> Iterator[RegionalState]:  # noqa: F811
        state = open_sql_state(tmp_path / "index.sqlite", audit_key=AUDIT_KEY, clock=clock)
        yield state
        state.close()


class TestPostgresState(StateContract):
    @pytest.fixture
    def state(self, pg: Postgres, clock: Clock) -> Iterator[RegionalState]:  # noqa: F811
        name = f"state_{next(_dbs)}"
        with psycopg.connect(pg.dsn, autocommit=True) as conn:
            conn.execute(f"CREATE DATABASE {name}")
        db = PostgresStateDb(pg.dsn.replace("dbname=postgres", f"dbname={name}"))
        state = open_sql_state(db, audit_key=AUDIT_KEY, clock=clock)
        yield state
        state.close()

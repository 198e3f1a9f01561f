"""What the regional state adds to a request: the audit append and the lookups every request
makes (token revocation, the user's registry entry, a share link), on SQLite and on a real
PostgreSQL (tests.servers), with one and with two processes appending to the one audit chain.

    .venv/bin/python bench/state_ops.py [--n 2000]

Prints p50/p99 in milliseconds per operation, and appends/s for one and two writer processes;
then checks the chain the writers left verifies.
"""

from __future__ import annotations

import argparse
import multiprocessing
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import psycopg

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from image_store.audit import AuditEvent
from image_store.state.db import PostgresStateDb, StateDb, as_db
from tests.servers import postgresql
from viewer_api.state import open_sql_state

KEY = b"k" * 32


def _db(target: str) -> StateDb:
    """A SQLite file (``*.sqlite``) or a PostgreSQL DSN."""
    return as_db(Path(target)) if target.endswith(".sqlite") else PostgresStateDb(target)


def _event(i: int) -> AuditEvent:
    return AuditEvent(
        time.time(), "clinician:H1:dr", "H1", "clinician", "GET",
        f"/dicom-web/studies/1.2.{i % 50}/metadata", 200, "127.0.0.1",
    )  # fmt: skip


def _timed(fn: Callable[[int], object], n: int) -> list[float]:
    out = []
    for i in range(n):
        t = time.perf_counter()
        fn(i)
        out.append((time.perf_counter() - t) * 1000)
    return out


def _pct(ms: list[float]) -> str:
    ms = sorted(ms)
    return f"p50 {statistics.median(ms):.3f} ms  p99 {ms[int(len(ms) * 0.99) - 1]:.3f} ms"


def _append_worker(target: str, n: int) -> None:
    state = open_sql_state(_db(target), audit_key=KEY)
    for i in range(n):
        state.audit.append(_event(i))
    state.close()


def run(name: str, target: str, n: int) -> None:
    state = open_sql_state(_db(target), audit_key=KEY)
    state.registry.add_hospital("H1", "City")
    state.registry.add_user("dr", "H1", "clinician")
    link = state.shares.create("1.2.3", "H1", "x", time.time() + 3600)
    print(f"{name}:")
    print(f"  audit append       {_pct(_timed(lambda i: state.audit.append(_event(i)), n))}")
    print(
        f"  revocation check   {_pct(_timed(lambda i: '0123456789abcdef' in state.revocations, n))}"
    )
    print(f"  registry user      {_pct(_timed(lambda i: state.registry.user('dr'), n))}")
    print(f"  share link get     {_pct(_timed(lambda i: state.shares.get(link.id), n))}")
    for writers in (1, 2):
        procs = [
            multiprocessing.get_context("spawn").Process(target=_append_worker, args=(target, n))
            for _ in range(writers)
        ]
        t = time.perf_counter()
        for p in procs:
            p.start()
        for p in procs:
            p.join()
        rate = writers * n / (time.perf_counter() - t)
        print(f"  {writers} writer process(es): {rate:.0f} appends/s (incl. process start)")
    verdict = state.audit.check()
    print(f"  chain: {verdict.reason}, {verdict.records} records")
    state.close()


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=2000)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        run("SQLite", str(Path(tmp) / "index.sqlite"), args.n)
    with postgresql() as pg:
        with psycopg.connect(pg.dsn, autocommit=True) as conn:
            conn.execute("CREATE DATABASE bench")
        run("PostgreSQL", pg.dsn.replace("dbname=postgres", "dbname=bench"), args.n)


if __name__ == "__main__":
    main()

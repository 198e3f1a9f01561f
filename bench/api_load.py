"""A bounded mixed read load against one and then two `cloudfilm cloud` processes over one
PostgreSQL (tests.servers) and one data store (the filesystem under one data directory both
processes share), and what the audit append costs per request.

    .venv/bin/python bench/api_load.py [--clients 16] [--seconds 15] [--images 20]

A synthetic CT study goes in by STOW-RS; then ``--clients`` asyncio clients (aiohttp, one
session each, in this process) send requests in a fixed rotation for ``--seconds``, each client
to one API process (client i to process i mod P): QIDO-RS studies of the patient, the study's
WADO-RS metadata, a rendered frame (a different instance each time), the cloud-film page of a
share link, and the one-click call ``/patients/{id}/studies``. Printed per run: requests/s,
p50/p99 per kind and overall, errors; then the ratio of two processes to one, the audit rows
written per request, and the audit append timed in-process against the same PostgreSQL
(``SqlAuditLog.append`` with the region's sealing, p50/p99). The load generator runs on the
same machine as the servers and takes CPU from them: the ratio is what this machine shows.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp
import psycopg

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from cloudfilm.synth import synthesize_study
from image_store.audit import AuditEvent, SqlAuditLog
from image_store.state.db import PostgresStateDb
from tests.e2e.conftest import register_user
from tests.servers import postgresql

CLI = (sys.executable, "-m", "cloudfilm.cli")
KINDS = ("qido", "metadata", "rendered", "film", "one-click")


@dataclass
class Run:
    processes: int
    seconds: float = 0.0
    client_cpu_s: float = 0.0
    """CPU time the load generator itself used during the run."""
    server_cpu_s: float = 0.0
    """CPU time the API processes used during the run."""
    db_cpu_s: float = 0.0
    """CPU time PostgreSQL (the postmaster and its backends) used during the run."""
    machine_busy: float = 0.0
    """The share of the machine's CPU time (all cores, every process) that was busy."""
    ms: dict[str, list[float]] = field(default_factory=lambda: {k: [] for k in KINDS})
    errors: dict[str, int] = field(default_factory=lambda: dict.fromkeys(KINDS, 0))

    @property
    def requests(self) -> int:
        return sum(len(v) for v in self.ms.values())

    @property
    def rate(self) -> float:
        return self.requests / self.seconds if self.seconds else 0.0


@dataclass(frozen=True)
class Target:
    """What the clients ask for: the URLs of one study, relative to an API process."""

    qido: str
    metadata: str
    rendered: tuple[str, ...]
    film: str
    one_click: str


def _stat(pid: int) -> list[str]:
    """/proc/PID/stat after the command name (field 3 onwards)."""
    return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()


def _proc_cpu_s(pid: int) -> float:
    """User + system CPU seconds of process ``pid`` so far."""
    fields = _stat(pid)
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _tree_cpu_s(pid: int) -> float:
    """CPU seconds of ``pid``, its live children and its waited-for children (PostgreSQL's
    postmaster and backends)."""
    fields = _stat(pid)
    ticks = sum(int(f) for f in fields[11:15])
    for child in Path("/proc").iterdir():
        if child.name.isdigit():
            try:
                c = _stat(int(child.name))
            except OSError:
                continue
            if int(c[1]) == pid:
                ticks += int(c[11]) + int(c[12])
    return ticks / os.sysconf("SC_CLK_TCK")


def _machine_ticks() -> tuple[int, int]:
    """(busy, total) CPU ticks of the whole machine so far."""
    values = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    idle = values[3] + values[4]  # idle + iowait
    return sum(values) - idle, sum(values)


def _pct(ms: list[float], q: float) -> float:
    s = sorted(ms)
    return s[min(len(s) - 1, int(len(s) * q))] if s else float("nan")


@contextmanager
def cloud(data: Path, env: dict[str, str], log: Path) -> Iterator[tuple[str, int]]:
    """(base URL, pid) of a running `cloudfilm cloud` on ``data``, stopped (SIGTERM) after."""
    with open(log, "a") as log_fh:
        proc = subprocess.Popen(
            [*CLI, "cloud", "--data", str(data), "--http", "127.0.0.1:0"],
            stdout=subprocess.PIPE,
            stderr=log_fh,
            text=True,
            env={**os.environ, **env},
        )
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        if not line.startswith("ready: cloud http "):
            raise RuntimeError(f"cloudfilm cloud did not start:\n{log.read_text()[-2000:]}")
        yield line.split()[-1], proc.pid
    finally:
        proc.terminate()
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)


def _token(data: Path, env: dict[str, str], role: str, hospital: str = "HOSP1") -> str:
    subject = f"bench.{role}.{hospital}"
    register_user(data, subject, hospital, role, env)
    out = subprocess.run(
        [*CLI, "token", "--data", str(data), "--hospital", hospital, "--role", role,
         "--subject", subject],
        env={**os.environ, **env}, check=True, capture_output=True, text=True,
    )  # fmt: skip
    return out.stdout.strip()


async def _prepare(base: str, admin: str, study_dir: Path) -> Target:
    """STOW the study, make a share link; the URLs the load asks for."""
    import pydicom

    datasets = [pydicom.dcmread(p) for p in sorted(study_dir.rglob("*.dcm"))]
    boundary = "benchboundary"
    body = b""
    for p in sorted(study_dir.rglob("*.dcm")):
        body += f"--{boundary}\r\nContent-Type: application/dicom\r\n\r\n".encode()
        body += p.read_bytes() + b"\r\n"
    body += f"--{boundary}--\r\n".encode()
    auth = {"Authorization": f"Bearer {admin}"}
    ctype = f'multipart/related; type="application/dicom"; boundary={boundary}'
    async with aiohttp.ClientSession(headers=auth) as s:
        async with s.post(
            f"{base}/dicom-web/studies", data=body, headers={"Content-Type": ctype}
        ) as r:
            if r.status != 200:
                raise RuntimeError(f"STOW-RS: {r.status} {await r.text()}")
        ds = datasets[0]
        study = ds.StudyInstanceUID
        async with s.post(f"{base}/api/shares", json={"study_uid": study}) as r:
            if r.status != 201:
                raise RuntimeError(f"share link: {r.status} {await r.text()}")
            url = str((await r.json())["url"])
    rendered = tuple(
        f"/dicom-web/studies/{study}/series/{d.SeriesInstanceUID}/instances/{d.SOPInstanceUID}"
        "/frames/1/rendered?viewport=256,256"
        for d in datasets
    )
    return Target(
        qido=f"/dicom-web/studies?PatientID={ds.PatientID}",
        metadata=f"/dicom-web/studies/{study}/metadata",
        rendered=rendered,
        film=url.removeprefix(base),
        one_click=f"/patients/{ds.PatientID}/studies"
        + (f"?issuer={ds.IssuerOfPatientID}" if ds.get("IssuerOfPatientID") else ""),
    )


async def _client(
    n: int, base: str, token: str, target: Target, until: float, run: Run, limit: int
) -> None:
    auth = {"Authorization": f"Bearer {token}"}
    timeout = aiohttp.ClientTimeout(total=60)
    async with aiohttp.ClientSession(timeout=timeout) as s:
        i = n
        for _ in range(limit):
            if time.monotonic() >= until:
                return
            kind = KINDS[i % len(KINDS)]
            path = {
                "qido": target.qido,
                "metadata": target.metadata,
                "rendered": target.rendered[i % len(target.rendered)],
                "film": target.film,
                "one-click": target.one_click,
            }[kind]
            headers = {} if kind == "film" else auth
            t = time.perf_counter()
            async with s.get(base + path, headers=headers) as r:
                await r.read()
                ok = r.status == 200
            if ok:
                run.ms[kind].append((time.perf_counter() - t) * 1000)
            else:
                run.errors[kind] += 1
            i += 1


async def _load(
    servers: list[tuple[str, int]],
    token: str,
    target: Target,
    clients: int,
    seconds: float,
    db_pid: int,
) -> Run:
    bases = [base for base, _ in servers]
    run = Run(len(bases))
    cpu = time.process_time()
    server_cpu = sum(_proc_cpu_s(pid) for _, pid in servers)
    db_cpu = _tree_cpu_s(db_pid)
    busy, total = _machine_ticks()
    start = time.monotonic()
    until = start + seconds
    await asyncio.gather(
        *(
            _client(n, bases[n % len(bases)], token, target, until, run, limit=100_000)
            for n in range(clients)
        )
    )
    run.seconds = time.monotonic() - start
    run.client_cpu_s = time.process_time() - cpu
    run.server_cpu_s = sum(_proc_cpu_s(pid) for _, pid in servers) - server_cpu
    run.db_cpu_s = _tree_cpu_s(db_pid) - db_cpu
    busy_after, total_after = _machine_ticks()
    run.machine_busy = (busy_after - busy) / max(1, total_after - total)
    return run


def _audit_rows(dsn: str) -> int:
    with psycopg.connect(dsn, autocommit=True) as conn:
        row = conn.execute("SELECT count(*) FROM audit").fetchone()
    return int(row[0]) if row else 0


def _print_run(run: Run) -> None:
    share = run.client_cpu_s / run.seconds
    print(f"\n{run.processes} API process(es): {run.requests} requests in {run.seconds:.1f} s "
          f"= {run.rate:.0f} req/s")  # fmt: skip
    print(
        f"  CPU: API processes {run.server_cpu_s / run.seconds:.2f} cores, PostgreSQL "
        f"{run.db_cpu_s / run.seconds:.2f}, load generator {share:.2f}; machine "
        f"{run.machine_busy:.0%} busy ({os.cpu_count()} cores, every process on it)"
    )
    print(f"  CPU per request: API {run.server_cpu_s / run.requests * 1000:.2f} ms, "
          f"PostgreSQL {run.db_cpu_s / run.requests * 1000:.2f} ms")  # fmt: skip
    print(f"  {'kind':<10} {'n':>6} {'p50 ms':>8} {'p99 ms':>8} {'errors':>6}")
    for kind in KINDS:
        ms = run.ms[kind]
        print(f"  {kind:<10} {len(ms):>6} {_pct(ms, 0.5):>8.1f} {_pct(ms, 0.99):>8.1f} "
              f"{run.errors[kind]:>6}")  # fmt: skip
    every = [m for v in run.ms.values() for m in v]
    print(f"  {'all':<10} {len(every):>6} {_pct(every, 0.5):>8.1f} {_pct(every, 0.99):>8.1f}")


def _audit_append_ms(dsn: str, n: int) -> list[float]:
    """``n`` appends to a chain in a database of its own on the region's PostgreSQL (sealed as
    the API seals the region's), each timed."""
    log = SqlAuditLog(PostgresStateDb(dsn), head_key=b"k" * 32)
    out = []
    try:
        for i in range(n):
            event = AuditEvent(
                time.time(), "clinician:HOSP1:bench", "HOSP1", "clinician", "GET",
                f"/dicom-web/studies/1.2.{i % 50}/metadata", 200, "127.0.0.1",
            )  # fmt: skip
            t = time.perf_counter()
            log.append(event)
            out.append((time.perf_counter() - t) * 1000)
    finally:
        log.close()
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--clients", type=int, default=16)
    ap.add_argument("--seconds", type=float, default=15.0)
    ap.add_argument("--images", type=int, default=20)
    ap.add_argument("--appends", type=int, default=2000)
    args = ap.parse_args()

    work = Path(tempfile.mkdtemp(prefix="api-load-"))
    try:
        with postgresql() as pg:
            with psycopg.connect(pg.dsn, autocommit=True) as conn:
                conn.execute("CREATE DATABASE region")
            dsn = pg.dsn.replace("dbname=postgres", "dbname=region")
            db_pid = int((pg.data_dir / "postmaster.pid").read_text().split()[0])
            env = {"CLOUDFILM_INDEX": "postgres", "CLOUDFILM_POSTGRES_DSN": dsn}
            data = work / "region"
            subprocess.run([*CLI, "init", "--data", str(data)], env={**os.environ, **env},
                           check=True, capture_output=True)  # fmt: skip
            admin = _token(data, env, "admin")
            reader = _token(data, env, "clinician")
            study = work / "study"
            synthesize_study(study, modality="CT", images=args.images, seed=17)
            runs: list[Run] = []
            rows: list[float] = []
            with cloud(data, env, work / "a.log") as a:
                target = asyncio.run(_prepare(a[0], admin, study))
                asyncio.run(
                    _load([a], reader, target, args.clients, 2.0, db_pid)
                )  # warm caches, JIT
                for procs in (1, 2):
                    with cloud(data, env, work / "b.log") as b:
                        servers = [a, b][:procs]
                        asyncio.run(_load(servers, reader, target, args.clients, 2.0, db_pid))
                        before = _audit_rows(dsn)
                        run = asyncio.run(
                            _load(servers, reader, target, args.clients, args.seconds, db_pid)
                        )
                        after = _audit_rows(dsn)
                    runs.append(run)
                    rows.append((after - before) / max(1, run.requests))
            with psycopg.connect(pg.dsn, autocommit=True) as conn:  # apart from the region's
                conn.execute("CREATE DATABASE audit_bench")
            appends = _audit_append_ms(
                pg.dsn.replace("dbname=postgres", "dbname=audit_bench"), args.appends
            )
            verify = subprocess.run(
                [*CLI, "audit", "verify", "--data", str(data)],
                env={**os.environ, **env}, capture_output=True, text=True,
            )  # fmt: skip
    finally:
        shutil.rmtree(work, ignore_errors=True)

    print(f"mixed read load: {args.clients} clients, {args.seconds:.0f} s per run, "
          f"a {args.images}-image CT, kinds in rotation: {', '.join(KINDS)}")  # fmt: skip
    for run in runs:
        _print_run(run)
    print(f"\n2 processes vs 1: {runs[1].rate / runs[0].rate:.2f}x requests/s")
    print(f"audit rows per request: {rows[0]:.2f} (1 process), {rows[1]:.2f} (2 processes)")
    print(f"audit append on PostgreSQL, in-process, {len(appends)} appends: "
          f"p50 {statistics.median(appends):.3f} ms  p99 {_pct(appends, 0.99):.3f} ms")  # fmt: skip
    print(f"audit verify after the runs: {verify.stdout.strip() or verify.stderr.strip()}")


if __name__ == "__main__":
    main()

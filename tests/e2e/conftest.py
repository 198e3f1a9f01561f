"""Fixtures that run the real embedded stack (`cloudfilm serve`) as a subprocess on 127.0.0.1."""

from __future__ import annotations

import gc
import json
import os
import re
import signal
import ssl
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

import pytest

from tests.servers import Seaweed


@pytest.fixture(autouse=True)
def _collect_garbage_after_each_test() -> Iterator[None]:
    """Collects garbage as each test ends, so an unclosed socket or file in a reference cycle
    is reported against the test that left it, not whichever test the collector next runs in."""
    yield
    gc.collect()


READY = re.compile(r"^ready: http (\S+) dicom (\S+)@([\d.]+):(\d+)")


@dataclass(frozen=True)
class Server:
    base: str
    ae: str
    dicom_host: str
    dicom_port: int
    data: Path
    pid: int
    env: dict[str, str] = field(default_factory=dict)
    """The settings the server was started with (CLOUDFILM_INDEX=postgres, ...)."""

    def cli(self, *args: str) -> str:
        out = subprocess.run(
            [sys.executable, "-m", "cloudfilm.cli", *args],
            env={**os.environ, **self.env},
            check=True,
            capture_output=True,
            text=True,
            timeout=120,
        )
        return out.stdout.strip()

    def token(self, hospital: str = "HOSP1", role: str = "clinician") -> str:
        """A token from `cloudfilm token` for a user registered as ``role`` at ``hospital``."""
        subject = f"t.{role}.{hospital}"
        register_user(self.data, subject, hospital, role, self.env)
        return self.cli(
            "token", "--data", str(self.data), "--hospital", hospital, "--role", role,
            "--subject", subject,
        )  # fmt: skip


def register_user(
    data: Path, subject: str, hospital: str, role: str, env: dict[str, str] | None = None
) -> None:
    """Register ``hospital`` and ``subject`` there as ``role`` in the registry of the region in
    ``data`` (each if new; its database as ``env`` configures it): the API honours tokens of
    registered users only."""
    from cloudfilm.config import load_settings
    from cloudfilm.stores import open_state

    settings = load_settings({"data_dir": str(data)}, env={**os.environ, **(env or {})})
    state = open_state(settings, audit_key=None)
    registry = state.registry
    try:
        if hospital not in registry.hospital_names():
            registry.add_hospital(hospital, hospital)
        if registry.user(subject) is None:
            registry.add_user(subject, hospital, role)
    finally:
        state.close()


@dataclass(frozen=True)
class Reply:
    status: int
    headers: dict[str, str]
    body: bytes

    def json(self) -> object:
        return json.loads(self.body)


def http(
    url: str,
    *,
    token: str | None = None,
    method: str = "GET",
    body: object | None = None,
    accept: str | None = None,
    context: ssl.SSLContext | None = None,
) -> Reply:
    headers = {}
    if token:
        headers["Authorization"] = f"Bearer {token}"
    if accept:
        headers["Accept"] = accept
    data = None
    if body is not None:
        data = json.dumps(body).encode()
        headers["Content-Type"] = "application/json"
    req = urllib.request.Request(url, data=data, method=method, headers=headers)
    try:
        with urllib.request.urlopen(req, timeout=60, context=context) as r:
            return Reply(r.status, {k.lower(): v for k, v in r.headers.items()}, r.read())
    except urllib.error.HTTPError as e:
        return Reply(e.code, {k.lower(): v for k, v in e.headers.items()}, e.read())


def start_server(
    data: Path, log: Path, env: dict[str, str] | None = None, *, new_session: bool = False
) -> tuple[subprocess.Popen[str], Server]:
    """Start `cloudfilm serve`; ``new_session`` puts it (and its gateway processes) in a
    process group of its own, so a test can kill the whole stack with os.killpg."""
    with open(log, "a") as log_fh:  # the child keeps its own descriptor
        proc = _spawn(data, log_fh, env, new_session)
    assert proc.stdout is not None
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        line = proc.stdout.readline()
        if not line:
            break
        m = READY.match(line)
        if m:
            return proc, Server(m[1], m[2], m[3], int(m[4]), data, proc.pid, dict(env or {}))
    stop_server(proc)
    raise RuntimeError(f"cloudfilm serve did not start:\n{log.read_text()[-3000:]}")


def _spawn(
    data: Path, log_fh: IO[str], env: dict[str, str] | None, new_session: bool
) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [
            sys.executable,
            "-m",
            "cloudfilm.cli",
            "serve",
            "--data",
            str(data),
            "--http",
            "127.0.0.1:0",
            "--dicom",
            "127.0.0.1:0",
            "--ae",
            "CLOUDFILM",
            "--hospital",
            "HOSP1",
        ],
        stdout=subprocess.PIPE,
        stderr=log_fh,
        text=True,
        env={**os.environ, **(env or {})},
        start_new_session=new_session,
    )


def stop_server(proc: subprocess.Popen[str]) -> None:
    if proc.poll() is None:
        os.kill(proc.pid, signal.SIGTERM)
    try:
        proc.wait(20)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(5)
    if proc.stdout is not None:
        proc.stdout.close()


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    root = tmp_path_factory.mktemp("stack")
    proc, srv = start_server(root / "data", root / "serve.log")
    yield srv
    stop_server(proc)


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    """Debian's headless Chromium under Playwright (tests.browser)."""
    from playwright.sync_api import sync_playwright

    from tests.browser import launch

    with sync_playwright() as p:
        b = launch(p)
        yield b
        b.close()


@pytest.fixture(scope="module")
def weed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Seaweed]:
    """A SeaweedFS S3 server (tests.servers) with a bucket named "region"."""
    from tests.servers import seaweedfs

    with seaweedfs(tmp_path_factory.mktemp("seaweed")) as server:
        server.client().create_bucket(Bucket="region")
        yield server

"""Data at rest: everything CloudFilm writes under its data directory is readable by its own
user only, files 0600 and directories 0700 (#14 item 8)."""

from __future__ import annotations

import os
import stat
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from cloudfilm.synth import synthesize_study
from image_store.audit import AuditEvent, SqlAuditLog
from image_store.index.sqlite import SqliteIndex
from image_store.objects.filesystem import FilesystemObjectStore
from image_store.state.revocations import SqlRevocations
from tests.e2e.conftest import start_server, stop_server
from tests.e2e.fault_harness import _storescu, acked_files
from viewer_api.auth import load_or_create_secret


def _open_to_others(root: Path) -> list[str]:
    """Files and directories under ``root`` (itself included) that group or others may use."""
    found = []
    for path in [root, *root.rglob("*")]:
        mode = path.lstat().st_mode
        if not stat.S_ISLNK(mode) and mode & 0o077:
            found.append(f"{oct(mode & 0o777)} {path.relative_to(root.parent)}")
    return found


@pytest.fixture
def permissive_umask() -> Iterator[None]:
    """A umask that lets group and others read (the usual 022): the stores must not rely on
    the process's umask."""
    previous = os.umask(0o022)
    yield
    os.umask(previous)


@pytest.mark.e2e
def test_nothing_under_the_data_directory_is_group_or_world_accessible_after_ingest(
    tmp_path: Path, permissive_umask: None
) -> None:
    files = [str(p) for p in synthesize_study(tmp_path / "s", modality="CT", images=20, seed=3)]
    data = tmp_path / "data"
    proc, server = start_server(data, tmp_path / "serve.log")
    try:
        out, _ = _storescu(server.dicom_port, files).communicate(timeout=120)
        assert len(acked_files(out)) == len(files)
        deadline = time.monotonic() + 60  # until the uploader has stored and indexed them
        while list((data / "spool" / "ready").iterdir()) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert any(p.is_file() for p in (data / "objects").rglob("*"))
        assert _open_to_others(data) == []
    finally:
        stop_server(proc)
    assert _open_to_others(data) == []


def test_the_stores_create_private_files_whatever_the_umask(
    tmp_path: Path, permissive_umask: None
) -> None:
    root = tmp_path / "region"
    store = FilesystemObjectStore(root / "objects")
    store.put("H1/1.2/1.2.3/1.2.3.4", b"DICM")
    index = SqliteIndex(root / "db" / "index.sqlite")
    index.close()
    log = SqlAuditLog(root / "audit.sqlite", head_key=b"k" * 32)
    log.append(AuditEvent(time.time(), "a", "H1", "admin", "GET", "/x", 200, "::1"))
    log.close()
    load_or_create_secret(root / "secrets" / "api.key")
    revocations = SqlRevocations(root / "db" / "index.sqlite")
    revocations.revoke("0" * 16, time.time() + 60)
    revocations.close()
    assert _open_to_others(root) == []

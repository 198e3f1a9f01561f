"""An API over a real filesystem store and SQLite index, loaded with pydicom's test files."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pydicom
import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient
from pydicom.data import get_testdata_file

from image_store.index.sqlite import SqliteIndex
from image_store.ingest import LocalIngest
from image_store.objects.filesystem import FilesystemObjectStore
from viewer_api.app import ViewerSettings, create_app
from viewer_api.audit import SqliteAuditLog
from viewer_api.auth import TokenSigner
from viewer_api.share import SqliteShareLinks

BASE = "http://films.example"


class Spy:
    """Wraps a store or an index and records every call made through it."""

    def __init__(self, inner: Any) -> None:
        self._inner = inner
        self.calls: list[str] = []

    def __getattr__(self, name: str) -> Any:
        attr = getattr(self._inner, name)
        if callable(attr):

            def wrapped(*a: Any, **k: Any) -> Any:
                self.calls.append(name)
                return attr(*a, **k)

            return wrapped
        return attr


@dataclass
class Api:
    client: TestClient[Any, Any]
    signer: TokenSigner
    store: Spy
    index: Spy
    shares: SqliteShareLinks
    audit: SqliteAuditLog
    files: dict[str, bytes]

    def token(self, hospital: str = "H1", role: str = "clinician") -> dict[str, str]:
        return {"Authorization": f"Bearer {self.signer.issue(hospital, role, subject='t')}"}


def _bytes(name: str) -> bytes:
    path = get_testdata_file(name)
    assert path is not None
    return Path(path).read_bytes()


@pytest.fixture
def loaded(tmp_path: Path) -> Iterator[tuple[FilesystemObjectStore, SqliteIndex, dict[str, bytes]]]:
    store = FilesystemObjectStore(tmp_path / "objects")
    index = SqliteIndex(tmp_path / "index.sqlite")
    files = {n: _bytes(n) for n in ("CT_small.dcm", "MR_small.dcm", "SC_rgb_rle.dcm")}
    ingest = LocalIngest(store, index)
    outs = ingest.ingest("H1", [files["CT_small.dcm"], files["MR_small.dcm"]])
    outs += ingest.ingest("H2", [files["SC_rgb_rle.dcm"]])
    assert all(o.ok for o in outs), outs
    yield store, index, files
    index.close()


@pytest.fixture
async def api(
    loaded: tuple[FilesystemObjectStore, SqliteIndex, dict[str, bytes]],
    tmp_path: Path,
    aiohttp_client: Callable[[web.Application], Any],
) -> Api:
    store, index, files = loaded
    signer = TokenSigner(b"k" * 32)
    shares = SqliteShareLinks(tmp_path / "shares.sqlite")
    audit = SqliteAuditLog(tmp_path / "audit.sqlite")
    spy_store, spy_index = Spy(store), Spy(index)
    app = create_app(
        ViewerSettings(public_base_url=BASE), spy_store, spy_index, shares, audit, signer
    )  # type: ignore[arg-type]
    client = await aiohttp_client(app)
    return Api(client, signer, spy_store, spy_index, shares, audit, files)


def uids(name: str) -> pydicom.Dataset:
    path = get_testdata_file(name)
    assert path is not None
    return pydicom.dcmread(path, stop_before_pixels=True)

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

from cloudfilm.synth import synthesize_study
from image_store.audit import SqlAuditLog
from image_store.consents import SqlConsents
from image_store.index.sqlite import SqliteIndex
from image_store.ingest import LocalIngest
from image_store.objects.filesystem import FilesystemObjectStore
from image_store.persons import PersonKeyer
from image_store.state.db import SqliteStateDb
from viewer_api.app import ViewerSettings, create_app
from viewer_api.auth import Role, TokenSigner
from viewer_api.registry import SqlRegistry
from viewer_api.report_store import SqlReports
from viewer_api.share import SqlShareLinks

BASE = "http://films.example"


class Spy:
    """Wraps a store or an index and records every call made through it.

    ``fail(name, after=n)`` makes the call ``name`` raise RuntimeError (or ``error``) once
    ``n`` calls to it have succeeded (an outage in the middle of a request).
    """

    def __init__(self, inner: Any) -> None:
        self._inner = inner
        self.calls: list[str] = []
        self._fail: dict[str, int] = {}
        self._errors: dict[str, Exception] = {}

    def fail(self, name: str, *, after: int = 0, error: Exception | None = None) -> None:
        self._fail[name] = after
        if error is not None:
            self._errors[name] = error

    def __getattr__(self, name: str) -> Any:
        attr = getattr(self._inner, name)
        if callable(attr):

            def wrapped(*a: Any, **k: Any) -> Any:
                self.calls.append(name)
                if name in self._fail:
                    if self._fail[name] <= 0:
                        raise self._errors.get(name) or RuntimeError(f"injected failure of {name}")
                    self._fail[name] -= 1
                return attr(*a, **k)

            return wrapped
        return attr


@dataclass
class Api:
    client: TestClient[Any, Any]
    signer: TokenSigner
    store: Spy
    index: Spy
    shares: SqlShareLinks
    audit: SqlAuditLog
    files: dict[str, bytes]
    registry: SqlRegistry | None = None

    def token(self, hospital: str = "H1", role: Role = "clinician") -> dict[str, str]:
        """A bearer token of a user registered (here, on first use) as ``role`` at ``hospital``:
        the API honours tokens of registered users only."""
        subject = f"t.{role}.{hospital}"
        if self.registry is not None:
            register_user(self.registry, subject, hospital, role)
        return {"Authorization": f"Bearer {self.signer.issue(hospital, role, subject=subject)}"}


def register_user(registry: SqlRegistry, subject: str, hospital: str, role: str) -> None:
    """Register ``hospital`` (if new) and ``subject`` there as ``role`` (if new)."""
    if hospital not in registry.hospital_names():
        registry.add_hospital(hospital, hospital)
    if registry.user(subject) is None:
        registry.add_user(subject, hospital, role)


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


async def make_api(
    store: FilesystemObjectStore,
    index: SqliteIndex,
    files: dict[str, bytes],
    tmp_path: Path,
    aiohttp_client: Callable[[web.Application], Any],
    settings: ViewerSettings | None = None,
) -> Api:
    signer = TokenSigner(b"k" * 32)
    db = SqliteStateDb(tmp_path / "index.sqlite")  # the state lives in the index's database
    shares = SqlShareLinks(db)
    audit = SqlAuditLog(db)
    spy_store, spy_index = Spy(store), Spy(index)
    registry = SqlRegistry(db)
    app = create_app(
        settings or ViewerSettings(public_base_url=BASE),
        spy_store,
        spy_index,
        shares,
        audit,
        signer,
        consents=SqlConsents(db),
        persons=PersonKeyer(b"p" * 32),
        reports=SqlReports(db),
        registry=registry,
    )
    client = await aiohttp_client(app)
    return Api(client, signer, spy_store, spy_index, shares, audit, files, registry)


@pytest.fixture
async def api(
    loaded: tuple[FilesystemObjectStore, SqliteIndex, dict[str, bytes]],
    tmp_path: Path,
    aiohttp_client: Callable[[web.Application], Any],
) -> Api:
    store, index, files = loaded
    return await make_api(store, index, files, tmp_path, aiohttp_client)


@dataclass
class Regional:
    """The pydicom files of ``loaded`` plus a synthetic CT study (a localizer series and an
    axial series of three slices) at H1 and a synthetic MR study at H2."""

    api: Api
    ct: list[pydicom.Dataset]
    ct_bytes: list[bytes]
    mr_h2: list[pydicom.Dataset]


def _synthesize(out: Path, **kwargs: Any) -> tuple[list[pydicom.Dataset], list[bytes]]:
    paths = synthesize_study(out, **kwargs)
    data = [Path(p).read_bytes() for p in paths]
    return [pydicom.dcmread(p, stop_before_pixels=True) for p in paths], data


SynthStudies = tuple[list[pydicom.Dataset], list[bytes], list[pydicom.Dataset], list[bytes]]


@pytest.fixture(scope="session")
def synth_studies(tmp_path_factory: pytest.TempPathFactory) -> SynthStudies:
    """Written once per run: the files are the same for the same arguments."""
    out = tmp_path_factory.mktemp("synth")
    ct, ct_bytes = _synthesize(out / "ct", modality="CT", images=3, seed=11)
    mr, mr_bytes = _synthesize(out / "mr", modality="MR", images=2, seed=12)
    return ct, ct_bytes, mr, mr_bytes


@pytest.fixture
async def regional(
    loaded: tuple[FilesystemObjectStore, SqliteIndex, dict[str, bytes]],
    synth_studies: SynthStudies,
    tmp_path: Path,
    aiohttp_client: Callable[[web.Application], Any],
) -> Regional:
    store, index, files = loaded
    ct, ct_bytes, mr, mr_bytes = synth_studies
    ingest = LocalIngest(store, index)
    outs = ingest.ingest("H1", ct_bytes) + ingest.ingest("H2", mr_bytes)
    assert all(o.ok for o in outs), outs
    api = await make_api(store, index, files, tmp_path, aiohttp_client)
    return Regional(api, ct, ct_bytes, mr)


def uids(name: str) -> pydicom.Dataset:
    path = get_testdata_file(name)
    assert path is not None
    return pydicom.dcmread(path, stop_before_pixels=True)

"""CORS for a browser viewer (e.g. OHIF) on a configured origin, and only that origin."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from aiohttp import web

from image_store.index.sqlite import SqliteIndex
from image_store.objects.filesystem import FilesystemObjectStore
from viewer_api.app import ViewerSettings, create_app
from viewer_api.auth import TokenSigner
from viewer_api.state import open_sql_state

OHIF = "https://viewer.hospital.example"


async def test_preflight_and_responses_carry_cors_for_the_configured_origin_only(
    tmp_path: Path, aiohttp_client: Callable[[web.Application], Any]
) -> None:
    signer = TokenSigner(b"c" * 32)
    index = SqliteIndex(tmp_path / "i.sqlite")
    state = open_sql_state(tmp_path / "i.sqlite")
    state.registry.add_hospital("H1", "First")
    state.registry.add_user("dr.c", "H1", "clinician")  # the API honours registered users only
    app = create_app(
        ViewerSettings(public_base_url="http://x", cors_origins=frozenset({OHIF})),
        FilesystemObjectStore(tmp_path / "o"),
        index,
        state.shares,
        state.audit,
        signer,
        consents=state.consents,
        reports=state.reports,
        registry=state.registry,
    )
    client = await aiohttp_client(app)
    pre = await client.options(
        "/dicom-web/studies",
        headers={"Origin": OHIF, "Access-Control-Request-Headers": "authorization"},
    )
    assert pre.status == 204
    assert pre.headers["Access-Control-Allow-Origin"] == OHIF
    assert "Authorization" in pre.headers["Access-Control-Allow-Headers"]
    token = {"Authorization": f"Bearer {signer.issue('H1', 'clinician', subject='dr.c')}"}
    r = await client.get("/dicom-web/studies?limit=101&offset=0", headers={"Origin": OHIF, **token})
    assert r.status == 200 and r.headers["Access-Control-Allow-Origin"] == OHIF
    other = await client.get(
        "/dicom-web/studies", headers={"Origin": "https://evil.example", **token}
    )
    assert "Access-Control-Allow-Origin" not in other.headers
    denied = await client.options("/dicom-web/studies", headers={"Origin": "https://evil.example"})
    assert denied.status == 403
    index.close()

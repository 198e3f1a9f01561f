from __future__ import annotations

import io
import re
import sqlite3
import time
from pathlib import Path

import pytest
from PIL import Image

from tests.viewer_api.conftest import BASE, Api, uids
from viewer_api.audit import AuditEvent, SqliteAuditLog
from viewer_api.film import render_qr
from viewer_api.pages import mask_name

CT = uids("CT_small.dcm")
SC = uids("SC_rgb_rle.dcm")


async def _share(api: Api, study_uid: str, **body: object) -> dict[str, str]:
    r = await api.client.post(
        "/api/shares", json={"study_uid": study_uid, **body}, headers=api.token()
    )
    assert r.status == 201, await r.text()
    out: dict[str, str] = await r.json()
    return out


def _path(url: str) -> str:
    assert url.startswith(BASE)
    return url[len(BASE) :]


async def test_a_share_link_opens_a_page_with_one_thumbnail_per_series(api: Api) -> None:
    share = await _share(api, CT.StudyInstanceUID)
    assert share["url"] == f"{BASE}/film/{share['token']}"
    r = await api.client.get(_path(share["url"]))
    assert r.status == 200 and r.headers["Content-Type"].startswith("text/html")
    html = await r.text()
    srcs = re.findall(r'<img class="thumb"[^>]* src="([^"]+)"', html)
    assert len(srcs) == 1
    img = await api.client.get(srcs[0])
    assert img.status == 200 and img.headers["Content-Type"] == "image/jpeg"
    assert str(CT.PatientName) not in html
    assert r.headers["Content-Security-Policy"].startswith("default-src 'none'")
    assert r.headers["X-Frame-Options"] == "DENY"
    assert r.headers["Referrer-Policy"] == "no-referrer"
    assert r.headers["Cache-Control"] == "no-store"
    link = api.shares.get(share["id"])
    assert link is not None and link.views == 1


async def test_share_token_has_128_random_bits_and_is_signed(api: Api) -> None:
    a = await _share(api, CT.StudyInstanceUID)
    b = await _share(api, CT.StudyInstanceUID)
    assert a["id"] != b["id"] and len(a["id"]) == 22  # 16 bytes, base64url
    assert a["token"].startswith(a["id"] + ".")


@pytest.mark.parametrize("mutate", ["sig", "id"])
async def test_a_tampered_link_is_a_403_page_without_database_access(api: Api, mutate: str) -> None:
    share = await _share(api, CT.StudyInstanceUID)
    link_id, sig = share["token"].split(".")
    bad = f"{link_id}.{sig[::-1]}" if mutate == "sig" else f"{link_id[::-1]}.{sig}"
    api.index.calls.clear()
    r = await api.client.get(f"/film/{bad}")
    assert r.status == 403 and "链接无效" in await r.text()
    assert api.index.calls == []
    r = await api.client.get(f"/film/{bad}/series/{CT.SeriesInstanceUID}/thumbnail")
    assert r.status == 403


async def test_expired_and_revoked_links_get_their_own_pages(api: Api) -> None:
    past = api.shares.create(CT.StudyInstanceUID, "H1", "test", time.time() - 1)
    r = await api.client.get(f"/film/{api.signer.share_token(past.id)}")
    assert r.status == 403 and "expired" in await r.text()

    share = await _share(api, CT.StudyInstanceUID)
    other = await api.client.delete(f"/api/shares/{share['id']}", headers=api.token("H2"))
    assert other.status == 403
    r = await api.client.delete(f"/api/shares/{share['id']}", headers=api.token())
    assert r.status == 204
    r = await api.client.get(_path(share["url"]))
    assert r.status == 403 and "revoked" in await r.text()
    missing = await api.client.delete("/api/shares/AAAAAAAAAAAAAAAAAAAAAA", headers=api.token())
    assert missing.status == 404


async def test_only_visible_studies_can_be_shared(api: Api) -> None:
    r = await api.client.post(
        "/api/shares", json={"study_uid": SC.StudyInstanceUID}, headers=api.token()
    )
    assert r.status == 403
    r = await api.client.post("/api/shares", json={"study_uid": "1.2.3.9"}, headers=api.token())
    assert r.status == 404
    assert (await api.client.post("/api/shares", json={"study_uid": "1.2.3"})).status == 401


@pytest.mark.parametrize(
    "body",
    [
        {"study_uid": "1.x"},
        {"study_uid": 5},
        [],
        {"study_uid": "1.2", "ttl_hours": 0},
        {"study_uid": "1.2", "ttl_hours": True},
        {"study_uid": "1.2", "ttl_hours": 99999},
    ],
)
async def test_bad_share_requests_are_400(api: Api, body: object) -> None:
    r = await api.client.post("/api/shares", json=body, headers=api.token())
    assert r.status == 400 and "error" in await r.json()


async def test_a_series_of_another_study_is_not_served_through_a_link(api: Api) -> None:
    share = await _share(api, CT.StudyInstanceUID)
    r = await api.client.get(f"/film/{share['token']}/series/{SC.SeriesInstanceUID}/thumbnail")
    assert r.status == 404


async def test_film_access_is_audited_by_link_id_not_token(api: Api) -> None:
    share = await _share(api, CT.StudyInstanceUID)
    await api.client.get(_path(share["url"]))
    events = list(api.audit.iter_events())
    assert events[-1].actor == f"share:{share['id']}"
    assert events[-1].resource == f"/film/{share['id']}"
    assert share["token"] not in repr(events)


@pytest.mark.parametrize(
    ("name", "shown"),
    [
        ("Zhang^San=张^三", "张*"),
        ("Ouyang^Xiaoming=欧阳^小明", "欧**明"),
        ("Smith^John", "S********n"),
        ("", "*"),
    ],
)
def test_names_are_masked(name: str, shown: str) -> None:
    assert mask_name(name) == shown


def test_audit_chain_detects_edited_and_deleted_rows(tmp_path: Path) -> None:
    path = tmp_path / "audit.sqlite"
    log = SqliteAuditLog(path)
    for i in range(5):
        log.append(AuditEvent(time.time(), "a", "H1", "admin", "GET", f"/r/{i}", 200, "127.0.0.1"))
    assert log.verify() is None
    with sqlite3.connect(path) as db:
        db.execute("UPDATE audit SET event = replace(event, '/r/2', '/r/9') WHERE seq = 3")
    assert log.verify() == 3
    log.close()
    with sqlite3.connect(path) as db:
        db.execute("UPDATE audit SET event = replace(event, '/r/9', '/r/2') WHERE seq = 3")
        db.execute("DELETE FROM audit WHERE seq = 2")
    log = SqliteAuditLog(path)
    assert log.verify() == 2
    log.close()


async def test_a_share_link_has_a_qr_code_of_its_url_for_the_report(api: Api) -> None:
    share = await _share(api, CT.StudyInstanceUID)
    png = await api.client.get(_path(share["qr_png"]), headers=api.token())
    assert png.status == 200 and png.headers["Content-Type"] == "image/png"
    body = await png.read()
    assert body == render_qr(share["url"], "png")  # the code encodes exactly the link
    img = Image.open(io.BytesIO(body))
    assert img.size[0] == img.size[1] <= 6 * (4 * 2 + 57)  # version <= 10: small enough to print
    svg = await api.client.get(_path(share["qr_svg"]), headers=api.token())
    assert svg.headers["Content-Type"] == "image/svg+xml" and b"<svg" in await svg.read()
    assert (await api.client.get(_path(share["qr_png"]))).status == 401
    assert (await api.client.get(_path(share["qr_png"]), headers=api.token("H2"))).status == 403

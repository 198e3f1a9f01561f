from __future__ import annotations

import datetime as dt
import io
import json
import re
import sqlite3
import time
from pathlib import Path
from typing import Any

import pydicom
import pytest
from PIL import Image
from pydicom.uid import generate_uid

from image_store.audit import AuditEvent, SqlAuditLog, chain_hash
from image_store.ingest import LocalIngest
from tests.viewer_api.conftest import BASE, Api, Regional, uids
from viewer_api.film import render_qr
from viewer_api.pages import age_of, mask_name

CT = uids("CT_small.dcm")
SC = uids("SC_rgb_rle.dcm")
PAGE_SECURITY = {
    "Content-Security-Policy": "default-src 'none'; img-src 'self'; style-src 'unsafe-inline'",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-store",
    "X-Frame-Options": "DENY",
}


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


def manifest_of(page: str) -> dict[str, Any]:
    """The viewer's data block of a film page."""
    m = re.search(r'<script type="application/json" id="manifest">(.*?)</script>', page, re.S)
    assert m is not None, page[:500]
    out: dict[str, Any] = json.loads(m[1])
    return out


async def test_a_share_link_opens_the_viewer_with_the_first_slice_in_the_page(api: Api) -> None:
    share = await _share(api, CT.StudyInstanceUID)
    assert share["url"] == f"{BASE}/film/{share['token']}"
    r = await api.client.get(_path(share["url"]))
    assert r.status == 200 and r.headers["Content-Type"].startswith("text/html")
    html = await r.text()
    manifest = manifest_of(html)
    assert manifest["base"] == f"/film/{share['token']}"
    (series,) = manifest["study"]["series"]
    assert series["images"] == [[CT.SOPInstanceUID, 1]]
    first = re.search(r'<img id="first" elementtiming="first-image" alt="" src="([^"]+)"', html)
    assert first is not None
    img = await api.client.get(first[1])
    assert img.status == 200 and img.headers["Content-Type"] == "image/jpeg"
    assert Image.open(io.BytesIO(await img.read())).size == (CT.Columns, CT.Rows)
    thumb = await api.client.get(f"{manifest['base']}/series/{series['uid']}/thumbnail")
    assert thumb.status == 200 and thumb.headers["Content-Type"] == "image/jpeg"
    assert str(CT.PatientName) not in html and CT.PatientID not in html
    csp = r.headers["Content-Security-Policy"]
    assert "script-src 'self';" in csp and "unsafe" not in csp and "<script>" not in html
    assert r.headers["X-Frame-Options"] == "DENY"
    assert r.headers["Referrer-Policy"] == "no-referrer"
    assert r.headers["Cache-Control"] == "no-store"
    link = api.shares.get(share["id"])
    assert link is not None and link.views == 1
    for src in re.findall(r'(?:src|href)="(/static/[^"]+)"', html):
        asset = await api.client.get(src)
        assert asset.status == 200 and "immutable" in asset.headers["Cache-Control"]
    assert (await api.client.get("/static/..%2Fshare.py")).status == 404
    assert (await api.client.get("/static/nothing.js")).status == 404


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
    assert r.status == 404  # as for an unknown study
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
    log = SqlAuditLog(path)
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
    log = SqlAuditLog(path)
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


async def test_the_page_shows_every_series_of_a_synthetic_study(regional: Regional) -> None:
    api, ct = regional.api, regional.ct
    share = await _share(api, ct[0].StudyInstanceUID, ttl_hours=1)
    r = await api.client.get(_path(share["url"]))
    assert r.status == 200
    assert r.headers["Content-Type"] == "text/html; charset=utf-8"
    page = await r.text()
    manifest = manifest_of(page)
    series = manifest["study"]["series"]
    assert [s["uid"] for s in series] == [ct[0].SeriesInstanceUID, ct[1].SeriesInstanceUID]
    axial = [d for d in ct if d.SeriesInstanceUID == ct[1].SeriesInstanceUID]
    axial.sort(key=lambda d: int(d.InstanceNumber))
    assert series[1]["images"] == [[d.SOPInstanceUID, 1] for d in axial]
    assert series[1]["window"] == [float(axial[0].WindowCenter[0]), float(axial[0].WindowWidth[0])]
    for s in series:
        img = await api.client.get(f"{manifest['base']}/series/{s['uid']}/thumbnail")
        assert img.status == 200 and img.headers["Content-Type"] == "image/jpeg"
        assert (await img.read())[:3] == b"\xff\xd8\xff"
    alpha, ideo = str(ct[0].PatientName).split("=")
    assert mask_name(str(ct[0].PatientName)) in page
    assert ideo.replace("^", "") not in page and alpha.split("^")[0] not in page
    assert ct[0].PatientID not in page and ct[0].PatientBirthDate not in page
    assert manifest["study"]["age"] == age_of(ct[0].PatientBirthDate, ct[0].StudyDate)
    assert 'name="viewport"' in page and "窗宽窗位" in page and "肺窗 Lung" in page
    assert "http" not in page.replace('xmlns="http', "")  # nothing from another origin
    assert api.shares.get(share["id"]).views == 1  # type: ignore[union-attr]
    await api.client.get(_path(share["url"]))
    assert api.shares.get(share["id"]).views == 2  # type: ignore[union-attr]


@pytest.mark.parametrize(
    ("birth", "on", "shown"),
    [
        ("19800615", "20240614", "43岁 43 y"),
        ("19800615", "20240615", "44岁 44 y"),
        ("20240101", "20240720", "6月 6 mo"),
        ("", "20240101", ""),
        ("20250101", "20240101", ""),
    ],
)
def test_the_age_at_the_study_is_in_years_or_months(birth: str, on: str, shown: str) -> None:
    assert age_of(birth, on) == shown


async def test_a_link_can_be_shared_only_for_its_lifetime(regional: Regional) -> None:
    api, ct = regional.api, regional.ct
    before = time.time()
    share = await _share(api, ct[0].StudyInstanceUID, ttl_hours=2)
    after = time.time()
    expires = dt.datetime.fromisoformat(share["expires_at"])
    assert expires.tzinfo is not None and expires.utcoffset() == dt.timedelta(0)
    # the expiry is two hours after the request (a check of the lifetime, not of speed)
    assert before + 7200 <= expires.timestamp() <= after + 7200
    default = await _share(api, ct[0].StudyInstanceUID)
    left = dt.datetime.fromisoformat(default["expires_at"]).timestamp() - time.time()
    assert 30 * 86400 - 100 < left <= 30 * 86400


@pytest.mark.parametrize("state", ["tampered", "expired", "revoked"])
async def test_refused_links_get_a_403_page_with_security_headers(
    regional: Regional, state: str
) -> None:
    api, ct = regional.api, regional.ct
    study = ct[0].StudyInstanceUID
    if state == "expired":
        link = api.shares.create(study, "H1", "test", time.time() - 60)
        token = api.signer.share_token(link.id)
    else:
        token = (await _share(api, study))["token"]
        if state == "revoked":
            api.shares.revoke(token.split(".")[0])
        else:
            token = "A" + token[1:] if token[0] != "A" else "B" + token[1:]
    r = await api.client.get(f"/film/{token}")
    assert r.status == 403
    assert r.headers["Content-Type"] == "text/html; charset=utf-8"
    page = await r.text()
    assert {"tampered": "not valid", "expired": "expired", "revoked": "revoked"}[state] in page
    for name, value in PAGE_SECURITY.items():
        assert r.headers[name].startswith(value), name
    thumb = await api.client.get(f"/film/{token}/series/{ct[1].SeriesInstanceUID}/thumbnail")
    assert thumb.status == 403


async def test_only_the_creating_hospital_or_an_admin_may_revoke(regional: Regional) -> None:
    api, study = regional.api, regional.ct[0].StudyInstanceUID
    first = await _share(api, study)
    r = await api.client.delete(f"/api/shares/{first['id']}", headers=api.token(role="admin"))
    assert r.status == 204
    second = await _share(api, study)
    r = await api.client.delete(f"/api/shares/{second['id']}", headers=api.token("H2", "admin"))
    assert r.status == 204
    assert (await api.client.delete(f"/api/shares/{second['id']}")).status == 401
    assert (await api.client.delete("/api/shares/..%2F..", headers=api.token())).status in (
        400,
        404,
    )


@pytest.mark.parametrize(
    ("name", "shown"),
    [("张小三", "张*三"), ("Zhaon", "Z***n"), ("王五", "王*"), ("Li", "L*"), ("A", "*")],
)
def test_names_keep_their_first_and_last_character(name: str, shown: str) -> None:
    assert mask_name(name) == shown


def test_an_audit_row_edited_in_place_is_found(tmp_path: Path) -> None:
    log = SqlAuditLog(tmp_path / "audit.sqlite")
    for status in (200, 403, 404):
        log.append(AuditEvent(1.0, "share:abc", "", "", "GET", "/film/abc", status, "::1"))
    assert log.verify() is None
    assert [e.status for e in log.iter_events()] == [200, 403, 404]
    with sqlite3.connect(tmp_path / "audit.sqlite") as db:
        db.execute("UPDATE audit SET event = replace(event, '403', '200') WHERE seq = 2")
    assert log.verify() == 2
    with sqlite3.connect(tmp_path / "audit.sqlite") as db:  # recomputing one hash is not enough
        (text, prev) = db.execute("SELECT event, prev_hash FROM audit WHERE seq = 2").fetchone()
        db.execute("UPDATE audit SET hash = ? WHERE seq = 2", (chain_hash(prev, text),))
    assert log.verify() == 3
    log.close()


async def test_a_patient_link_without_issuer_uses_the_only_issuer_the_hospital_holds(
    regional: Regional,
) -> None:
    api, ct = regional.api, regional.ct
    pid, issuer = str(ct[0].PatientID), str(ct[0].IssuerOfPatientID)
    assert issuer  # the synthetic study's Patient ID has an issuer
    r = await api.client.post(
        "/api/shares", json={"scope": "patient", "patient_id": pid}, headers=api.token()
    )
    assert r.status == 201, await r.text()
    share = await r.json()
    assert api.shares.get(share["id"]).issuer == issuer  # type: ignore[union-attr]
    page = await api.client.get(_path(share["url"]))
    studies = manifest_of(await page.text())["studies"]
    assert [s["uid"] for s in studies] == [str(ct[0].StudyInstanceUID)]


async def test_a_patient_link_under_the_wrong_issuer_names_the_issuer_held(
    regional: Regional,
) -> None:
    api, ct = regional.api, regional.ct
    pid, issuer = str(ct[0].PatientID), str(ct[0].IssuerOfPatientID)
    for wrong in ("", "OTHER-HOSPITAL"):
        r = await api.client.post(
            "/api/shares",
            json={"scope": "patient", "patient_id": pid, "issuer": wrong},
            headers=api.token(),
        )
        assert r.status == 404
        assert f"under issuer '{issuer}'" in (await r.json())["error"]
    # another hospital's staff learn nothing about H1's patient IDs
    r = await api.client.post(
        "/api/shares", json={"scope": "patient", "patient_id": pid}, headers=api.token("H2")
    )
    assert r.status == 404 and issuer not in await r.text()


async def test_a_patient_id_held_under_two_issuers_needs_the_issuer_named(
    regional: Regional, tmp_path: Path
) -> None:
    api, ct = regional.api, regional.ct
    pid = str(ct[0].PatientID)
    other = pydicom.dcmread(io.BytesIO(regional.ct_bytes[0]))
    other.IssuerOfPatientID = "SECOND-ISSUER"
    other.StudyInstanceUID, other.SeriesInstanceUID = generate_uid(), generate_uid()
    other.SOPInstanceUID = other.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    buf = io.BytesIO()
    other.save_as(buf, enforce_file_format=True)
    outs = LocalIngest(api.store, api.index).ingest("H1", [buf.getvalue()])
    assert all(o.ok for o in outs), outs
    r = await api.client.post(
        "/api/shares", json={"scope": "patient", "patient_id": pid}, headers=api.token()
    )
    assert r.status == 400
    error = (await r.json())["error"]
    assert "give issuer" in error and "SECOND-ISSUER" in error
    r = await api.client.post(
        "/api/shares",
        json={"scope": "patient", "patient_id": pid, "issuer": "SECOND-ISSUER"},
        headers=api.token(),
    )
    assert r.status == 201, await r.text()

"""Cloud-film links beyond one study: extraction codes and their lockout, patient links, slices
and downloads through a link, and what the patient does with their own link."""

from __future__ import annotations

import asyncio
import io
import re
import sqlite3
import time
import zipfile
from pathlib import Path
from typing import Any

import numpy as np
import pydicom
import pytest
import segno
from PIL import Image

from image_store.state.records import BLOCK_AFTER
from tests.viewer_api.conftest import BASE, Api, Regional
from tests.viewer_api.test_film import manifest_of
from tests.viewer_api.test_patients import ISSUER, _grant, _linked
from viewer_api.share import LOCK_AFTER, LOCK_S, SqlShareLinks


async def _share(api: Api, **body: Any) -> dict[str, Any]:
    r = await api.client.post("/api/shares", json=body, headers=api.token())
    assert r.status == 201, await r.text()
    out: dict[str, Any] = await r.json()
    return out


def _path(url: str) -> str:
    return url[len(BASE) :] if url.startswith(BASE) else url


async def _page(api: Api, url: str) -> tuple[int, str]:
    r = await api.client.get(_path(url))
    return r.status, await r.text()


async def _code(api: Api, url: str, code: str) -> Any:
    return await api.client.post(_path(url) + "/code", data={"code": code}, allow_redirects=False)


def _slice_url(manifest: dict[str, Any], series: int = -1, image: int = 0) -> str:
    s = manifest["study"]["series"][series]
    sop, frame = s["images"][image]
    return (
        f"{manifest['base']}/studies/{manifest['study']['uid']}/series/{s['uid']}/instances/"
        f"{sop}/frames/{frame}/rendered"
    )


# -- extraction codes ---------------------------------------------------------------------------


async def test_a_link_with_a_code_shows_only_the_code_page_until_the_code_is_entered(
    regional: Regional,
) -> None:
    api = regional.api
    study = str(regional.ct[0].StudyInstanceUID)
    share = await _share(api, study_uid=study, code="2468")
    assert share["has_code"] is True and "code" not in share  # given by the caller: not echoed
    status, page = await _page(api, share["url"])
    assert status == 200 and 'name="code"' in page and 'id="manifest"' not in page
    open_share = await _share(api, study_uid=study)
    manifest = manifest_of((await _page(api, open_share["url"]))[1])
    locked_slice = _slice_url(manifest).replace(open_share["token"], share["token"])
    assert (await api.client.get(locked_slice)).status == 403
    series = manifest["study"]["series"][0]["uid"]
    thumb = f"/film/{share['token']}/series/{series}/thumbnail"
    assert (await api.client.get(thumb)).status == 403

    r = await _code(api, share["url"], "2468")
    assert r.status == 303 and r.headers["Location"] == f"/film/{share['token']}"
    cookie = r.cookies["cf_film"]
    assert cookie["httponly"] and cookie["samesite"] == "Strict"
    assert cookie["path"] == f"/film/{share['token']}"
    status, page = await _page(api, share["url"])
    assert status == 200 and manifest_of(page)["study"]["uid"] == study
    assert (await api.client.get(locked_slice)).status == 200
    # the unlock cookie is bound to its link: it opens no other link with a code
    other = await _share(api, study_uid=study, code="1357")
    api.client.session.cookie_jar.update_cookies({"cf_film": cookie.value})
    status, page = await _page(api, other["url"])
    assert 'name="code"' in page and 'id="manifest"' not in page


async def test_wrong_codes_lock_the_link_then_block_it_for_good(regional: Regional) -> None:
    api = regional.api
    share = await _share(api, study_uid=str(regional.ct[0].StudyInstanceUID), code="auto")
    code = share["code"]
    assert re.fullmatch(r"\d{6}", code)
    wrong = "000000" if code != "000000" else "111111"
    for left in range(LOCK_AFTER - 1, 0, -1):
        r = await _code(api, share["url"], wrong)
        assert r.status == 403 and f"{left} tries left" in await r.text()
    r = await _code(api, share["url"], wrong)
    assert r.status == 429 and 'id="locked"' in await r.text()
    r = await _code(api, share["url"], code)  # even the right code waits out the lockout
    assert r.status == 429
    status, page = await _page(api, share["url"])
    assert 'id="locked"' in page and 'name="code"' not in page

    # the lockout ends; five more wrong codes block the link for good
    with sqlite3.connect(api.shares.db.path) as db:
        db.execute(
            "UPDATE share_links SET locked_until = ? WHERE id = ?", (time.time() - 1, share["id"])
        )
    for _ in range(BLOCK_AFTER - LOCK_AFTER - 1):
        assert (await _code(api, share["url"], wrong)).status == 403
    r = await _code(api, share["url"], wrong)
    assert r.status == 403 and "blocked" in await r.text()
    assert (await _code(api, share["url"], code)).status == 403
    status, page = await _page(api, share["url"])
    assert status == 403 and "链接已锁定" in page
    # the hospital clears it
    assert (
        await api.client.post(f"/api/shares/{share['id']}/unlock", headers=api.token("H2"))
    ).status == 403
    r = await api.client.post(f"/api/shares/{share['id']}/unlock", headers=api.token())
    assert r.status == 204
    assert (await _code(api, share["url"], code)).status == 303


def test_concurrent_guesses_never_get_past_the_lockout(tmp_path: Any) -> None:
    from concurrent.futures import ThreadPoolExecutor

    shares = SqlShareLinks(tmp_path / "s.sqlite")
    link = shares.create("1.2.3", "H1", "t", time.time() + 3600, code="9876")
    with ThreadPoolExecutor(8) as pool:
        outcomes = list(
            pool.map(lambda c: shares.try_code(link.id, c).outcome, [f"{i:04d}" for i in range(40)])
        )
    assert outcomes.count("wrong") == LOCK_AFTER - 1  # the 5th wrong guess locks
    assert set(outcomes) <= {"wrong", "locked"}
    got = shares.get(link.id)
    assert got is not None and got.failed_total == LOCK_AFTER
    assert got.code_hash is not None and "9876" not in got.code_hash
    assert shares.try_code(link.id, "9876", now=time.time() + LOCK_S + 1).outcome == "ok"
    shares.close()


@pytest.mark.parametrize(
    "body",
    [
        {"code": "12"},
        {"code": "1234567"},
        {"code": 1234},
        {"code": "12a4"},
        {"scope": "everything"},
        {"audience": "public"},
        {"allow_download": "yes"},
        {"scope": "patient"},
        {"scope": "patient", "patient_id": "../x"},
    ],
)
async def test_bad_link_options_are_400(regional: Regional, body: dict[str, Any]) -> None:
    api = regional.api
    body = {"study_uid": str(regional.ct[0].StudyInstanceUID), **body}
    r = await api.client.post("/api/shares", json=body, headers=api.token())
    assert r.status == 400, await r.text()
    assert "error" in await r.json()


# -- scope: all of a patient's studies ----------------------------------------------------------


async def test_a_patient_link_opens_the_patients_studies_and_consented_ones_elsewhere(
    regional: Regional,
) -> None:
    api, ct_pid, mr_pid, mr_study = await _linked(regional)
    ct_study = str(regional.ct[0].StudyInstanceUID)
    share = await _share(api, scope="patient", patient_id=ct_pid, issuer=ISSUER)
    manifest = manifest_of((await _page(api, share["url"]))[1])
    assert [s["uid"] for s in manifest["studies"]] == [ct_study]
    # another hospital's study is outside the link until the patient consents to H1 reading it
    outside = await api.client.get(f"{manifest['base']}/studies/{mr_study}/manifest.json")
    assert outside.status == 404
    consent = await _grant(api, mr_pid)
    manifest = manifest_of((await _page(api, share["url"]))[1])
    assert {s["uid"] for s in manifest["studies"]} == {ct_study, mr_study}
    r = await api.client.get(f"{manifest['base']}/studies/{mr_study}/manifest.json")
    assert r.status == 200
    mr = await r.json()
    assert mr["uid"] == mr_study and mr["hospital"] == "H2" and len(mr["series"]) == 1
    slice_ = await api.client.get(_slice_url({"base": manifest["base"], "study": mr}))
    assert slice_.status == 200 and slice_.headers["Content-Type"] == "image/jpeg"
    await api.client.delete(f"/api/consents/{consent}", headers=api.token())  # H1, the grantee
    assert (await api.client.get(_slice_url({"base": manifest["base"], "study": mr}))).status == 404


async def test_a_patient_link_needs_a_patient_of_the_callers_hospital(regional: Regional) -> None:
    api = regional.api
    mr_pid = str(regional.mr_h2[0].PatientID)
    r = await api.client.post(
        "/api/shares",
        json={"scope": "patient", "patient_id": mr_pid, "issuer": ISSUER},
        headers=api.token(),
    )
    assert r.status == 404  # H1 holds no study of H2's patient
    r = await api.client.post(
        "/api/shares",
        json={"scope": "patient", "patient_id": mr_pid, "issuer": ISSUER, "hospital": "H2"},
        headers=api.token(),
    )
    assert r.status == 403
    r = await api.client.post(
        "/api/shares",
        json={"study_uid": str(regional.ct[0].StudyInstanceUID)},
        headers=api.token(role="auditor"),
    )
    assert r.status == 403


# -- slices and downloads -----------------------------------------------------------------------


async def test_slices_render_with_the_window_asked_and_only_from_the_links_studies(
    regional: Regional,
) -> None:
    api = regional.api
    share = await _share(api, study_uid=str(regional.ct[0].StudyInstanceUID))
    manifest = manifest_of((await _page(api, share["url"]))[1])
    url = _slice_url(manifest, series=1, image=1)
    plain = np.asarray(Image.open(io.BytesIO(await (await api.client.get(url)).read())))
    lung = await api.client.get(url + "?window=-600,1500")
    bone = await api.client.get(url + "?window=400,1800")
    assert lung.status == bone.status == 200
    lung_px = np.asarray(Image.open(io.BytesIO(await lung.read())))
    bone_px = np.asarray(Image.open(io.BytesIO(await bone.read())))
    assert lung_px.shape == plain.shape == (512, 512)
    assert np.abs(lung_px.astype(int) - bone_px.astype(int)).mean() > 5
    assert (await api.client.get(url + "?window=lung")).status == 400
    assert (await api.client.get(url + "?download=1")).status == 403  # downloads not allowed
    assert (await api.client.get(url.replace("/frames/1/", "/frames/2/"))).status == 404
    # an instance of another study, through this link
    mr = regional.mr_h2[0]
    other = re.sub(
        r"/series/[^/]+/instances/[^/]+/",
        f"/series/{mr.SeriesInstanceUID}/instances/{mr.SOPInstanceUID}/",
        url,
    )
    assert (await api.client.get(other)).status == 404
    zip_url = f"{manifest['base']}/studies/{manifest['study']['uid']}/download.zip"
    assert (await api.client.get(zip_url)).status == 403


async def test_a_link_that_allows_downloads_gives_a_jpeg_and_the_studys_dicom_files(
    regional: Regional,
) -> None:
    api = regional.api
    share = await _share(api, study_uid=str(regional.ct[0].StudyInstanceUID), allow_download=True)
    manifest = manifest_of((await _page(api, share["url"]))[1])
    assert manifest["download"] is True
    r = await api.client.get(_slice_url(manifest, series=1) + "?window=40,400&download=1")
    assert r.status == 200 and r.headers["Content-Disposition"].startswith("attachment;")
    assert (await r.read())[:3] == b"\xff\xd8\xff"
    r = await api.client.get(f"{manifest['base']}/studies/{manifest['study']['uid']}/download.zip")
    assert r.status == 200 and r.headers["Content-Type"] == "application/zip"
    with zipfile.ZipFile(io.BytesIO(await r.read())) as zf:
        assert zf.testzip() is None
        names = zf.namelist()
        assert names[0] == "DICOMDIR"  # a File-set a CD viewer opens (PS3.10 file IDs)
        assert all(re.fullmatch(r"PT\d{6}/ST\d{6}/SE\d{6}/IM\d{6}", n) for n in names[1:])
        got = sorted(zf.read(n) for n in names[1:])
    assert got == sorted(regional.ct_bytes)  # the stored files, byte for byte
    # a streamed response is audited once its last byte is sent: wait for the record
    for _ in range(100):
        events = [e for e in api.audit.iter_events() if e.resource.endswith("download.zip")]
        if events:
            break
        await asyncio.sleep(0.05)
    assert events and events[-1].actor == f"share:{share['id']}" and events[-1].status == 200


async def test_a_report_is_shown_beside_the_images(regional: Regional) -> None:
    api = regional.api
    study = str(regional.ct[0].StudyInstanceUID)
    r = await api.client.post(
        f"/api/studies/{study}/reports?status=final&mutual_recognition=true",
        data="两肺未见明显异常。No abnormality.".encode(),
        headers={
            **api.token(role="radiologist"),
            "Content-Type": "text/plain; charset=utf-8",
            "X-Report-Status": "final",
            "X-Mutual-Recognition": "true",
        },
    )
    assert r.status == 201, await r.text()
    share = await _share(api, study_uid=study)
    manifest = manifest_of((await _page(api, share["url"]))[1])
    (report,) = manifest["study"]["reports"]
    assert report["text"] == "两肺未见明显异常。No abnormality." and report["mutual_recognition"]
    body = await api.client.get(report["url"])
    assert body.status == 200 and "两肺" in await body.text()


def test_a_link_fits_a_small_qr_code_without_losing_entropy() -> None:
    from viewer_api.auth import TokenSigner, new_link_id

    url = f"https://film.example-region.cn/film/{TokenSigner(b'k' * 32).share_token(new_link_id())}"
    assert int(segno.make(url, error="m").version) <= 6  # 41x41 modules: prints at 2 cm
    assert len(new_link_id()) == 22  # 128 random bits


# -- the patient's own link ---------------------------------------------------------------------


async def test_the_patient_passes_the_study_to_a_doctor_and_can_take_it_back(
    regional: Regional,
) -> None:
    api = regional.api
    study = str(regional.ct[0].StudyInstanceUID)
    mine = await _share(api, study_uid=study, ttl_hours=48, allow_download=True)
    base = f"/film/{mine['token']}"
    r = await api.client.post(f"{base}/api/links", json={"ttl_hours": 24, "code": "auto"})
    assert r.status == 201, await r.text()
    doctor = await r.json()
    assert doctor["audience"] == "doctor" and re.fullmatch(r"\d{6}", doctor["code"])
    assert doctor["allow_download"] is False
    qr = await api.client.get(doctor["qr_svg"])
    assert qr.status == 200 and qr.headers["Content-Type"] == "image/svg+xml"
    assert (await _code(api, doctor["url"], doctor["code"])).status == 303
    status, page = await _page(api, doctor["url"])
    assert status == 200 and manifest_of(page)["self_service"] is False
    dbase = f"/film/{doctor['token']}"
    # a doctor's link does nothing of the patient's
    assert (await api.client.post(f"{dbase}/api/links", json={})).status == 403
    assert (await api.client.get(f"{dbase}/api/history")).status == 403
    assert (await api.client.get(f"{dbase}/api/consents")).status == 403
    # never longer than the patient's own link
    r = await api.client.post(f"{base}/api/links", json={"ttl_hours": 24 * 30})
    assert r.status == 400
    listed = await (await api.client.get(f"{base}/api/links")).json()
    assert [x["id"] for x in listed] == [doctor["id"]] and "code" not in listed[0]
    # the patient revokes it
    assert (await api.client.delete(f"{base}/api/links/{doctor['id']}")).status == 204
    status, page = await _page(api, doctor["url"])
    assert status == 403 and "revoked" in page
    # and it dies with the patient's link
    again = await (await api.client.post(f"{base}/api/links", json={})).json()
    assert (await _page(api, again["url"]))[0] == 200
    api.shares.revoke(mine["id"])
    status, page = await _page(api, again["url"])
    assert status == 403 and "revoked" in page


async def test_a_doctors_link_allows_downloads_only_if_the_patients_does(
    regional: Regional,
) -> None:
    api = regional.api
    mine = await _share(api, study_uid=str(regional.ct[0].StudyInstanceUID))
    r = await api.client.post(f"/film/{mine['token']}/api/links", json={"allow_download": True})
    assert r.status == 403


async def test_the_patient_sees_who_opened_their_studies_and_revokes_a_consent(
    regional: Regional,
) -> None:
    api, _, mr_pid, mr_study = await _linked(regional)
    consent = await _grant(api, mr_pid)
    # a clinician at H1 reads the MR at H2 under the consent
    r = await api.client.get(f"/dicom-web/studies/{mr_study}/metadata", headers=api.token())
    assert r.status == 200
    # H2 gives the patient a link to the MR study
    r = await api.client.post(
        "/api/shares", json={"study_uid": mr_study}, headers=api.token(hospital="H2")
    )
    mine = await r.json()
    base = f"/film/{mine['token']}"
    history = await (await api.client.get(f"{base}/api/history")).json()
    reader = [h for h in history if h["hospital"] == "H1"]
    assert reader and reader[0]["who"] == "staff" and reader[0]["role"] == "clinician"
    grants = await (await api.client.get(f"{base}/api/consents")).json()
    assert [g["id"] for g in grants] == [consent] and grants[0]["active"]
    r = await api.client.post(f"{base}/api/consents/{consent}/revoke")
    assert r.status == 200
    r = await api.client.get(f"/dicom-web/studies/{mr_study}/metadata", headers=api.token())
    assert r.status == 404
    assert (await api.client.post(f"{base}/api/consents/nope/revoke")).status == 404


async def test_a_cine_is_one_slice_per_frame_and_big_images_come_scaled_to_a_phone(
    regional: Regional, tmp_path: Path
) -> None:
    from cloudfilm.synth import synthesize_study
    from image_store.ingest import LocalIngest

    api = regional.api
    (us,) = synthesize_study(tmp_path / "us", modality="US", images=1, frames=3, seed=5)
    (dx,) = synthesize_study(tmp_path / "dx", modality="DX", images=1, seed=6)
    ingest = LocalIngest(api.store._inner, api.index._inner)
    assert all(o.ok for o in ingest.ingest("H1", [us.read_bytes(), dx.read_bytes()]))
    cine = pydicom.dcmread(us, stop_before_pixels=True)
    share = await _share(api, study_uid=str(cine.StudyInstanceUID))
    manifest = manifest_of((await _page(api, share["url"]))[1])
    (series,) = manifest["study"]["series"]
    assert series["images"] == [[cine.SOPInstanceUID, n] for n in (1, 2, 3)]
    frames = []
    for i in range(3):
        r = await api.client.get(_slice_url(manifest, image=i))
        assert r.status == 200
        frames.append(np.asarray(Image.open(io.BytesIO(await r.read()))))
    assert not np.array_equal(frames[0], frames[2])  # the cine moves
    past = _slice_url(manifest, image=2).replace("/frames/3/", "/frames/4/")
    assert (await api.client.get(past)).status == 404

    radiograph = pydicom.dcmread(dx, stop_before_pixels=True)
    share = await _share(api, study_uid=str(radiograph.StudyInstanceUID), allow_download=True)
    manifest = manifest_of((await _page(api, share["url"]))[1])
    url = _slice_url(manifest)
    shown = Image.open(io.BytesIO(await (await api.client.get(url)).read()))
    assert max(shown.size) == 1024  # 2500 x 2048 stored: scaled for a phone
    full = Image.open(io.BytesIO(await (await api.client.get(url + "?download=1")).read()))
    assert full.size == (radiograph.Columns, radiograph.Rows)

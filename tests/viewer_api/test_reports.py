"""Diagnostic reports beside the images: who writes them, who reads them, what they may be."""

from __future__ import annotations

from tests.viewer_api.conftest import Regional

TEXT = "胸部CT平扫：双肺未见明显异常。\nNo acute findings.".encode()
PDF = b"%PDF-1.4\n1 0 obj<<>>endobj\ntrailer<<>>\n%%EOF\n"


async def test_a_radiologist_attaches_a_final_report_that_readers_of_the_study_see(
    regional: Regional,
) -> None:
    api, ct = regional.api, regional.ct[0]
    url = f"/api/studies/{ct.StudyInstanceUID}/reports"
    r = await api.client.post(
        f"{url}?status=final&mutual_recognition=true&title=CT%20chest",
        data=TEXT,
        headers={**api.token(role="radiologist"), "Content-Type": "text/plain; charset=utf-8"},
    )
    assert r.status == 201, await r.text()
    created = await r.json()
    assert created["mutual_recognition"] is True and created["status"] == "final"
    listed = await (await api.client.get(url, headers=api.token())).json()
    assert [x["id"] for x in listed] == [created["id"]]
    r = await api.client.get(f"/api/reports/{created['id']}", headers=api.token())
    assert r.status == 200 and r.headers["Content-Type"].startswith("text/plain")
    assert await r.read() == TEXT
    r = await api.client.get(f"/api/reports/{created['id']}", headers=api.token(hospital="H2"))
    assert r.status == 404  # as for an unknown study


async def test_a_pdf_report_is_kept_byte_for_byte(regional: Regional) -> None:
    api, ct = regional.api, regional.ct[0]
    r = await api.client.post(
        f"/api/studies/{ct.StudyInstanceUID}/reports?status=preliminary",
        data=PDF,
        headers={**api.token(role="radiologist"), "Content-Type": "application/pdf"},
    )
    assert r.status == 201
    got = await api.client.get(f"/api/reports/{(await r.json())['id']}", headers=api.token())
    assert got.headers["Content-Type"] == "application/pdf" and await got.read() == PDF


async def test_only_the_study_hospitals_radiologists_write_and_bad_bodies_are_400(
    regional: Regional,
) -> None:
    api, ct = regional.api, regional.ct[0]
    url = f"/api/studies/{ct.StudyInstanceUID}/reports"
    text = {"Content-Type": "text/plain"}
    r = await api.client.post(url, data=TEXT, headers={**api.token(), **text})
    assert r.status == 403  # a clinician
    r = await api.client.post(
        url, data=TEXT, headers={**api.token(hospital="H2", role="radiologist"), **text}
    )
    assert r.status == 404  # another hospital's radiologist: as for an unknown study
    radiologist = api.token(role="radiologist")
    for data, ctype, query in (
        (b"\xff\xfe bad", "text/plain", ""),
        (b"not a pdf", "application/pdf", ""),
        (TEXT, "image/png", ""),
        (TEXT, "text/plain", "?status=draft"),
        (b"", "text/plain", ""),
    ):
        r = await api.client.post(
            url + query, data=data, headers={**radiologist, "Content-Type": ctype}
        )
        assert r.status == 400, (data[:10], ctype, query)
        assert (await r.json())["status"] == 400


async def test_one_click_shows_the_report_status(regional: Regional) -> None:
    api, ct = regional.api, regional.ct[0]
    before = await (
        await api.client.get(f"/patients/{ct.PatientID}/studies", headers=api.token())
    ).json()
    assert before["studies"][0]["report_status"] == "none"
    await api.client.post(
        f"/api/studies/{ct.StudyInstanceUID}/reports?mutual_recognition=true",
        data=TEXT,
        headers={**api.token(role="radiologist"), "Content-Type": "text/plain"},
    )
    after = await (
        await api.client.get(f"/patients/{ct.PatientID}/studies", headers=api.token())
    ).json()
    (study,) = after["studies"]
    assert study["report_status"] == "final" and study["mutual_recognition"] is True

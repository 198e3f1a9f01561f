"""One-click retrieval across hospitals under consent or break-glass, person links, and the
audit of who opened a patient's studies."""

from __future__ import annotations

from typing import Any

from tests.viewer_api.conftest import Api, Regional

RESIDENT_ID = "11010519491231002X"
ISSUER = "CLOUDFILM-SYNTH"
BREAK_GLASS = {"X-Break-Glass-Reason": "unconscious patient in the emergency room"}


async def _link(api: Api, hospital: str, patient_id: str) -> None:
    r = await api.client.post(
        "/api/patients/links",
        json={
            "hospital": hospital,
            "patient_id": patient_id,
            "issuer": ISSUER,
            "id_issuer": "CN_RESIDENT_ID",
            "id": RESIDENT_ID,
        },
        headers=api.token(role="admin"),
    )
    assert r.status == 201, await r.text()


async def _linked(regional: Regional) -> tuple[Api, str, str, str]:
    """CT at H1 and MR at H2 linked to one person: (api, H1 patient id, H2 patient id, MR
    study)."""
    api = regional.api
    ct_pid, mr_pid = str(regional.ct[0].PatientID), str(regional.mr_h2[0].PatientID)
    await _link(api, "H1", ct_pid)
    await _link(api, "H2", mr_pid)
    return api, ct_pid, mr_pid, str(regional.mr_h2[0].StudyInstanceUID)


async def _one_click(api: Api, pid: str, **headers: str) -> dict[str, Any]:
    r = await api.client.get(f"/patients/{pid}/studies", headers={**api.token(), **headers})
    assert r.status == 200, await r.text()
    body: dict[str, Any] = await r.json()
    return body


async def _grant(api: Api, mr_pid: str, **extra: object) -> str:
    r = await api.client.post(
        "/api/consents",
        json={
            "patient": {"hospital": "H2", "patient_id": mr_pid, "issuer": ISSUER},
            "grantee_hospital": "H1",
            **extra,
        },
        headers=api.token(hospital="H2"),
    )
    assert r.status == 201, await r.text()
    consent_id: str = (await r.json())["id"]
    return consent_id


async def test_without_consent_other_hospitals_studies_are_withheld(regional: Regional) -> None:
    api, ct_pid, _, mr_study = await _linked(regional)
    body = await _one_click(api, ct_pid)
    assert body["linked"] is True
    assert [s["hospital"] for s in body["studies"]] == ["H1"]
    assert body["studies"][0]["access"] == "own"
    assert body["withheld"] == 1
    r = await api.client.get(f"/dicom-web/studies/{mr_study}/metadata", headers=api.token())
    assert r.status == 403
    assert "consent" in (await r.json())["error"]


async def test_a_consent_grant_opens_the_persons_studies_in_one_click(regional: Regional) -> None:
    api, ct_pid, mr_pid, mr_study = await _linked(regional)
    consent_id = await _grant(api, mr_pid)
    body = await _one_click(api, ct_pid)
    assert {s["hospital"]: s["access"] for s in body["studies"]} == {"H1": "own", "H2": "consent"}
    assert body["withheld"] == 0
    dates = [s["study_date"] for s in body["studies"]]
    assert dates == sorted(dates, reverse=True)
    mr = next(s for s in body["studies"] if s["hospital"] == "H2")
    assert mr["thumbnail_url"].endswith(f"/studies/{mr_study}/thumbnail")
    assert mr["modalities"] == ["MR"] and mr["body_parts"]
    # the grant opens the study for DICOMweb too, and the audit says why
    for url in (f"/dicom-web/studies/{mr_study}/metadata", f"/dicom-web/studies/{mr_study}/series"):
        r = await api.client.get(url, headers=api.token())
        assert r.status == 200, url
    events = [e for e in api.audit.iter_events() if mr_study in e.resource and e.status == 200]
    assert events and all(e.via == f"consent:{consent_id}" for e in events)
    # revoked: closed again
    r = await api.client.delete(f"/api/consents/{consent_id}", headers=api.token(hospital="H2"))
    assert r.status == 200
    r = await api.client.get(f"/dicom-web/studies/{mr_study}/metadata", headers=api.token())
    assert r.status == 403


async def test_a_grant_for_one_study_or_one_clinician_covers_only_that(
    regional: Regional,
) -> None:
    api, ct_pid, mr_pid, mr_study = await _linked(regional)
    await _grant(api, mr_pid, study_uid="1.2.3.4", grantee_subject="someone-else")
    body = await _one_click(api, ct_pid)
    assert body["withheld"] == 1
    r = await api.client.get(f"/dicom-web/studies/{mr_study}/metadata", headers=api.token())
    assert r.status == 403


async def test_break_glass_needs_a_reason_and_is_flagged_in_the_audit(regional: Regional) -> None:
    api, ct_pid, _, mr_study = await _linked(regional)
    url = f"/dicom-web/studies/{mr_study}/metadata"
    r = await api.client.get(url, headers={**api.token(), "X-Break-Glass-Reason": "urgent"})
    assert r.status == 400
    r = await api.client.get(url, headers={**api.token(), **BREAK_GLASS})
    assert r.status == 200
    (event,) = [e for e in api.audit.iter_events() if e.resource.startswith(url) and e.via]
    assert event.via.startswith("break-glass:") and "emergency" in event.via
    body = await _one_click(api, ct_pid, **BREAK_GLASS)
    assert {s["access"] for s in body["studies"]} == {"own", "break-glass"}


async def test_the_patients_hospital_sees_who_opened_the_studies(regional: Regional) -> None:
    api, _, mr_pid, mr_study = await _linked(regional)
    await api.client.get(
        f"/dicom-web/studies/{mr_study}/metadata", headers={**api.token(), **BREAK_GLASS}
    )
    r = await api.client.get(
        f"/api/patients/{mr_pid}/access-history?hospital=H2", headers=api.token(hospital="H2")
    )
    assert r.status == 200
    history = await r.json()
    assert any(h["hospital"] == "H1" and h["via"].startswith("break-glass") for h in history)
    r = await api.client.get(
        f"/api/patients/{mr_pid}/access-history?hospital=H2", headers=api.token(hospital="H1")
    )
    assert r.status == 403


async def test_auditors_read_no_patient_data(regional: Regional) -> None:
    api, ct_pid, _, _ = await _linked(regional)
    auditor = api.token(role="auditor")
    study = regional.ct[0].StudyInstanceUID
    for url in (f"/dicom-web/studies/{study}/metadata", f"/patients/{ct_pid}/studies"):
        r = await api.client.get(url, headers=auditor)
        assert r.status == 403, url
    r = await api.client.get("/dicom-web/studies", headers=auditor)
    assert r.status == 200 and await r.json() == []


async def test_only_admins_link_and_bad_identifiers_are_400(regional: Regional) -> None:
    api = regional.api
    body = {
        "hospital": "H1",
        "patient_id": "P1",
        "issuer": ISSUER,
        "id_issuer": "CN_RESIDENT_ID",
        "id": RESIDENT_ID,
    }
    r = await api.client.post("/api/patients/links", json=body, headers=api.token())
    assert r.status == 403
    for bad in ({"id": "12"}, {"id_issuer": "HOSPITAL_MRN"}, {"patient_id": "../x"}):
        r = await api.client.post(
            "/api/patients/links", json={**body, **bad}, headers=api.token(role="admin")
        )
        assert r.status == 400, bad
        assert (await r.json())["status"] == 400
    r = await api.client.post(
        "/api/patients/links", data=b"not json", headers=api.token(role="admin")
    )
    assert r.status == 400


async def test_merging_two_persons_moves_every_link(regional: Regional) -> None:
    api = regional.api
    ct_pid, mr_pid = str(regional.ct[0].PatientID), str(regional.mr_h2[0].PatientID)
    await _link(api, "H1", ct_pid)
    r = await api.client.post(
        "/api/patients/links",
        json={
            "hospital": "H2",
            "patient_id": mr_pid,
            "issuer": ISSUER,
            "id_issuer": "CN_HEALTH_CARD",
            "id": "HC12345678",
        },
        headers=api.token(role="admin"),
    )
    assert r.status == 201
    admin = api.token(role="admin")
    assert len((await _one_click_as(api, ct_pid, admin))["studies"]) == 1
    r = await api.client.post(
        "/api/patients/merge",
        json={
            "from": {"hospital": "H2", "patient_id": mr_pid, "issuer": ISSUER},
            "into": {"hospital": "H1", "patient_id": ct_pid, "issuer": ISSUER},
        },
        headers=admin,
    )
    assert r.status == 200 and (await r.json())["moved"] == 1
    assert len((await _one_click_as(api, ct_pid, admin))["studies"]) == 2


async def _one_click_as(api: Api, pid: str, headers: dict[str, str]) -> dict[str, Any]:
    r = await api.client.get(f"/patients/{pid}/studies?hospital=H1", headers=headers)
    assert r.status == 200, await r.text()
    body: dict[str, Any] = await r.json()
    return body


async def test_one_click_needs_a_token(regional: Regional) -> None:
    r = await regional.api.client.get("/patients/P1/studies")
    assert r.status == 401

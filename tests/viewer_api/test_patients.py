"""One-click retrieval across hospitals under consent or break-glass, person links, and the
audit of who opened a patient's studies."""

from __future__ import annotations

from typing import Any

from image_store.records import PatientRef
from tests.viewer_api.conftest import Api, Regional
from viewer_api.auth import Role

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


async def patient_link(api: Api, hospital: str, patient_id: str) -> str:
    """The patient's own cloud-film link to all their studies (made by their hospital): the
    base path ``/film/<token>`` of its patient API."""
    r = await api.client.post(
        "/api/shares",
        json={"scope": "patient", "patient_id": patient_id, "issuer": ISSUER},
        headers=api.token(hospital=hospital),
    )
    assert r.status == 201, await r.text()
    return f"/film/{(await r.json())['token']}"


async def register_hospitals(api: Api, *hospitals: str, named: bool = True) -> None:
    """Register hospitals in the region (by their Chinese names, or, ``named=False``, by
    their ids when they are not registered yet)."""
    admin = api.token(role="admin")
    have = {
        h["id"] for h in await (await api.client.get("/api/admin/hospitals", headers=admin)).json()
    }
    for h in hospitals:
        if not named and h in have:
            continue
        name = HOSPITAL_NAMES.get(h, h) if named else h
        r = await api.client.post(
            "/api/admin/hospitals", json={"id": h, "name": name}, headers=admin
        )
        assert r.status == 201, await r.text()


HOSPITAL_NAMES = {"H1": "市第一人民医院", "H2": "市中医院", "H3": "第三医院"}


async def _grant(api: Api, mr_pid: str, hospital: str = "H1", **extra: object) -> str:
    """The patient (of the MR at H2) grants ``hospital`` consent on their own link."""
    await register_hospitals(api, hospital, named=False)
    base = await patient_link(api, "H2", mr_pid)
    r = await api.client.post(f"{base}/api/consents", json={"hospital": hospital, **extra})
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
    assert r.status == 404
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
    # revoked by the hospital it was granted to: closed again
    r = await api.client.delete(f"/api/consents/{consent_id}", headers=api.token())
    assert r.status == 200
    r = await api.client.get(f"/dicom-web/studies/{mr_study}/metadata", headers=api.token())
    assert r.status == 404


async def test_a_grant_for_one_study_or_one_clinician_covers_only_that(
    regional: Regional,
) -> None:
    api, ct_pid, mr_pid, mr_study = await _linked(regional)
    ct_study = str(regional.ct[0].StudyInstanceUID)
    await _grant(api, mr_pid, study_uid=ct_study)
    await _grant(api, mr_pid, study_uid=mr_study, subject="someone-else")
    body = await _one_click(api, ct_pid)
    assert body["withheld"] == 1
    r = await api.client.get(f"/dicom-web/studies/{mr_study}/metadata", headers=api.token())
    assert r.status == 404


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


async def test_break_glass_through_one_click_is_flagged_in_the_audit(regional: Regional) -> None:
    api, ct_pid, _, mr_study = await _linked(regional)
    r = await api.client.get(
        f"/patients/{ct_pid}/studies", headers={**api.token(), "X-Break-Glass-Reason": "short"}
    )
    assert r.status == 400
    await _one_click(api, ct_pid, **BREAK_GLASS)
    calls = [e for e in api.audit.iter_events() if e.resource.startswith("/patients/")]
    call = next(e for e in calls if e.resource == f"/patients/{ct_pid}/studies" and e.status == 200)
    assert call.via == "break-glass:" + BREAK_GLASS["X-Break-Glass-Reason"]
    shown = [e for e in calls if e.resource.endswith(f"/studies/{mr_study}")]
    assert len(shown) == 1 and shown[0].via.startswith("break-glass:")
    # without break-glass, the same call is not flagged
    await _one_click(api, ct_pid)
    last = [e for e in api.audit.iter_events() if e.resource == f"/patients/{ct_pid}/studies"]
    assert last[-1].via == ""


async def test_auditors_list_break_glass_reads_for_review(regional: Regional) -> None:
    api, ct_pid, _, mr_study = await _linked(regional)
    await register_hospitals(api, "H1", "H2")
    await _one_click(api, ct_pid, **BREAK_GLASS)
    await api.client.get(
        f"/dicom-web/studies/{mr_study}/metadata", headers={**api.token(), **BREAK_GLASS}
    )
    for role in ("clinician", "radiologist"):
        r = await api.client.get("/api/audit/break-glass", headers=api.token(role=role))
        assert r.status == 403, role
    r = await api.client.get("/api/audit/break-glass", headers=api.token(role="auditor"))
    assert r.status == 200
    reads = [x for x in await r.json() if x["study_uid"] == mr_study]
    assert len(reads) == 2 and all(x["status"] == 200 for x in reads)
    for x in reads:
        assert x["hospital"] == "H1" and x["hospital_name"] == HOSPITAL_NAMES["H1"]
        assert x["study_hospital"] == "H2" and x["role"] == "clinician"
        assert x["reason"] == BREAK_GLASS["X-Break-Glass-Reason"] and x["ts"] > 0
    r = await api.client.get("/api/audit/break-glass", headers=api.token(role="admin"))
    assert r.status == 200


async def test_staff_cannot_grant_consent_themselves(regional: Regional) -> None:
    api, ct_pid, mr_pid, mr_study = await _linked(regional)
    attempts: tuple[tuple[str, Role, str], ...] = (
        ("H2", "clinician", mr_pid),
        ("H1", "clinician", ct_pid),
        ("H1", "radiologist", ct_pid),
        ("H1", "admin", ct_pid),
    )
    for hospital, role, pid in attempts:
        r = await api.client.post(
            "/api/consents",
            json={
                "patient": {"hospital": hospital, "patient_id": pid, "issuer": ISSUER},
                "grantee_hospital": "H1",
            },
            headers=api.token(hospital=hospital, role=role),
        )
        assert r.status == 403, (hospital, role)
        assert "consent-requests" in (await r.json())["error"]
    r = await api.client.get(f"/dicom-web/studies/{mr_study}/metadata", headers=api.token())
    assert r.status == 404


async def test_held_identity_links_are_listed_and_decided_by_admins(regional: Regional) -> None:
    api, _, mr_pid, _ = await _linked(regional)
    ref = PatientRef("H2", mr_pid, ISSUER)
    link = api.index.person_link(ref)
    held = api.index.hold_link(ref, "e" * 64, link.person_key, "gateway", "test reason")
    for role in ("clinician", "radiologist", "auditor"):
        r = await api.client.get("/api/admin/identity-reviews", headers=api.token(role=role))
        assert r.status == 403, role
        r = await api.client.post(
            f"/api/admin/identity-reviews/{held.id}/approve", headers=api.token(role=role)
        )
        assert r.status == 403, role
    admin = api.token(role="admin")
    (listed,) = await (await api.client.get("/api/admin/identity-reviews", headers=admin)).json()
    assert listed["id"] == held.id and listed["reason"] == "test reason"
    assert listed["linked_now"] is True and listed["state"] == "pending"
    r = await api.client.post(f"/api/admin/identity-reviews/{held.id}/reject", headers=admin)
    assert r.status == 200 and (await r.json())["state"] == "rejected"
    assert api.index.person_link(ref).person_key == link.person_key
    r = await api.client.post(f"/api/admin/identity-reviews/{held.id}/approve", headers=admin)
    assert r.status == 404
    again = api.index.hold_link(ref, "e" * 64, link.person_key, "gateway", "test reason")
    r = await api.client.post(f"/api/admin/identity-reviews/{again.id}/approve", headers=admin)
    assert r.status == 200
    assert api.index.person_link(ref).person_key == "e" * 64
    assert await (await api.client.get("/api/admin/identity-reviews", headers=admin)).json() == []
    decided = [e for e in api.audit.iter_events() if "/identity-reviews/" in e.resource]
    assert [e.status for e in decided if e.role == "admin"] == [200, 404, 200]


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
    # refused by role, before any lookup: the same answer for a study that exists and one that
    # does not
    r = await api.client.get(f"/dicom-web/studies/{study}/metadata", headers=auditor)
    unknown = await api.client.get("/dicom-web/studies/1.2.3.999/metadata", headers=auditor)
    assert r.status == unknown.status == 403
    assert await r.json() == await unknown.json()
    r = await api.client.get(f"/patients/{ct_pid}/studies", headers=auditor)
    assert r.status == 403
    r = await api.client.get("/dicom-web/studies", headers=auditor)
    assert r.status == 403


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

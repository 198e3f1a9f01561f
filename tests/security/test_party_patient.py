"""The patient, on their own cloud-film link: they alone give consent (to a registered
hospital, one clinician, one study), decide staff's requests, show one-time codes, revoke, and
see every read of their studies, break-glass ones highlighted."""

# ruff: noqa: F811  (the API fixtures are imported from tests.viewer_api.conftest)

from __future__ import annotations

from typing import Any

from tests.viewer_api.conftest import (  # noqa: F401  (fixtures)
    Api,
    Regional,
    loaded,
    regional,
    synth_studies,
)
from tests.viewer_api.test_patients import (
    BREAK_GLASS,
    HOSPITAL_NAMES,
    ISSUER,
    _linked,
    patient_link,
    register_hospitals,
)

MR_URL = "/dicom-web/studies/{uid}/metadata"


async def _get(api: Api, url: str) -> Any:
    r = await api.client.get(url)
    assert r.status == 200, await r.text()
    return await r.json()


async def test_the_patient_grants_a_registered_hospital_from_their_own_link(
    regional: Regional,
) -> None:
    api, _, mr_pid, mr_study = await _linked(regional)
    await register_hospitals(api, "H1", "H2")
    base = await patient_link(api, "H2", mr_pid)
    hospitals = await _get(api, f"{base}/api/hospitals")
    assert {"id": "H1", "name": HOSPITAL_NAMES["H1"]} in hospitals
    for bad in (
        {"hospital": "H9"},  # not registered
        {"hospital": "H1", "ttl_hours": 0},
        {"hospital": "H1", "subject": "a b"},
        {"hospital": "H1", "study_uid": "x"},
    ):
        r = await api.client.post(f"{base}/api/consents", json=bad)
        assert r.status == 400, bad
    r = await api.client.post(
        f"{base}/api/consents", json={"hospital": "H1", "study_uid": "1.2.3.4"}
    )
    assert r.status == 404  # not one of the patient's studies
    r = await api.client.post(
        f"{base}/api/consents", json={"hospital": "H1", "study_uid": mr_study, "ttl_hours": 48}
    )
    assert r.status == 201, await r.text()
    grant = await r.json()
    assert grant["grantee_hospital"] == "H1" and grant["hospital_name"] == HOSPITAL_NAMES["H1"]
    assert grant["created_by"].startswith("patient:share:")
    assert (await api.client.get(MR_URL.format(uid=mr_study), headers=api.token())).status == 200
    mine = await _get(api, f"{base}/api/consents")
    assert [(c["id"], c["hospital_name"]) for c in mine] == [(grant["id"], "市第一人民医院")]
    r = await api.client.post(f"{base}/api/consents/{grant['id']}/revoke")
    assert r.status == 200
    assert (await api.client.get(MR_URL.format(uid=mr_study), headers=api.token())).status == 404


async def test_the_patient_approves_or_declines_staffs_requests(regional: Regional) -> None:
    api, ct_pid, mr_pid, mr_study = await _linked(regional)
    await register_hospitals(api, "H1", "H2")
    ids = []
    for _ in range(2):
        r = await api.client.post(
            "/api/consent-requests",
            json={"patient": {"patient_id": ct_pid, "issuer": ISSUER}, "only_me": True},
            headers=api.token(),
        )
        assert r.status == 201
        ids.append((await r.json())["id"])
    base = await patient_link(api, "H2", mr_pid)
    pending = await _get(api, f"{base}/api/consent-requests")
    assert {p["id"] for p in pending} == set(ids)
    assert all(p["hospital_name"] == HOSPITAL_NAMES["H1"] for p in pending)
    assert all(p["state"] == "pending" and p["subject"] == "t.clinician.H1" for p in pending)
    r = await api.client.post(f"{base}/api/consent-requests/{ids[0]}/decline")
    assert r.status == 200 and (await r.json())["state"] == "declined"
    assert (await api.client.get(MR_URL.format(uid=mr_study), headers=api.token())).status == 404
    r = await api.client.post(f"{base}/api/consent-requests/{ids[0]}/approve")
    assert r.status == 404  # decided already
    r = await api.client.post(f"{base}/api/consent-requests/{ids[1]}/approve")
    assert r.status == 200 and (await r.json())["consent_id"]
    assert (await api.client.get(MR_URL.format(uid=mr_study), headers=api.token())).status == 200
    other = api.token(role="radiologist")  # the request was for that clinician alone
    assert (await api.client.get(MR_URL.format(uid=mr_study), headers=other)).status == 404
    r = await api.client.post(f"{base}/api/consent-requests/{'x' * 22}/approve")
    assert r.status == 404


async def test_the_patient_sees_a_break_glass_one_click_with_the_hospital_and_reason(
    regional: Regional,
) -> None:
    api, ct_pid, mr_pid, mr_study = await _linked(regional)
    await register_hospitals(api, "H1", "H2")
    r = await api.client.get(f"/patients/{ct_pid}/studies", headers={**api.token(), **BREAK_GLASS})
    assert r.status == 200
    # on the link of H2, where the MR is, and on the link of H1, which cannot open the MR
    for hospital, pid in (("H2", mr_pid), ("H1", ct_pid)):
        base = await patient_link(api, hospital, pid)
        history = await _get(api, f"{base}/api/history")
        (read,) = [h for h in history if h["study_uid"] == mr_study and h["who"] == "staff"]
        assert read["break_glass"] is True, hospital
        assert read["hospital"] == "H1" and read["hospital_name"] == HOSPITAL_NAMES["H1"]
        assert read["reason"] == BREAK_GLASS["X-Break-Glass-Reason"]


async def test_the_patients_code_replaces_the_last_one(regional: Regional) -> None:
    api, ct_pid, mr_pid, _ = await _linked(regional)
    await register_hospitals(api, "H1", "H2")
    base = await patient_link(api, "H2", mr_pid)
    first = await (await api.client.post(f"{base}/api/consent-code", json={})).json()
    second = await (await api.client.post(f"{base}/api/consent-code", json={})).json()
    assert second["valid_s"] == 600 and len(second["code"]) == 8
    body = {"patient": {"patient_id": ct_pid, "issuer": ISSUER}}
    if first["code"] != second["code"]:
        r = await api.client.post(
            "/api/consents", json={**body, "code": first["code"]}, headers=api.token()
        )
        assert r.status == 403
    r = await api.client.post(
        "/api/consents", json={**body, "code": second["code"]}, headers=api.token()
    )
    assert r.status == 201


async def test_a_patient_not_linked_by_a_trusted_source_cannot_give_consent(
    regional: Regional,
) -> None:
    api = regional.api
    await register_hospitals(api, "H1", "H2")
    mr_pid = str(regional.mr_h2[0].PatientID)
    base = await patient_link(api, "H2", mr_pid)
    for url, body in (
        (f"{base}/api/consents", {"hospital": "H1"}),
        (f"{base}/api/consent-code", {}),
    ):
        r = await api.client.post(url, json=body)
        assert r.status == 403, url
    assert (await api.client.get(f"{base}/api/consent-requests")).status == 403


async def test_the_page_offers_consent_only_on_the_patients_own_link(regional: Regional) -> None:
    api, ct_pid, mr_pid, mr_study = await _linked(regional)
    await register_hospitals(api, "H1", "H2")
    r = await api.client.post(
        "/api/consent-requests",
        json={"patient": {"patient_id": ct_pid, "issuer": ISSUER}},
        headers=api.token(),
    )
    assert r.status == 201
    own = await patient_link(api, "H2", mr_pid)
    assert await _get(api, f"{own}/api/me") == {"may_give_consent": True, "pending_requests": 1}
    r = await api.client.post(
        "/api/shares", json={"study_uid": mr_study}, headers=api.token(hospital="H2")
    )
    one = f"/film/{(await r.json())['token']}"
    assert await _get(api, f"{one}/api/me") == {"may_give_consent": False, "pending_requests": 0}
    r = await api.client.post(f"{own}/api/links", json={"ttl_hours": 24})
    doctor = f"/film/{(await r.json())['token']}"
    assert (await api.client.get(f"{doctor}/api/me")).status == 403

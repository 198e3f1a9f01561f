"""The patient's doctor, holding a link the patient shared (or any link that is not the
patient's own link to all their studies): it opens images, never the patient's consent."""

# ruff: noqa: F811  (the API fixtures are imported from tests.viewer_api.conftest)

from __future__ import annotations

from tests.viewer_api.conftest import (  # noqa: F401  (fixtures)
    Api,
    Regional,
    loaded,
    regional,
    synth_studies,
)
from tests.viewer_api.test_patients import (
    ISSUER,
    _grant,
    _linked,
    patient_link,
    register_hospitals,
)


async def _consent_calls(api: Api, base: str, request_id: str, consent_id: str) -> list[int]:
    calls = [
        api.client.post(f"{base}/api/consents", json={"hospital": "H1"}),
        api.client.post(f"{base}/api/consent-code", json={}),
        api.client.get(f"{base}/api/consent-requests"),
        api.client.post(f"{base}/api/consent-requests/{request_id}/approve"),
        api.client.post(f"{base}/api/consent-requests/{request_id}/decline"),
        api.client.get(f"{base}/api/consents"),
        api.client.post(f"{base}/api/consents/{consent_id}/revoke"),
        api.client.get(f"{base}/api/history"),
    ]
    return [(await c).status for c in calls]


async def _request(api: Api, ct_pid: str) -> str:
    r = await api.client.post(
        "/api/consent-requests",
        json={"patient": {"patient_id": ct_pid, "issuer": ISSUER}},
        headers=api.token(),
    )
    assert r.status == 201
    request_id: str = (await r.json())["id"]
    return request_id


async def test_a_doctors_link_gives_no_consent_and_sees_no_history(regional: Regional) -> None:
    api, ct_pid, mr_pid, mr_study = await _linked(regional)
    await register_hospitals(api, "H1", "H2")
    consent = await _grant(api, mr_pid, "H1")
    request_id = await _request(api, ct_pid)
    base = await patient_link(api, "H2", mr_pid)
    r = await api.client.post(f"{base}/api/links", json={"ttl_hours": 24})
    assert r.status == 201
    doctor = f"/film/{(await r.json())['token']}"
    assert (await api.client.get(f"{doctor}/studies/{mr_study}/manifest.json")).status == 200
    assert await _consent_calls(api, doctor, request_id, consent) == [403] * 8
    # nothing changed: the request still waits, the consent still holds
    pending = await (await api.client.get(f"{base}/api/consent-requests")).json()
    assert [p["state"] for p in pending] == ["pending"]
    r = await api.client.get(f"/dicom-web/studies/{mr_study}/metadata", headers=api.token())
    assert r.status == 200


async def test_a_link_to_one_study_gives_no_consent(regional: Regional) -> None:
    api, ct_pid, _, mr_study = await _linked(regional)
    await register_hospitals(api, "H1", "H2")
    request_id = await _request(api, ct_pid)
    r = await api.client.post(
        "/api/shares", json={"study_uid": mr_study}, headers=api.token(hospital="H2")
    )
    assert r.status == 201
    one = f"/film/{(await r.json())['token']}"
    statuses = await _consent_calls(api, one, request_id, "x" * 22)
    # a one-study link of the patient lists and revokes their consents and shows history,
    # but gives no consent
    assert statuses[:5] == [403] * 5
    r = await api.client.get(f"/dicom-web/studies/{mr_study}/metadata", headers=api.token())
    assert r.status == 404

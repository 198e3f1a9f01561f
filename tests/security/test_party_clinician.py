"""A curious clinician (or radiologist) of a hospital against the trust rules: consent they
grant themselves, identity links they forge by upload, a hospital without a trusted link
managing a person's consents, probing study UIDs, guessing the patient's consent code."""

# ruff: noqa: F811  (the API fixtures are imported from tests.viewer_api.conftest)

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

import pydicom
from pydicom.dataset import Dataset
from pydicom.uid import generate_uid

from image_store.records import PatientRef
from tests.viewer_api.conftest import (  # noqa: F401  (fixtures)
    Api,
    Regional,
    loaded,
    regional,
    synth_studies,
)
from tests.viewer_api.test_patients import (
    BREAK_GLASS,
    ISSUER,
    RESIDENT_ID,
    _grant,
    _linked,
    patient_link,
    register_hospitals,
)

MR_URL = "/dicom-web/studies/{uid}/metadata"


async def _json(r: Any) -> Any:
    return await r.json()


async def test_a_clinician_cannot_grant_their_own_hospital_consent(regional: Regional) -> None:
    api, ct_pid, _, mr_study = await _linked(regional)
    for role in ("clinician", "radiologist"):
        r = await api.client.post(
            "/api/consents",
            json={
                "patient": {"patient_id": ct_pid, "issuer": ISSUER},
                "grantee_hospital": "H1",
                "ttl_hours": 24,
            },
            headers=api.token(role=role),
        )
        assert r.status == 403, role
        assert "patient" in (await r.json())["error"]
    r = await api.client.get(MR_URL.format(uid=mr_study), headers=api.token())
    assert r.status == 404
    assert not [e for e in api.audit.iter_events() if e.via.startswith("consent:")]


def _forged(ds_bytes: bytes, patient_id: str) -> bytes:
    """An instance under a new Patient ID carrying someone else's resident ID."""
    ds = pydicom.dcmread(io.BytesIO(ds_bytes))
    ds.PatientID = patient_id
    ds.StudyInstanceUID, ds.SeriesInstanceUID = generate_uid(), generate_uid()
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    item = Dataset()
    item.PatientID = RESIDENT_ID
    item.IssuerOfPatientID = "CN_RESIDENT_ID"
    ds.OtherPatientIDsSequence = [item]
    out = io.BytesIO()
    ds.save_as(out)
    return out.getvalue()


async def test_an_upload_with_someone_elses_resident_id_links_nothing_and_reveals_nothing(
    regional: Regional,
) -> None:
    api, _, _, mr_study = await _linked(regional)  # the person: CT at H1, MR at H2
    forged = _forged(api.files["CT_small.dcm"], "FAKE-1")
    boundary = "b0undary"
    body = (
        f"--{boundary}\r\nContent-Type: application/dicom\r\n\r\n".encode()
        + forged
        + f"\r\n--{boundary}--\r\n".encode()
    )
    ctype = f'multipart/related; type="application/dicom"; boundary={boundary}'
    r = await api.client.post(
        "/dicom-web/studies",
        data=body,
        headers={"Content-Type": ctype, **api.token(hospital="H3", role="radiologist")},
    )
    assert r.status == 200, await r.text()
    issuer = str(pydicom.dcmread(io.BytesIO(forged)).get("IssuerOfPatientID", ""))
    assert api.index.person_link(PatientRef("H3", "FAKE-1", issuer)) is None
    h3 = api.token(hospital="H3")
    r = await api.client.get("/patients/FAKE-1/studies", headers=h3)
    one_click = await r.json()
    assert r.status == 200 and one_click["linked"] is False and one_click["withheld"] == 0
    assert {s["hospital"] for s in one_click["studies"]} == {"H3"}
    assert await _json(await api.client.get("/api/patients/FAKE-1/consents", headers=h3)) == []
    await api.client.get(MR_URL.format(uid=mr_study), headers={**api.token(), **BREAK_GLASS})
    history = await _json(await api.client.get("/api/patients/FAKE-1/access-history", headers=h3))
    assert all(h["study_uid"] != mr_study for h in history)
    r = await api.client.post(
        "/api/consent-requests", json={"patient": {"patient_id": "FAKE-1"}}, headers=h3
    )
    assert r.status == 400


async def test_a_hospital_without_a_trusted_link_cannot_manage_the_persons_consents(
    regional: Regional,
) -> None:
    api, ct_pid, mr_pid, mr_study = await _linked(regional)
    key = api.index.person_link(PatientRef("H2", mr_pid, ISSUER)).person_key
    # H3 holds a record linked to the person by an untrusted source (an older version's upload)
    api.index.link_patient(PatientRef("H3", ct_pid, ISSUER), key, "dicom")
    consent = await _grant(api, mr_pid)  # the patient lets H1 read
    h3 = api.token(hospital="H3")
    r = await api.client.get(f"/api/patients/{ct_pid}/consents", headers=h3)
    assert r.status == 200 and await r.json() == []
    r = await api.client.delete(f"/api/consents/{consent}", headers=h3)
    assert r.status == 404
    r = await api.client.get(f"/api/patients/{ct_pid}/access-history", headers=h3)
    assert r.status == 200 and await r.json() == []
    r = await api.client.get(f"/patients/{ct_pid}/studies", headers=h3)
    assert r.status == 200 and (await r.json())["withheld"] == 0
    # another hospital's patient is not looked up from H3 at all
    r = await api.client.get(f"/api/patients/{mr_pid}/consents?hospital=H2", headers=h3)
    assert r.status == 403
    assert (await api.client.get(MR_URL.format(uid=mr_study), headers=api.token())).status == 200


async def test_staff_list_and_revoke_only_consents_granted_to_their_own_hospital(
    regional: Regional,
) -> None:
    api, ct_pid, mr_pid, _ = await _linked(regional)
    to_h1 = await _grant(api, mr_pid, "H1")
    to_h3 = await _grant(api, mr_pid, "H3")
    h1, h2 = api.token(), api.token(hospital="H2")
    mine = await _json(await api.client.get(f"/api/patients/{ct_pid}/consents", headers=h1))
    assert [c["id"] for c in mine] == [to_h1]
    own = await _json(
        await api.client.get(f"/api/patients/{mr_pid}/consents?hospital=H2", headers=h2)
    )
    assert own == []  # the person's own hospital H2 holds no grant to itself
    for who in (h1, h2):
        assert (await api.client.delete(f"/api/consents/{to_h3}", headers=who)).status == 404
    r = await api.client.get(
        f"/api/patients/{ct_pid}/consents?hospital=H1", headers=api.token(role="admin")
    )
    assert {c["id"] for c in await r.json()} == {to_h1, to_h3}
    assert (await api.client.delete(f"/api/consents/{to_h1}", headers=h1)).status == 200
    r = await api.client.delete(f"/api/consents/{to_h3}", headers=api.token(role="admin"))
    assert r.status == 200


async def test_an_unknown_study_and_another_hospitals_study_answer_alike(
    regional: Regional,
) -> None:
    api, _, _, mr_study = await _linked(regional)
    unknown = "1.2.3.4.5.6.7.8.9"
    for path in (
        "/dicom-web/studies/{uid}",
        "/dicom-web/studies/{uid}/metadata",
        "/dicom-web/studies/{uid}/series",
        "/dicom-web/studies/{uid}/instances",
        "/dicom-web/studies/{uid}/rendered",
        "/dicom-web/studies/{uid}/thumbnail",
        "/api/studies/{uid}/reports",
    ):
        answers = []
        for uid in (unknown, mr_study):
            r = await api.client.get(path.format(uid=uid), headers=api.token())
            answers.append((r.status, (await r.text()).replace(uid, "UID")))
        assert answers[0] == answers[1], path
        assert answers[0][0] in (200, 404), path  # QIDO inside a study: an empty list
    r = await api.client.post("/api/shares", json={"study_uid": mr_study}, headers=api.token())
    r2 = await api.client.post("/api/shares", json={"study_uid": unknown}, headers=api.token())
    assert r.status == r2.status == 404


async def _code(api: Api, base: str, **body: object) -> str:
    r = await api.client.post(f"{base}/api/consent-code", json=body)
    assert r.status == 201, await r.text()
    code: str = (await r.json())["code"]
    return code


async def _enter(api: Api, pid: str, code: str, **headers: str) -> Any:
    return await api.client.post(
        "/api/consents",
        json={"patient": {"patient_id": pid, "issuer": ISSUER}, "code": code},
        headers=headers or api.token(),
    )


async def test_the_patients_consent_code_is_single_use_and_burnt_by_guessing(
    regional: Regional, tmp_path: Path
) -> None:
    api, ct_pid, mr_pid, mr_study = await _linked(regional)
    await register_hospitals(api, "H1", "H2", named=False)
    base = await patient_link(api, "H2", mr_pid)
    code = await _code(api, base)
    assert len(code) == 8 and code.isdigit()
    for name in ("index.sqlite", "index.sqlite-wal"):  # the state lives in the index's database
        assert code.encode() not in (tmp_path / name).read_bytes()
    wrong = f"{(int(code) + 1) % 10**8:08d}"
    r = await _enter(api, ct_pid, wrong)
    assert r.status == 403 and "4 tries left" in (await r.json())["error"]
    r = await _enter(api, ct_pid, code)
    assert r.status == 201, await r.text()
    grant = await r.json()
    assert grant["grantee_hospital"] == "H1" and grant["grantee_subject"] == ""
    assert (await api.client.get(MR_URL.format(uid=mr_study), headers=api.token())).status == 200
    assert (await _enter(api, ct_pid, code)).status == 403  # used up
    # guessing burns the code: the right one no longer works after five wrong ones
    code = await _code(api, base)
    wrong = f"{(int(code) + 1) % 10**8:08d}"
    statuses = [(await _enter(api, ct_pid, wrong)).status for _ in range(6)]
    assert statuses == [403, 403, 403, 403, 429, 429]
    assert (await _enter(api, ct_pid, code)).status == 429
    assert (await _enter(api, ct_pid, "12ab")).status == 400


async def test_a_code_for_one_clinician_grants_only_the_one_who_enters_it(
    regional: Regional,
) -> None:
    api, ct_pid, mr_pid, mr_study = await _linked(regional)
    await register_hospitals(api, "H1", "H2", named=False)
    base = await patient_link(api, "H2", mr_pid)
    code = await _code(api, base, only_that_clinician=True, ttl_hours=2)
    r = await _enter(api, ct_pid, code, **api.token(role="radiologist"))
    assert r.status == 201
    assert (await r.json())["grantee_subject"] == "t.radiologist.H1"
    reader = api.token(role="radiologist")
    assert (await api.client.get(MR_URL.format(uid=mr_study), headers=reader)).status == 200
    assert (await api.client.get(MR_URL.format(uid=mr_study), headers=api.token())).status == 404


async def test_a_consent_request_opens_nothing_until_the_patient_approves(
    regional: Regional,
) -> None:
    api, ct_pid, mr_pid, mr_study = await _linked(regional)
    await register_hospitals(api, "H1", "H2", named=False)
    r = await api.client.post(
        "/api/consent-requests",
        json={"patient": {"patient_id": ct_pid, "issuer": ISSUER}, "study_uid": mr_study},
        headers=api.token(),
    )
    assert r.status == 201, await r.text()
    req = await r.json()
    assert req["state"] == "pending"
    assert (await api.client.get(MR_URL.format(uid=mr_study), headers=api.token())).status == 404
    # a request for another hospital's patient, or by an auditor, is refused
    r = await api.client.post(
        "/api/consent-requests",
        json={"patient": {"hospital": "H2", "patient_id": mr_pid, "issuer": ISSUER}},
        headers=api.token(),
    )
    assert r.status == 403
    r = await api.client.post(
        "/api/consent-requests",
        json={"patient": {"patient_id": ct_pid, "issuer": ISSUER}},
        headers=api.token(role="auditor"),
    )
    assert r.status == 403
    base = await patient_link(api, "H2", mr_pid)
    r = await api.client.post(f"{base}/api/consent-requests/{req['id']}/approve")
    assert r.status == 200 and (await r.json())["state"] == "approved"
    assert (await api.client.get(MR_URL.format(uid=mr_study), headers=api.token())).status == 200
    mine = await _json(
        await api.client.get(f"/api/patients/{ct_pid}/consent-requests", headers=api.token())
    )
    assert [(m["id"], m["state"]) for m in mine] == [(req["id"], "approved")]
    theirs = await _json(
        await api.client.get(
            f"/api/patients/{mr_pid}/consent-requests?hospital=H2",
            headers=api.token(hospital="H2"),
        )
    )
    assert theirs == []  # H2 did not send it


async def test_an_untrusted_link_gives_no_withheld_count(regional: Regional) -> None:
    api = regional.api
    ct_pid, mr_pid = str(regional.ct[0].PatientID), str(regional.mr_h2[0].PatientID)
    api.index.link_patient(PatientRef("H1", ct_pid, ISSUER), "d" * 64, "dicom")
    api.index.link_patient(PatientRef("H2", mr_pid, ISSUER), "d" * 64, "gateway")
    r = await api.client.get(f"/patients/{ct_pid}/studies", headers=api.token())
    body = await r.json()
    assert body["linked"] is False and body["withheld"] == 0
    assert {s["hospital"] for s in body["studies"]} == {"H1"}

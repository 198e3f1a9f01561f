from __future__ import annotations

import errno
import json
import time
from typing import Any

import pytest

from tests.corpus import with_sop_uid
from tests.viewer_api.conftest import BASE, Api, uids
from viewer_api.auth import TokenSigner, b64d, b64e
from viewer_api.dicomweb import stow

CT = uids("CT_small.dcm")
MR = uids("MR_small.dcm")
SC = uids("SC_rgb_rle.dcm")


async def _studies(api: Api, query: str = "", **tok: Any) -> list[str]:
    r = await api.client.get(f"/dicom-web/studies{query}", headers=api.token(**tok))
    assert r.status == 200, await r.text()
    assert r.headers["Content-Type"].startswith("application/dicom+json")
    return sorted(s["0020000D"]["Value"][0] for s in await r.json())


async def test_clinicians_see_their_hospital_and_admins_see_all(api: Api) -> None:
    assert await _studies(api) == sorted({CT.StudyInstanceUID, MR.StudyInstanceUID})
    assert await _studies(api, hospital="H2") == [SC.StudyInstanceUID]
    assert len(await _studies(api, role="admin")) == 3


@pytest.mark.parametrize(
    ("query", "expected"),
    [
        (f"?PatientID={CT.PatientID}", {CT.StudyInstanceUID}),
        (f"?00100020={MR.PatientID}", {MR.StudyInstanceUID}),
        ("?PatientName=compressedsamples%5Ect*", {CT.StudyInstanceUID}),
        ("?PatientName=CompressedSamples%5E??1", {CT.StudyInstanceUID, MR.StudyInstanceUID}),
        (f"?StudyDate={CT.StudyDate}", {CT.StudyInstanceUID}),
        ("?StudyDate=19000101-19000101", set()),
        ("?StudyDate=-20991231", {CT.StudyInstanceUID, MR.StudyInstanceUID}),
        ("?ModalitiesInStudy=MR", {MR.StudyInstanceUID}),
        ("?ModalitiesInStudy=MR,CT", {CT.StudyInstanceUID, MR.StudyInstanceUID}),
        (f"?StudyInstanceUID={CT.StudyInstanceUID},1.2.3", {CT.StudyInstanceUID}),
        ("?AccessionNumber=nope", set()),
    ],
)
async def test_study_matching(api: Api, query: str, expected: set[str]) -> None:
    assert set(await _studies(api, query)) == expected


async def test_limit_and_offset_page_through_studies(api: Api) -> None:
    everything = await _studies(api, "?limit=10", role="admin")
    pages = [await _studies(api, f"?limit=1&offset={i}", role="admin") for i in range(3)]
    assert sorted(p[0] for p in pages) == everything


async def test_study_json_carries_standard_attributes(api: Api) -> None:
    r = await api.client.get(f"/dicom-web/studies?PatientID={CT.PatientID}", headers=api.token())
    (study,) = await r.json()
    assert study["00100010"]["Value"][0]["Alphabetic"] == str(CT.PatientName)
    assert study["00080061"]["Value"] == ["CT"]
    assert study["00201208"]["Value"] == [1]
    assert study["00081190"]["Value"][0] == f"{BASE}/dicom-web/studies/{CT.StudyInstanceUID}"


async def test_series_and_instance_level_queries(api: Api) -> None:
    h = api.token()
    r = await api.client.get(f"/dicom-web/studies/{CT.StudyInstanceUID}/series", headers=h)
    (series,) = await r.json()
    assert series["0020000E"]["Value"] == [CT.SeriesInstanceUID]
    r = await api.client.get("/dicom-web/series?Modality=MR", headers=h)
    assert [s["0020000E"]["Value"][0] for s in await r.json()] == [MR.SeriesInstanceUID]
    r = await api.client.get(
        f"/dicom-web/studies/{CT.StudyInstanceUID}/series/{CT.SeriesInstanceUID}/instances",
        headers=h,
    )
    (inst,) = await r.json()
    assert inst["00080018"]["Value"] == [CT.SOPInstanceUID]
    assert inst["00280010"]["Value"] == [128]


@pytest.mark.parametrize(
    "query",
    [
        "?StudyDate=2024",
        "?StudyDate=20240230",
        "?StudyDate=20240201-20240101",
        "?limit=-1",
        "?offset=x",
        "?Colour=red",
        "?StudyInstanceUID=1.2.abc",
        "?fuzzymatching=maybe",
        "?PatientID=" + "9" * 65,
    ],
)
async def test_bad_query_parameters_are_400_json(api: Api, query: str) -> None:
    r = await api.client.get(f"/dicom-web/studies{query}", headers=api.token())
    assert r.status == 400
    assert "error" in await r.json()


async def test_wado_returns_explicit_little_endian_as_stored_and_names_it(api: Api) -> None:
    """CT_small.dcm is stored as Explicit VR Little Endian, the default syntax of
    application/dicom: its bytes come back as stored, and the part says which syntax it is."""
    url = (
        f"/dicom-web/studies/{CT.StudyInstanceUID}/series/{CT.SeriesInstanceUID}"
        f"/instances/{CT.SOPInstanceUID}"
    )
    r = await api.client.get(url, headers=api.token())
    assert r.status == 200
    ctype = r.headers["Content-Type"]
    assert ctype.startswith('multipart/related; type="application/dicom"')
    boundary = ctype.rsplit("boundary=", 1)[1]
    body = await r.read()
    head, _, rest = body.partition(b"\r\n\r\n")
    part_type = "application/dicom; transfer-syntax=1.2.840.10008.1.2.1"
    assert head == f"--{boundary}\r\nContent-Type: {part_type}".encode()
    assert rest.endswith(f"\r\n--{boundary}--\r\n".encode())
    stored = rest[: -len(f"\r\n--{boundary}--\r\n")]
    assert stored == api.files["CT_small.dcm"]


async def test_wado_refuses_a_transfer_syntax_it_cannot_produce(api: Api) -> None:
    url = f"/dicom-web/studies/{CT.StudyInstanceUID}"
    accept = 'multipart/related; type="application/dicom"; transfer-syntax=1.2.840.10008.1.2.4.50'
    r = await api.client.get(url, headers={**api.token(), "Accept": accept})
    assert r.status == 406
    star = 'multipart/related; type="application/dicom"; transfer-syntax=*'
    r = await api.client.get(url, headers={**api.token(), "Accept": star})
    assert r.status == 200


async def test_metadata_is_one_index_read_and_no_object_read(api: Api) -> None:
    api.store.calls.clear()
    r = await api.client.get(
        f"/dicom-web/studies/{CT.StudyInstanceUID}/series/{CT.SeriesInstanceUID}/metadata",
        headers=api.token(),
    )
    (doc,) = await r.json()
    assert doc["00080018"]["Value"] == [CT.SOPInstanceUID]
    assert set(doc["7FE00010"]) == {"vr", "BulkDataURI"}  # pixels by reference only
    assert api.store.calls == []


async def test_series_thumbnail_is_a_jpeg(api: Api) -> None:
    r = await api.client.get(
        f"/dicom-web/studies/{MR.StudyInstanceUID}/series/{MR.SeriesInstanceUID}/thumbnail",
        headers=api.token(),
    )
    assert r.status == 200 and r.headers["Content-Type"] == "image/jpeg"
    assert (await r.read())[:2] == b"\xff\xd8"


async def test_requests_without_a_valid_token_are_401(api: Api) -> None:
    url = "/dicom-web/studies"
    assert (await api.client.get(url)).status == 401
    bad = {"Authorization": "Bearer cf1.e30.AAAA"}
    r = await api.client.get(url, headers=bad)
    assert r.status == 401 and r.headers["WWW-Authenticate"].startswith("Bearer")
    token = api.signer.issue("H1", "clinician")
    r = await api.client.get(url, headers={"Authorization": "Bearer " + token[:-3] + "abc"})
    assert r.status == 401
    other_key = TokenSigner(b"x" * 32).issue("H1", "admin")
    r = await api.client.get(url, headers={"Authorization": f"Bearer {other_key}"})
    assert r.status == 401


async def test_expired_token_is_401(api: Api) -> None:
    token = api.signer.issue("H1", "clinician", ttl_s=1)

    prefix, body, sig = token.split(".")
    assert api.signer.verify(token).hospital == "H1"

    payload = json.loads(b64d(body))
    payload["exp"] = int(time.time()) - 10
    forged = f"{prefix}.{b64e(json.dumps(payload).encode())}.{sig}"
    assert (
        await api.client.get("/dicom-web/studies", headers={"Authorization": f"Bearer {forged}"})
    ).status == 401


async def test_another_hospitals_study_and_an_unknown_one_are_both_404(api: Api) -> None:
    r = await api.client.get(
        f"/dicom-web/studies/{SC.StudyInstanceUID}/metadata", headers=api.token()
    )
    assert r.status == 404 and "error" in await r.json()
    r = await api.client.get("/dicom-web/studies/1.2.3.4.5", headers=api.token())
    assert r.status == 404 and (await r.json())["status"] == 404
    r = await api.client.get(
        f"/dicom-web/studies/{CT.StudyInstanceUID}/series/{MR.SeriesInstanceUID}",
        headers=api.token(),
    )
    assert r.status == 404


@pytest.mark.parametrize(
    "path",
    [
        "/dicom-web/studies/1.2.x",
        "/dicom-web/studies/..%2F..%2Fetc%2Fpasswd",
        "/dicom-web/studies/" + "1" * 65,
        "/dicom-web/studies/1.2/series/abc/metadata",
        "/dicom-web/studies/1.2/series/1.3/instances/1.4;rm",
        "/dicom-web/studies/1.2/series/1.3%00/thumbnail",
    ],
)
async def test_invalid_uids_are_400_before_any_storage_access(api: Api, path: str) -> None:
    api.index.calls.clear()
    api.store.calls.clear()
    r = await api.client.get(path, headers=api.token())
    assert r.status == 400, path
    assert "error" in await r.json()
    assert api.index.calls == [] and api.store.calls == []


async def test_every_request_is_audited_without_patient_data(api: Api) -> None:
    await api.client.get(f"/dicom-web/studies?PatientID={CT.PatientID}", headers=api.token())
    await api.client.get("/dicom-web/studies")
    events = list(api.audit.iter_events())
    assert [e.status for e in events] == [200, 401]
    assert events[0].resource == "/dicom-web/studies?PatientID"
    assert CT.PatientID not in repr(events)
    assert api.audit.verify() is None


def _multipart(parts: list[bytes], boundary: str = "b0undary") -> tuple[bytes, dict[str, str]]:
    body = (
        b"".join(
            f"--{boundary}\r\nContent-Type: application/dicom\r\n\r\n".encode() + p + b"\r\n"
            for p in parts
        )
        + f"--{boundary}--\r\n".encode()
    )
    ctype = f'multipart/related; type="application/dicom"; boundary={boundary}'
    return body, {"Content-Type": ctype}


async def test_stow_reports_each_failed_instance_with_a_reason(api: Api) -> None:
    mr = api.files["MR_small.dcm"]
    body, headers = _multipart([mr, b"garbage" * 100])
    r = await api.client.post(
        "/dicom-web/studies", data=body, headers={**headers, **api.token(role="radiologist")}
    )
    assert r.status == 202
    doc = await r.json()
    assert doc["00081199"]["Value"][0]["00081155"]["Value"] == [MR.SOPInstanceUID]
    assert doc["00081198"]["Value"][0]["00081197"]["Value"] == [0xC000]


async def test_stow_on_a_full_disk_is_507_json_and_stores_nothing(api: Api) -> None:
    api.store.fail("put", error=OSError(errno.ENOSPC, "No space left on device"))
    body, headers = _multipart(
        [with_sop_uid(api.files["CT_small.dcm"], "1.2.826.0.1.3680043.8.498.61")]
    )
    r = await api.client.post(
        "/dicom-web/studies", data=body, headers={**headers, **api.token(role="radiologist")}
    )
    assert r.status == 507
    assert "full" in (await r.json())["error"]


async def test_stow_filling_the_disk_midway_keeps_what_it_stored_and_says_what_it_did_not(
    api: Api, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(stow, "BATCH_BYTES", 1)  # one instance per batch
    api.store.fail("put", after=1, error=OSError(errno.ENOSPC, "No space left on device"))
    ct = [
        with_sop_uid(api.files["CT_small.dcm"], f"1.2.826.0.1.3680043.8.498.6{n}") for n in (2, 3)
    ]
    body, headers = _multipart(ct)
    r = await api.client.post(
        "/dicom-web/studies", data=body, headers={**headers, **api.token(role="radiologist")}
    )
    assert r.status == 202
    doc = await r.json()
    assert len(doc["00081199"]["Value"]) == 1
    assert doc["00081198"]["Value"][0]["00081197"]["Value"] == [0xA700]


async def test_stow_to_a_study_refuses_instances_of_another(api: Api) -> None:
    body, headers = _multipart([api.files["CT_small.dcm"]])
    r = await api.client.post(
        f"/dicom-web/studies/{MR.StudyInstanceUID}",
        data=body,
        headers={**headers, **api.token(role="radiologist")},
    )
    assert r.status == 409
    assert (await r.json())["00081198"]["Value"][0]["00081197"]["Value"] == [0xA900]


async def test_stow_bad_requests(api: Api) -> None:
    r = await api.client.post(
        "/dicom-web/studies",
        data=b"x",
        headers={"Content-Type": "application/json", **api.token(role="radiologist")},
    )
    assert r.status == 406
    body, headers = _multipart([api.files["CT_small.dcm"]])
    assert (await api.client.post("/dicom-web/studies", data=body, headers=headers)).status == 401
    broken = body.replace(b"--b0undary--", b"")
    r = await api.client.post(
        "/dicom-web/studies", data=broken[:40], headers={**headers, **api.token(role="radiologist")}
    )
    assert r.status in (400, 409)
    r = await api.client.post(
        "/dicom-web/studies/1.2.x", data=body, headers={**headers, **api.token(role="radiologist")}
    )
    assert r.status == 400

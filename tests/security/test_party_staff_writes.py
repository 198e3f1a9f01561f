"""Hospital staff as writers (#14 item 3): only the roles that write images store them, and a
replacement of an instance's bytes keeps the prior version and is audited."""

# ruff: noqa: F811 (the api fixture is imported from tests/viewer_api, then requested by name)
from __future__ import annotations

import hashlib
import io

import pydicom
import pytest

from image_store.keys import instance_key, prior_version_key
from image_store.records import InstanceQuery
from tests.viewer_api.conftest import Api, api, loaded, uids  # noqa: F401
from viewer_api.auth import Role

CT = uids("CT_small.dcm")


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


def _edited(data: bytes, **changes: str) -> bytes:
    ds = pydicom.dcmread(io.BytesIO(data))
    for keyword, value in changes.items():
        setattr(ds, keyword, value)
    out = io.BytesIO()
    ds.save_as(out, enforce_file_format=True)
    return out.getvalue()


def _new_instance(api: Api) -> tuple[bytes, str]:
    sop = "1.2.826.0.1.3680043.8.498.1414"
    return _edited(api.files["MR_small.dcm"], SOPInstanceUID=sop), sop


def _stored_sha(api: Api, sop: str) -> str | None:
    found = api.index.find_instances(InstanceQuery(sop_uids=(sop,)), limit=1)
    return found[0].sha256 if found else None


@pytest.mark.parametrize("role", ["clinician", "auditor"])
async def test_clinicians_and_auditors_cannot_store_instances(api: Api, role: Role) -> None:
    data, sop = _new_instance(api)
    body, headers = _multipart([data])
    r = await api.client.post(
        "/dicom-web/studies", data=body, headers={**headers, **api.token(role=role)}
    )
    assert r.status == 403
    assert "does not store" in (await r.json())["error"]
    assert _stored_sha(api, sop) is None
    assert [(e.action, e.status) for e in api.audit.iter_events()] == [("POST", 403)]


@pytest.mark.parametrize("role", ["clinician", "auditor"])
async def test_clinicians_and_auditors_cannot_overwrite_an_instance(api: Api, role: Role) -> None:
    before = _stored_sha(api, CT.SOPInstanceUID)
    body, headers = _multipart([_edited(api.files["CT_small.dcm"], StudyDescription="forged")])
    r = await api.client.post(
        f"/dicom-web/studies/{CT.StudyInstanceUID}",
        data=body,
        headers={**headers, **api.token(role=role)},
    )
    assert r.status == 403
    assert _stored_sha(api, CT.SOPInstanceUID) == before


@pytest.mark.parametrize("role", ["radiologist", "admin"])
async def test_radiologists_and_admins_store_instances(api: Api, role: Role) -> None:
    data, sop = _new_instance(api)
    body, headers = _multipart([data])
    r = await api.client.post(
        "/dicom-web/studies", data=body, headers={**headers, **api.token(role=role)}
    )
    assert r.status == 200, await r.text()
    assert _stored_sha(api, sop) == hashlib.sha256(data).hexdigest()


async def test_replacing_an_instance_keeps_the_prior_bytes_and_audits_the_replacement(
    api: Api,
) -> None:
    old = api.files["CT_small.dcm"]
    new = _edited(old, StudyDescription="corrected")
    body, headers = _multipart([new])
    r = await api.client.post(
        "/dicom-web/studies", data=body, headers={**headers, **api.token(role="radiologist")}
    )
    assert r.status == 200, await r.text()
    key = instance_key("H1", CT.StudyInstanceUID, CT.SeriesInstanceUID, CT.SOPInstanceUID)
    assert api.store.get(key) == new
    prior = prior_version_key(key, hashlib.sha256(old).hexdigest())
    assert api.store.get(prior) == old
    events = list(api.audit.iter_events())
    replaced = [e for e in events if e.action == "replace"]
    path = (
        f"/dicom-web/studies/{CT.StudyInstanceUID}/series/{CT.SeriesInstanceUID}"
        f"/instances/{CT.SOPInstanceUID}"
    )
    assert [(e.resource, e.actor, e.via) for e in replaced] == [
        (path, "radiologist:H1:t.radiologist.H1", f"prior:{prior}")
    ]
    assert ("POST", 200) in [(e.action, e.status) for e in events]  # the request's own row
    assert api.audit.verify() is None


async def test_storing_the_same_bytes_again_is_not_a_replacement(api: Api) -> None:
    body, headers = _multipart([api.files["CT_small.dcm"]])
    r = await api.client.post(
        "/dicom-web/studies", data=body, headers={**headers, **api.token(role="radiologist")}
    )
    assert r.status == 200, await r.text()
    assert [e.action for e in api.audit.iter_events()] == ["POST"]

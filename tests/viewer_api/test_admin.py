"""The registry of hospitals and users: the admin API, and disabled users losing access."""

from __future__ import annotations

from tests.viewer_api.conftest import Api


def _as(api: Api, hospital: str, role: str, subject: str) -> dict[str, str]:
    token = api.signer.issue(hospital, role, subject=subject)  # type: ignore[arg-type]
    return {"Authorization": f"Bearer {token}"}


async def test_admins_register_hospitals_and_users_and_disabling_cuts_access(api: Api) -> None:
    admin = api.token(role="admin")
    r = await api.client.post(
        "/api/admin/hospitals", json={"id": "H1", "name": "第一人民医院"}, headers=admin
    )
    assert r.status == 201
    r = await api.client.post(
        "/api/admin/users",
        json={"subject": "dr.li", "hospital": "H1", "role": "radiologist"},
        headers=admin,
    )
    assert r.status == 201
    users = await (await api.client.get("/api/admin/users", headers=admin)).json()
    assert {"subject": "dr.li", "hospital": "H1", "role": "radiologist", "enabled": True} in users
    li = _as(api, "H1", "radiologist", "dr.li")
    assert (await api.client.get("/dicom-web/studies", headers=li)).status == 200
    # a token claiming another role than the registered one is refused
    fake = _as(api, "H1", "admin", "dr.li")
    assert (await api.client.get("/dicom-web/studies", headers=fake)).status == 401
    r = await api.client.post("/api/admin/users/dr.li/disable", headers=admin)
    assert r.status == 200
    r = await api.client.get("/dicom-web/studies", headers=li)
    assert r.status == 401 and "disabled" in (await r.json())["error"]
    await api.client.post("/api/admin/users/dr.li/enable", headers=admin)
    assert (await api.client.get("/dicom-web/studies", headers=li)).status == 200


async def test_only_admins_manage_the_registry_and_bad_input_is_400(api: Api) -> None:
    r = await api.client.get("/api/admin/users", headers=api.token())
    assert r.status == 403
    admin = api.token(role="admin")
    for url, body in (
        ("/api/admin/hospitals", {"id": "../x", "name": "n"}),
        ("/api/admin/hospitals", {"id": "H9", "name": ""}),
        ("/api/admin/users", {"subject": "x", "hospital": "NOPE", "role": "clinician"}),
        ("/api/admin/users", {"subject": "x y", "hospital": "H1", "role": "clinician"}),
        ("/api/admin/users", {"subject": "x", "hospital": "H1", "role": "god"}),
    ):
        r = await api.client.post(url, json=body, headers=admin)
        assert r.status == 400, body
    r = await api.client.post("/api/admin/users/nobody/disable", headers=admin)
    assert r.status == 404

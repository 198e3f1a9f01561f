"""The cloud-film page in a real browser: Debian's headless Chromium on a phone viewport, driven
by Playwright, against `cloudfilm serve` fed by DCMTK's storescu. Screenshots of every step are
kept in test-artifacts/film/."""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pydicom
import pytest

from tests.browser import PHONE, artifacts_dir
from tests.e2e.conftest import Server, http
from tests.e2e.test_end_to_end import storescu, wait_indexed

SLICES = 24


@pytest.fixture(scope="module")
def study(server: Server, tmp_path_factory: pytest.TempPathFactory) -> str:
    out = tmp_path_factory.mktemp("film-ct")
    server.cli("synth", str(out), "--modality", "CT", "--images", str(SLICES), "--seed", "81")
    storescu(server, out)
    uid = str(pydicom.dcmread(sorted(out.glob("*.dcm"))[0]).StudyInstanceUID)
    wait_indexed(server, server.token(), uid, SLICES + 1)
    return uid


def share(server: Server, study_uid: str, **body: Any) -> dict[str, Any]:
    r = http(
        f"{server.base}/api/shares",
        token=server.token(),
        method="POST",
        body={"study_uid": study_uid, **body},
    )
    assert r.status == 201, r.body
    out: dict[str, Any] = r.json()  # type: ignore[assignment]
    return out


def open_film(phone: Any, server: Server, study_uid: str, **body: Any) -> dict[str, Any]:
    """Share the study, open the link on the phone and wait for the viewer; the link."""
    link = share(server, study_uid, **body)
    phone.goto(link["url"])
    phone.wait_for_selector("#viewer.ready")
    return link


@pytest.fixture
def phone(browser: Any) -> Iterator[Any]:
    context = browser.new_context(**PHONE)
    page = context.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
    page.on(
        "response",
        lambda r: errors.append(f"{r.status} {r.url}") if r.status >= 400 else None,
    )
    page.errors = errors
    yield page
    context.close()


def shot(page: Any, name: str) -> Path:
    path = artifacts_dir("film") / f"{name}.png"
    page.screenshot(path=str(path), full_page=True)
    return path


def canvas_digest(page: Any) -> str:
    """A hash of what the canvas shows (its pixels, not its state)."""
    data = page.evaluate("() => document.querySelector('#view').toDataURL('image/png')")
    return hashlib.sha256(data.encode()).hexdigest()


def state(page: Any) -> dict[str, Any]:
    out: dict[str, Any] = page.evaluate("() => window.cloudfilm.state()")
    return out


def test_a_phone_opens_the_link_scrolls_slices_and_applies_a_window(
    server: Server, study: str, phone: Any
) -> None:
    open_film(phone, server, study, allow_download=True)
    # the strip has a thumbnail per series, loaded
    phone.wait_for_function(
        "() => [...document.querySelectorAll('#strip img')]"
        ".every(i => i.complete && i.naturalWidth > 0)"
    )
    assert phone.locator("#strip button").count() == 2
    assert "*" in phone.locator("#pname").inner_text()  # the name is masked
    shot(phone, "01-opened")
    # open the axial series from the strip
    phone.locator("#strip button").nth(1).click()
    phone.wait_for_function(f"() => window.cloudfilm.state().count === {SLICES}")
    phone.wait_for_function("() => window.cloudfilm.state().drawn >= 2")
    assert phone.locator("#slice").inner_text().endswith(f"1 / {SLICES}")
    before = canvas_digest(phone)

    # drag down on the image: the slice changes, and so do the pixels
    box = phone.locator("#viewer").bounding_box()
    x, y = box["x"] + box["width"] / 2, box["y"] + box["height"] / 3
    phone.mouse.move(x, y)
    phone.mouse.down()
    phone.mouse.move(x, y + 60, steps=6)
    phone.mouse.up()
    phone.wait_for_function("() => window.cloudfilm.state().index > 0")
    idx = state(phone)["index"]
    phone.wait_for_function(f"() => document.querySelector('#viewer').dataset.index === '{idx}'")
    phone.wait_for_function(f"() => window.cloudfilm.state().loaded >= {idx + 1}")
    phone.wait_for_timeout(100)  # the decoded slice is painted on the next frame
    assert phone.locator("#slice").inner_text().endswith(f"{idx + 1} / {SLICES}")
    scrolled = canvas_digest(phone)
    assert scrolled != before
    # keys step one slice
    phone.keyboard.press("ArrowDown")
    phone.wait_for_function(f"() => window.cloudfilm.state().index === {idx + 1}")
    shot(phone, "02-scrolled")

    # a window preset re-renders the slice: different pixels, same slice
    drawn = state(phone)["drawn"]
    phone.select_option("#preset", "-600,1500")
    phone.wait_for_function(f"() => window.cloudfilm.state().drawn > {drawn}")
    assert state(phone)["window"] == [-600, 1500]
    assert canvas_digest(phone) != scrolled
    assert phone.locator("#wl").inner_text() == "W 1500 L -600"
    shot(phone, "03-lung-window")
    # the whole series preloads with the new window
    phone.wait_for_function(f"() => window.cloudfilm.state().loaded === {SLICES}", timeout=30_000)
    # downloads: the current image as JPEG, the study as ZIP
    href = phone.locator("#dl-image").get_attribute("href")
    assert "window=-600,1500" in href and href.endswith("download=1")
    with phone.expect_download() as dl:
        phone.locator("#dl-zip").click()
    assert dl.value.suggested_filename.endswith(".zip")
    assert phone.errors == []  # no script error, no CSP violation


def _touch(cdp: Any, kind: str, points: list[tuple[float, float]]) -> None:
    cdp.send(
        "Input.dispatchTouchEvent",
        {
            "type": kind,
            "touchPoints": [{"x": x, "y": y, "id": i} for i, (x, y) in enumerate(points)],
        },
    )


def test_pinch_and_wheel_zoom_and_a_drag_pans_in_pan_mode(
    server: Server, study: str, phone: Any
) -> None:
    open_film(phone, server, study)
    box = phone.locator("#viewer").bounding_box()
    cx, cy = box["x"] + box["width"] / 2, box["y"] + box["height"] / 2
    before = canvas_digest(phone)
    # two fingers spread apart: zoom in
    cdp = phone.context.new_cdp_session(phone)
    _touch(cdp, "touchStart", [(cx - 40, cy), (cx + 40, cy)])
    for step in range(1, 6):
        _touch(cdp, "touchMove", [(cx - 40 - 16 * step, cy), (cx + 40 + 16 * step, cy)])
    _touch(cdp, "touchEnd", [])
    zoom = state(phone)["zoom"]
    assert zoom > 1.5
    phone.wait_for_timeout(100)
    zoomed = canvas_digest(phone)
    assert zoomed != before
    # ctrl + wheel zooms out again
    phone.mouse.move(cx, cy)
    phone.keyboard.down("Control")
    phone.mouse.wheel(0, 300)
    phone.keyboard.up("Control")
    phone.wait_for_function(f"() => window.cloudfilm.state().zoom < {zoom}")
    # in pan mode a drag moves the image, the slice stays
    phone.click("#tools button[data-mode=pan]")
    index = state(phone)["index"]
    panned_from = canvas_digest(phone)
    phone.mouse.move(cx, cy)
    phone.mouse.down()
    phone.mouse.move(cx + 50, cy + 30, steps=5)
    phone.mouse.up()
    phone.wait_for_timeout(100)
    assert state(phone)["index"] == index
    assert canvas_digest(phone) != panned_from
    shot(phone, "08-zoomed-panned")
    assert phone.errors == []


def test_wrong_codes_lock_the_link_in_the_browser(server: Server, study: str, phone: Any) -> None:
    link = share(server, study, code="482910")
    phone.goto(link["url"])
    for left in (4, 3, 2, 1):
        phone.fill("#code", "111111")
        phone.click("button[type=submit]")
        assert f"{left} tries left" in phone.locator("#wrong").inner_text()
    shot(phone, "04-wrong-code")
    phone.fill("#code", "111111")
    phone.click("button[type=submit]")
    phone.wait_for_selector("#locked")
    assert phone.locator("#code").count() == 0
    shot(phone, "05-locked")


def test_the_right_code_opens_the_viewer(server: Server, study: str, phone: Any) -> None:
    link = share(server, study, code="auto")
    phone.goto(link["url"])
    phone.fill("#code", link["code"])
    phone.click("button[type=submit]")
    phone.wait_for_selector("#viewer.ready")
    assert phone.url == link["url"]
    assert phone.errors == []


def test_an_expired_link_gets_a_clear_page(server: Server, study: str, phone: Any) -> None:
    link = share(server, study, ttl_hours=1)
    shares_db = server.data / "shares.sqlite"
    import sqlite3

    with sqlite3.connect(shares_db) as db:
        db.execute("UPDATE share_links SET expires_at = 0 WHERE id = ?", (link["id"],))
    response = phone.goto(link["url"])
    assert response.status == 403
    assert "链接已过期" in phone.locator("h1").inner_text()
    assert "expired" in phone.locator("p").inner_text()
    shot(phone, "06-expired")


def test_the_patient_makes_a_link_for_a_doctor_on_the_page(
    server: Server, study: str, phone: Any
) -> None:
    open_film(phone, server, study)
    phone.click("#links summary")
    phone.click("#new-link button[type=submit]")
    phone.wait_for_selector("#new-link-out img.qr")
    phone.wait_for_function("() => document.querySelector('#new-link-out img.qr').naturalWidth > 0")
    url = phone.locator("#new-link-out .url").inner_text()
    assert url.startswith(server.base + "/film/")
    phone.click("#history summary")
    phone.wait_for_selector("#history table")
    shot(phone, "07-share-with-doctor")
    assert phone.errors == []


def test_the_patient_answers_a_request_gives_consent_and_shows_a_code_on_the_page(
    server: Server, study: str, phone: Any
) -> None:
    meta = http(f"{server.base}/dicom-web/studies/{study}/metadata", token=server.token())
    pid = meta.json()[0]["00100020"]["Value"][0]  # type: ignore[index]
    patient = {"patient_id": pid, "issuer": "CLOUDFILM-SYNTH"}
    admin = server.token(role="admin")
    for h, name in (("HOSP1", "市第一人民医院"), ("HOSP2", "市中医院")):
        r = http(f"{server.base}/api/admin/hospitals", token=admin, method="POST",
                 body={"id": h, "name": name})  # fmt: skip
        assert r.status == 201, r.body
    r = http(f"{server.base}/api/patients/links", token=admin, method="POST",
             body={"hospital": "HOSP1", **patient, "id_issuer": "CN_RESIDENT_ID",
                   "id": "44030519800101555X"})  # fmt: skip
    assert r.status == 201, r.body
    r = http(f"{server.base}/api/consent-requests", token=server.token(), method="POST",
             body={"patient": patient})  # fmt: skip
    assert r.status == 201, r.body
    link = share(server, "", scope="patient", **patient)
    phone.goto(link["url"])
    phone.wait_for_selector("#viewer.ready")
    phone.wait_for_selector("#requests.pending")
    phone.click("#requests summary")
    phone.click("#requests button.approve")
    phone.wait_for_selector("#requests >> text=已同意 approved")
    phone.click("#grant summary")
    phone.select_option("#grant select[name=hospital]", "HOSP2")
    phone.click("#grant button[type=submit]")
    phone.wait_for_selector("#grant-out >> text=已授权 Consent given: 市中医院")
    phone.click("#consents summary")
    phone.wait_for_selector("#consents >> text=市中医院")
    phone.click("#code summary")
    phone.click("#consent-code button[type=submit]")
    code = phone.locator("#code-out .code").inner_text().replace(" ", "")
    assert len(code) == 8 and code.isdigit()
    shot(phone, "08-consent")
    r = http(f"{server.base}/api/consents", token=server.token(role="radiologist"),
             method="POST", body={"patient": patient, "code": code})  # fmt: skip
    assert r.status == 201, r.body
    assert phone.errors == []

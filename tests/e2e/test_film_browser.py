"""The cloud-film page in a real browser: Debian's headless Chromium on a phone viewport, driven
by Playwright, against `cloudfilm serve` fed by DCMTK's storescu. Screenshots of every step are
kept in test-artifacts/film/."""

from __future__ import annotations

import hashlib
import io
import re
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pydicom
import pytest
from PIL import Image

from cloudfilm.synth import CALIBRATION_CENTER_MM, CALIBRATION_DIAMETER_MM, CALIBRATION_HU
from tests.browser import PHONE, artifacts_dir
from tests.e2e.conftest import Server, http
from tests.e2e.test_end_to_end import storescu, wait_indexed

SLICES = 24
CT_COLUMNS = 512
CT_SPACING_MM = 400.0 / CT_COLUMNS  # cloudfilm synth's CT: a 400 mm field of view


@pytest.fixture(scope="module")
def study(server: Server, tmp_path_factory: pytest.TempPathFactory) -> str:
    """A CT study (a scout, then an axial series of SLICES slices with the calibration disc)."""
    out = tmp_path_factory.mktemp("film-ct")
    server.cli(
        "synth", str(out), "--modality", "CT", "--images", str(SLICES), "--seed", "81",
        "--calibration",
    )  # fmt: skip
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
    try:
        phone.wait_for_selector("#viewer.ready", timeout=15_000)
    except Exception as exc:  # Playwright's TimeoutError: say what the page complained of
        raise AssertionError(f"the viewer never got ready: {phone.errors}") from exc
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


def test_a_ct_link_opens_on_the_axial_series_and_windows_it_in_the_browser(
    server: Server, study: str, phone: Any
) -> None:
    open_film(phone, server, study, allow_download=True)
    # the main series (the axial one, not the one-image scout), at its middle slice
    st = state(phone)
    assert (st["seriesIndex"], st["count"], st["index"]) == (1, SLICES, SLICES // 2)
    assert phone.locator("#slice").inner_text().endswith(f"{SLICES // 2 + 1} / {SLICES}")
    assert "/frames/1/rendered" in (phone.locator("#first").get_attribute("src") or "")
    phone.wait_for_function(
        "() => [...document.querySelectorAll('#strip img')]"
        ".every(i => i.complete && i.naturalWidth > 0)"
    )
    labels = phone.locator("#strip button").all_inner_texts()
    assert "AXIAL" in labels[1] and f"{SLICES} 张" in labels[1] and "TOPOGRAM" in labels[0]
    assert "*" in phone.locator("#pname").inner_text()  # the name is masked
    # every control is a tap target of at least 44 x 44 CSS px
    for b in phone.locator("header button:visible, #tools button, #presets button").all():
        box = b.bounding_box()
        assert box["height"] >= 44 and box["width"] >= 44, b.inner_text()
    # Chinese first; the toggle switches the labels to English and back
    assert phone.locator("#tools button[data-mode=length]").inner_text() == "测距"
    phone.click("#lang")
    assert phone.locator("#tools button[data-mode=length]").inner_text() == "Length"
    phone.click("#lang")
    # a chest CT offers chest windows, no brain window
    assert st["presets"] == ["lung", "mediastinum", "bone"]
    phone.wait_for_function("() => window.cloudfilm.state().values")
    phone.wait_for_function(f"() => window.cloudfilm.state().loaded === {SLICES}")
    shot(phone, "01-opened")
    before = canvas_digest(phone)

    # drag down on the image: the slice changes, and so do the pixels
    box = phone.locator("#viewer").bounding_box()
    x, y = box["x"] + box["width"] / 2, box["y"] + box["height"] / 3
    phone.mouse.move(x, y)
    phone.mouse.down()
    phone.mouse.move(x, y + 60, steps=6)
    phone.mouse.up()
    idx = state(phone)["index"]
    assert idx > SLICES // 2
    assert phone.locator("#slice").inner_text().endswith(f"{idx + 1} / {SLICES}")
    scrolled = canvas_digest(phone)
    assert scrolled != before
    phone.keyboard.press("ArrowDown")
    phone.wait_for_function(f"() => window.cloudfilm.state().index === {idx + 1}")
    shot(phone, "02-scrolled")

    # presets and free window/level are painted from the values: no request to the server
    asked: list[str] = []
    phone.on("request", lambda r: asked.append(r.url))
    scrolled = canvas_digest(phone)
    phone.click("#presets button[data-preset=lung]")
    assert state(phone)["window"] == [-600, 1500]
    assert phone.locator("#wl").inner_text() == "W 1500 L -600"
    assert canvas_digest(phone) != scrolled
    shot(phone, "03-lung-window")
    phone.click("#tools button[data-mode=wl]")
    lung = canvas_digest(phone)
    phone.mouse.move(x, y)
    phone.mouse.down()
    phone.mouse.move(x + 40, y + 40, steps=4)
    phone.mouse.up()
    assert state(phone)["window"] != [-600, 1500]
    assert canvas_digest(phone) != lung
    assert asked == []
    # downloads: the current image as JPEG, the study as ZIP
    href = phone.locator("#dl-image").get_attribute("href")
    assert href.endswith("download=1")
    with phone.expect_download() as dl:
        phone.locator("#dl-zip").click()
    assert dl.value.suggested_filename.endswith(".zip")
    assert phone.errors == []  # no script error, no CSP violation


def _disc_point(dx_mm: float, dy_mm: float) -> tuple[float, float]:
    """Image coordinates (columns, rows; pixel centres at +0.5) of a point of the calibration
    disc, ``dx_mm``/``dy_mm`` from its centre."""
    cx, cy = CALIBRATION_CENTER_MM
    half = CT_COLUMNS / 2
    return half + (cx + dx_mm) / CT_SPACING_MM, half + (cy + dy_mm) / CT_SPACING_MM


def _client(page: Any, point: tuple[float, float]) -> tuple[float, float]:
    xy = page.evaluate("([c, r]) => window.cloudfilm.toClient(c, r)", list(point))
    return xy["x"], xy["y"]


def _drag(page: Any, a: tuple[float, float], b: tuple[float, float]) -> None:
    page.mouse.move(*a)
    page.mouse.down()
    page.mouse.move(*b, steps=5)
    page.mouse.up()


def _zoom_on_the_disc(page: Any, steps: int) -> None:
    """Zoom in ``steps`` times and pan the calibration disc to the middle of the viewer."""
    page.wait_for_function("() => window.cloudfilm.state().values")
    for _ in range(steps):
        page.keyboard.press("+")
    box = page.locator("#viewer").bounding_box()
    mid = (box["x"] + box["width"] / 2, box["y"] + box["height"] / 2)
    disc = _client(page, _disc_point(0, 0))
    page.click("#tools button[data-mode=pan]")
    _drag(page, mid, (2 * mid[0] - disc[0], 2 * mid[1] - disc[1]))


def test_a_length_on_the_calibration_disc_is_within_one_percent_and_the_probe_reads_its_hu(
    server: Server, study: str, phone: Any
) -> None:
    open_film(phone, server, study)
    _zoom_on_the_disc(phone, 4)

    phone.click("#tools button[data-mode=length]")
    r = CALIBRATION_DIAMETER_MM / 2
    _drag(phone, _client(phone, _disc_point(-r, 0)), _client(phone, _disc_point(r, 0)))
    (length,) = state(phone)["marks"]
    assert length["mm"] == pytest.approx(CALIBRATION_DIAMETER_MM, rel=0.01)

    phone.click("#tools button[data-mode=probe]")
    phone.mouse.click(*_client(phone, _disc_point(3, -4)))
    assert state(phone)["marks"][-1] == {"kind": "probe", "value": CALIBRATION_HU}

    phone.click("#tools button[data-mode=roi]")
    _drag(phone, _client(phone, _disc_point(-15, -15)), _client(phone, _disc_point(15, 15)))
    roi = state(phone)["marks"][-1]
    assert (roi["mean"], roi["sd"]) == (CALIBRATION_HU, 0)
    assert roi["area"] == pytest.approx(3.14159 * 15 * 15, rel=0.05)

    phone.click("#tools button[data-mode=angle]")
    for dx, dy in ((r, 0), (0, 0), (0, r)):
        phone.mouse.click(*_client(phone, _disc_point(dx, dy)))
    assert state(phone)["marks"][-1]["deg"] == pytest.approx(90, abs=1.5)
    shot(phone, "09-measurements")
    # another slice: the measurements were of that slice only
    phone.keyboard.press("ArrowDown")
    assert state(phone)["marks"] == []
    assert phone.errors == []


def test_an_mr_link_offers_its_own_and_an_automatic_window_not_ct_presets(
    server: Server, phone: Any, tmp_path: Path
) -> None:
    server.cli("synth", str(tmp_path), "--modality", "MR", "--images", "3", "--seed", "82")
    storescu(server, tmp_path)
    uid = str(pydicom.dcmread(sorted(tmp_path.glob("*.dcm"))[0]).StudyInstanceUID)
    wait_indexed(server, server.token(), uid, 3)
    open_film(phone, server, uid)
    presets = state(phone)["presets"]
    assert presets[0] == "auto" and not {"lung", "brain", "bone"} & set(presets)
    phone.wait_for_function("() => window.cloudfilm.state().values")
    phone.click("#presets button[data-preset=auto]")
    auto = phone.locator("#wl").inner_text()
    assert auto.startswith("W ")
    shot(phone, "10-mr-auto-window")
    assert phone.errors == []


def test_a_radiograph_measures_at_the_detector_and_says_it_is_uncalibrated(
    server: Server, phone: Any, tmp_path: Path
) -> None:
    server.cli("synth", str(tmp_path), "--modality", "DX", "--images", "1", "--seed", "87")
    storescu(server, tmp_path)
    (path,) = sorted(tmp_path.glob("*.dcm"))
    dx = pydicom.dcmread(path, stop_before_pixels=True)
    wait_indexed(server, server.token(), str(dx.StudyInstanceUID), 1)
    open_film(phone, server, str(dx.StudyInstanceUID))
    phone.wait_for_function("() => window.cloudfilm.state().values", timeout=60_000)
    assert "未校准" in phone.locator("#note").inner_text()  # uncalibrated
    assert "lung" not in state(phone)["presets"]
    phone.click("#tools button[data-mode=length]")
    rows, cols = int(dx.Rows), int(dx.Columns)
    a, b = (cols * 0.3, rows * 0.5), (cols * 0.7, rows * 0.5)
    _drag(phone, _client(phone, a), _client(phone, b))
    (length,) = state(phone)["marks"]
    truth = (b[0] - a[0]) * float(dx.ImagerPixelSpacing[1])
    assert length["mm"] == pytest.approx(truth, rel=0.01)
    shot(phone, "13-radiograph-uncalibrated")
    assert phone.errors == []


def _pdf() -> bytes:
    out = io.BytesIO()
    Image.new("RGB", (200, 280), "white").save(out, format="PDF")
    return out.getvalue()


def _post_report(server: Server, study: str, body: bytes, media: str, status: str) -> None:
    req = urllib.request.Request(
        f"{server.base}/api/studies/{study}/reports?status={status}&title=CT",
        data=body,
        method="POST",
        headers={
            "Authorization": f"Bearer {server.token(role='radiologist')}",
            "Content-Type": media,
        },
    )
    with urllib.request.urlopen(req, timeout=30) as r:
        assert r.status == 201


def test_the_report_panel_shows_status_reader_date_and_the_pdf_inline_above_the_fold(
    server: Server, phone: Any, tmp_path: Path
) -> None:
    server.cli("synth", str(tmp_path), "--modality", "CT", "--images", "2", "--seed", "83")
    storescu(server, tmp_path)
    uid = str(pydicom.dcmread(sorted(tmp_path.glob("*.dcm"))[0]).StudyInstanceUID)
    wait_indexed(server, server.token(), uid, 3)
    _post_report(server, uid, "两肺纹理清晰。".encode(), "text/plain", "preliminary")
    _post_report(server, uid, _pdf(), "application/pdf", "final")
    open_film(phone, server, uid)
    pre = phone.locator("#report .rep.preliminary")
    assert "初步报告" in pre.locator(".status").inner_text()
    assert pre.locator(".reader").inner_text() == "t.radiologist.HOSP1"
    assert "放射科医生" in pre.locator(".meta").inner_text()
    assert "两肺纹理清晰" in pre.locator("pre").inner_text()
    final = phone.locator("#report .rep.final")
    assert "正式报告" in final.locator(".status").inner_text()
    assert "integrity checked" in final.inner_text() or "完整性" in final.inner_text()
    src = final.locator("iframe.pdf").get_attribute("src")
    assert src and src.startswith("/film/")
    fetched = phone.evaluate(
        "async (u) => { const r = await fetch(u);"
        " return [r.status, r.headers.get('content-type')] }",
        src,
    )
    assert fetched == [200, "application/pdf"]
    assert phone.locator("#report h2").bounding_box()["y"] < PHONE["viewport"]["height"]
    shot(phone, "11-report")
    assert phone.errors == []


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
    shares_db = server.data / "index.sqlite"  # the links live in the index database
    import sqlite3

    with sqlite3.connect(shares_db) as db:
        db.execute("UPDATE share_links SET expires_at = 0 WHERE id = ?", (link["id"],))
    response = phone.goto(link["url"])
    assert response.status == 403
    assert "链接已过期" in phone.locator("h1").inner_text()
    assert "请联系医院" in phone.locator("p").first.inner_text()  # the advice, in Chinese first
    assert not phone.locator("p[lang=en]").is_visible()
    shot(phone, "06-expired")
    phone.click("#lang")  # the advice in English, and the choice kept for the film page
    assert phone.locator("h1").inner_text() == "Link expired"
    assert "Ask the hospital" in phone.locator("p[lang=en]").inner_text()
    assert not phone.locator("p[lang=zh-CN]").is_visible()
    assert phone.evaluate("() => localStorage.getItem('cloudfilm-lang')") == "en"
    shot(phone, "16-expired-english")


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
    phone.wait_for_selector("#requests >> text=已同意")
    phone.click("#grant summary")
    phone.select_option("#grant select[name=hospital]", "HOSP2")
    phone.click("#grant button[type=submit]")
    phone.wait_for_selector("#grant-out >> text=已授权")
    assert "市中医院" in phone.locator("#grant-out").inner_text()
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


def test_a_patient_link_lists_the_studies_as_cards_and_opens_the_one_tapped(
    server: Server, phone: Any, tmp_path: Path
) -> None:
    pid = "K-CARDS-1"
    for modality, images, seed, sub in (("CT", "2", "85", "ct"), ("MR", "2", "86", "mr")):
        server.cli("synth", str(tmp_path / sub), "--modality", modality, "--images", images,
                   "--seed", seed, "--patient-id", pid)  # fmt: skip
        storescu(server, tmp_path / sub)
    uids = {}
    for sub, count in (("ct", 3), ("mr", 2)):
        uids[sub] = str(pydicom.dcmread(sorted((tmp_path / sub).glob("*.dcm"))[0]).StudyInstanceUID)
        wait_indexed(server, server.token(), uids[sub], count)
    link = share(server, "", scope="patient", patient_id=pid, issuer="CLOUDFILM-SYNTH")
    phone.goto(link["url"])
    phone.wait_for_selector("#viewer.ready")
    cards = phone.locator("#studies .card")
    assert cards.count() == 2
    texts = cards.all_inner_texts()
    assert any("CT" in t for t in texts) and any("MR" in t for t in texts)
    for card in texts:  # the date, then the hospital (by name where the registry has one)
        date, hospital, *_ = card.split("\n")
        assert re.fullmatch(r"\d{4}-\d{2}-\d{2}", date) and hospital in ("HOSP1", "市第一人民医院")
    phone.wait_for_function(
        "() => [...document.querySelectorAll('#studies img')]"
        ".every(i => i.complete && i.naturalWidth > 0)"
    )
    first = state(phone)["study"]
    other = next(i for i in range(2) if cards.nth(i).get_attribute("data-uid") != first)
    cards.nth(other).click()
    phone.wait_for_function(f"() => window.cloudfilm.state().study !== '{first}'")
    assert cards.nth(other).get_attribute("aria-current") == "true"
    shot(phone, "12-study-cards")
    assert phone.errors == []


def test_a_rectangle_roi_on_the_calibration_disc_gives_its_area_within_one_percent_and_its_hu(
    server: Server, study: str, phone: Any
) -> None:
    open_film(phone, server, study)
    _zoom_on_the_disc(phone, 6)
    phone.click("#tools button[data-mode=rect]")
    box = phone.locator("#tools button[data-mode=rect]").bounding_box()
    assert box["width"] >= 44 and box["height"] >= 44
    # a 34 x 30 mm rectangle inside the disc (its corners 22.7 mm from the centre, r = 25 mm)
    _drag(phone, _client(phone, _disc_point(-17, -15)), _client(phone, _disc_point(17, 15)))
    (rect,) = state(phone)["marks"]
    assert rect["kind"] == "rect"
    assert rect["area"] == pytest.approx(34 * 30, rel=0.01)
    assert (rect["mean"], rect["sd"]) == (CALIBRATION_HU, 0)
    # one straddling the disc's edge: its mean lies between the disc's and the tissue's
    _drag(phone, _client(phone, _disc_point(10, -8)), _client(phone, _disc_point(40, 8)))
    edge = state(phone)["marks"][-1]
    assert edge["area"] == pytest.approx(30 * 16, rel=0.01)
    assert edge["sd"] > 0 and edge["mean"] != CALIBRATION_HU
    shot(phone, "14-rectangle-roi")
    phone.keyboard.press("ArrowDown")  # the next slice: the rectangles were of that slice only
    assert state(phone)["marks"] == []
    assert phone.errors == []


HAN = re.compile(r"[\u3400-\u9fff]")


def _patient_with_a_request(
    server: Server, tmp_path: Path, pid: str, resident: str
) -> dict[str, str]:
    """A one-study patient linked to a resident ID, with hospitals in the registry and a
    consent request waiting: everything the patient's tools panel can show."""
    server.cli("synth", str(tmp_path), "--modality", "CT", "--images", "1", "--seed", "88",
               "--patient-id", pid)  # fmt: skip
    storescu(server, tmp_path)
    uid = str(pydicom.dcmread(sorted(tmp_path.glob("*.dcm"))[0]).StudyInstanceUID)
    wait_indexed(server, server.token(), uid, 2)
    patient = {"patient_id": pid, "issuer": "CLOUDFILM-SYNTH"}
    admin = server.token(role="admin")
    for h, name in (("HOSP1", "市第一人民医院"), ("HOSP2", "市中医院")):
        r = http(f"{server.base}/api/admin/hospitals", token=admin, method="POST",
                 body={"id": h, "name": name})  # fmt: skip
        assert r.status in (201, 409), r.body  # an earlier test may have registered it
    r = http(f"{server.base}/api/patients/links", token=admin, method="POST",
             body={"hospital": "HOSP1", **patient, "id_issuer": "CN_RESIDENT_ID",
                   "id": resident})  # fmt: skip
    assert r.status == 201, r.body
    r = http(f"{server.base}/api/consent-requests", token=server.token(), method="POST",
             body={"patient": patient})  # fmt: skip
    assert r.status == 201, r.body
    return patient


def test_english_switches_every_label_of_the_tools_panel_and_stays_chosen_after_a_reload(
    server: Server, phone: Any, tmp_path: Path
) -> None:
    patient = _patient_with_a_request(server, tmp_path, "K-LANG-1", "44030519800101777X")
    link = share(server, "", scope="patient", **patient)
    phone.goto(link["url"])
    phone.wait_for_selector("#viewer.ready")
    phone.wait_for_selector("#requests.pending")
    phone.click("#lang")
    # everything the panel holds: a consent given, the request, history, links, the code form
    phone.click("#grant summary")
    phone.click("#grant button[type=submit]")
    phone.wait_for_selector("#grant-out >> text=Consent given")
    phone.click("#links summary")
    phone.click("#new-link button[type=submit]")
    phone.wait_for_selector("#new-link-out img.qr")
    for part in ("consents", "requests", "history", "code"):
        phone.click(f"#{part} summary")
    for ready in ("#consents table", "#requests button.approve", "#history table", "#links table"):
        phone.wait_for_selector(ready)
    hospitals = phone.evaluate(
        "async (b) => (await (await fetch(b + '/api/hospitals')).json()).map((h) => h.name)",
        link["url"].removeprefix(server.base),
    )
    text = phone.locator("#mine").inner_text()
    for name in hospitals:  # hospital names are data, not labels
        text = text.replace(name, "")
    assert "Give consent" in text and "Approve" in text and "radiologist" not in text
    assert HAN.findall(text) == [], text
    for area in ("#tools", "#presets", "#strip .count", "#copy", "#share"):
        for label in phone.locator(area).all_inner_texts():
            assert not HAN.search(label), (area, label)
    shot(phone, "15-english-tools")
    # the choice survives a reload (localStorage), labels made after it included
    phone.reload()
    phone.wait_for_selector("#viewer.ready")
    assert phone.evaluate("() => document.documentElement.lang") == "en"
    assert phone.locator("#tools button[data-mode=rect]").inner_text() == "Rectangle"
    phone.click("#code summary")
    assert not HAN.search(phone.locator("#code").inner_text())
    phone.click("#lang")  # and back to Chinese
    assert phone.locator("#code summary").inner_text() == "授权码"
    assert phone.errors == []


def _phone_page(browser: Any, server: Server, init: str = "") -> Any:
    context = browser.new_context(**PHONE)
    context.grant_permissions(["clipboard-read", "clipboard-write"], origin=server.base)
    if init:
        context.add_init_script(init)
    return context.new_page()


NO_SHARE = "delete Navigator.prototype.share;"
RECORD_SHARE = """
Object.defineProperty(Navigator.prototype, "share", {
  configurable: true,
  value: function (data) {
    (window.__shared = window.__shared || []).push(data);
    return Promise.resolve();
  },
});
"""


def test_copy_puts_the_link_in_the_clipboard_and_share_sends_no_patient_data(
    server: Server, study: str, browser: Any
) -> None:
    page = _phone_page(browser, server, NO_SHARE)
    link = share(server, study)
    page.goto(link["url"])
    page.wait_for_selector("#viewer.ready")
    for b in ("#copy", "#share"):
        box = page.locator(b).bounding_box()
        assert box["width"] >= 44 and box["height"] >= 44
    page.click("#copy")
    page.wait_for_selector("#copy[data-done]")
    shot(page, "17-link-copied")
    assert page.evaluate("() => navigator.clipboard.readText()") == link["url"]
    # no Web Share in this browser: the share button copies the link instead
    page.evaluate("() => navigator.clipboard.writeText('something else')")
    page.click("#share")
    page.wait_for_function(
        f"async () => (await navigator.clipboard.readText()) === '{link['url']}'"
    )
    page.context.close()

    page = _phone_page(browser, server, RECORD_SHARE)
    page.goto(link["url"])
    page.wait_for_selector("#viewer.ready")
    page.evaluate("() => navigator.clipboard.writeText('untouched')")
    page.click("#share")
    page.wait_for_function("() => window.__shared")
    (sent,) = page.evaluate("() => window.__shared")
    assert sent == {"title": "云胶片 Cloud film", "url": link["url"]}
    header = page.evaluate("() => window.cloudfilm.state().study")
    masked = page.locator("#pname").inner_text()
    assert masked not in sent["title"] and header not in sent["title"]
    assert page.evaluate("() => navigator.clipboard.readText()") == "untouched"
    page.context.close()


LONG = 72  # slices: more than the 65 (32 each side) the page keeps decoded

WALK = """async () => {
  // every slice in turn, each shown from its values; the most the page held decoded meanwhile
  const cf = window.cloudfilm;
  let most = 0;
  for (let i = 0; i < cf.state().count; i += 1) {
    cf.go(i);
    const t0 = performance.now();
    while (!cf.state().values) {
      if (performance.now() - t0 > 10000) throw new Error(`slice ${i} never decoded`);
      await new Promise((r) => setTimeout(r, 5));
    }
    most = Math.max(most, cf.state().held.decoded);
  }
  return { most, held: cf.state().held };
}"""


def test_a_long_series_keeps_only_the_slices_near_the_current_one_decoded(
    server: Server, phone: Any, tmp_path: Path
) -> None:
    server.cli("synth", str(tmp_path), "--modality", "CT", "--images", str(LONG), "--seed", "89")
    storescu(server, tmp_path)
    uid = str(pydicom.dcmread(sorted(tmp_path.glob("*.dcm"))[0]).StudyInstanceUID)
    wait_indexed(server, server.token(), uid, LONG + 1)
    open_film(phone, server, uid)
    phone.wait_for_function(f"() => window.cloudfilm.state().loaded === {LONG}", timeout=30_000)
    phone.evaluate("() => window.cloudfilm.go(0)")
    phone.wait_for_function("() => window.cloudfilm.state().values")
    first = canvas_digest(phone)
    walked = phone.evaluate(WALK)
    slice_bytes = CT_COLUMNS * CT_COLUMNS * 2
    assert walked["most"] <= 65
    held = walked["held"]
    assert held["packed"] == LONG and held["packedBytes"] < 0.5 * LONG * slice_bytes
    assert held["decodedBytes"] <= (65 + 8) * slice_bytes  # the window and a few spare buffers
    # back at the start: slice 1 had left the window, and is decoded again to the same pixels
    phone.evaluate("() => window.cloudfilm.go(0)")
    phone.wait_for_function("() => window.cloudfilm.state().values")
    phone.wait_for_function("() => window.cloudfilm.state().held.decoded <= 33")
    assert canvas_digest(phone) == first
    assert phone.errors == []

"""No single HTTP request exhausts the server (#14 item 6): STOW-RS streamed to disk under a
per-part and a per-request cap and checked off the event loop, frame lists de-duplicated and
capped, JSON bodies capped in depth and size, rendered viewports capped, odd static names
refused; and while a worst-case request of each kind runs, the real server keeps answering
/healthz and a film page (a generous liveness timeout; no elapsed time is asserted)."""

# ruff: noqa: F811 (the api fixture is imported from tests/viewer_api, then requested by name)
from __future__ import annotations

import asyncio
import io
import json
import os
import struct
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any, TypeVar

import pydicom
import pytest
from aiohttp import web

from cloudfilm.synth import synthesize_study
from image_store.records import InstanceQuery
from tests.e2e.conftest import Server, start_server, stop_server
from tests.viewer_api.conftest import BASE, Api, api, loaded, make_api, uids  # noqa: F401
from viewer_api.context import MAX_JSON_DEPTH, ViewerSettings, json_depth
from viewer_api.dicomweb.params import MAX_FRAMES, frame_list, viewport
from viewer_api.errors import BadRequest

T = TypeVar("T")
CT = uids("CT_small.dcm")
LIVENESS_S = 5.0
"""How long /healthz and a film page may take to answer while a worst-case request runs: a
liveness bound (a stalled event loop answers after the whole request), not a latency target."""
MB = 1024**2


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


def _big_instance(data: bytes, pixel_bytes: int, sop: str) -> bytes:
    """``data`` with ``pixel_bytes`` of 16-bit pixel data (a tall single frame) and a new SOP
    Instance UID."""
    ds = pydicom.dcmread(io.BytesIO(data))
    ds.SOPInstanceUID = sop
    ds.file_meta.MediaStorageSOPInstanceUID = pydicom.uid.UID(sop)
    ds.Columns = 1024
    ds.Rows = pixel_bytes // (2 * 1024)
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.SamplesPerPixel = 16, 16, 15, 1
    ds.PixelData = os.urandom(ds.Rows * ds.Columns * 2)
    out = io.BytesIO()
    ds.save_as(out, enforce_file_format=True)
    return out.getvalue()


def _many_elements(data: bytes, n: int) -> bytes:
    """``data`` without its pixel data and with ``n`` tiny private elements after the rest
    (explicit VR little endian): cheap to send, slow to parse."""
    ds = pydicom.dcmread(io.BytesIO(data))
    del ds.PixelData
    out = io.BytesIO()
    ds.save_as(out, enforce_file_format=True)
    return out.getvalue() + (struct.pack("<HH2sH", 0x7FDF, 0x1000, b"LO", 2) + b"AB") * n


# -- pure rules ---------------------------------------------------------------------------


def test_a_repeated_frame_list_is_deduplicated_in_the_order_asked() -> None:
    assert frame_list("3,1,3,1,1,2") == (3, 1, 2)
    assert frame_list(",".join(["1"] * 1000)) == (1,)


@pytest.mark.parametrize(
    "text",
    [
        ",".join(str(n) for n in range(1, MAX_FRAMES + 2)),  # too many distinct frames
        ",".join(["1"] * (4 * MAX_FRAMES + 1)),  # a huge list, even of one frame
        "0",
        "1,,2",
        "1,x",
        "-1",
        "1" * 10,
    ],
)
def test_frame_lists_past_the_caps_or_malformed_are_refused(text: str) -> None:
    with pytest.raises(BadRequest):
        frame_list(text)


def test_a_frame_list_may_not_go_past_the_instances_frames() -> None:
    assert frame_list("1,2", number_of_frames=2) == (1, 2)
    assert frame_list("1", number_of_frames=None) == (1,)
    with pytest.raises(BadRequest, match="past the end"):
        frame_list("1,3", number_of_frames=2)
    with pytest.raises(BadRequest, match="past the end"):
        frame_list("2", number_of_frames=0)  # no NumberOfFrames: one frame


def test_a_viewport_is_capped_at_2048_or_the_images_own_size() -> None:
    assert viewport("2048,2048") == (2048, 2048)
    assert viewport("2500,2048", (2500, 2048)) == (2500, 2048)
    for text, size in [("2049,10", None), ("10,4096", (512, 512)), ("0,10", None), ("9,x", None)]:
        with pytest.raises(BadRequest, match="viewport"):
            viewport(text, size)


def test_json_depth_ignores_brackets_inside_strings() -> None:
    assert json_depth(b'{"a": [1, {"b": "[[[[\\"{"}]}') == 3
    assert json_depth(b"[" * 100_000) == 100_000


# -- through the API ----------------------------------------------------------------------


@pytest.mark.parametrize("path", ["/api/shares", "/api/consents", "/api/patients/links"])
async def test_deeply_nested_json_is_400_not_a_crash(api: Api, path: str) -> None:
    deep = '{"study_uid": ' + "[" * 5000 + "]" * 5000 + "}"
    r = await api.client.post(
        path, data=deep, headers={"Content-Type": "application/json", **api.token(role="admin")}
    )
    assert r.status == 400
    assert "too deeply nested" in (await r.json())["error"]
    nested = '{"a": ' + "[" * (MAX_JSON_DEPTH + 1) + "]" * (MAX_JSON_DEPTH + 1) + "}"
    r = await api.client.post(
        path, data=nested, headers={"Content-Type": "application/json", **api.token(role="admin")}
    )
    assert r.status == 400


async def test_a_json_body_over_its_cap_is_413_declared_or_streamed(api: Api) -> None:
    big = json.dumps({"study_uid": CT.StudyInstanceUID, "pad": "x" * 40_000}).encode()
    r = await api.client.post(
        "/api/shares", data=big, headers={"Content-Type": "application/json", **api.token()}
    )
    assert r.status == 413 and "too large" in (await r.json())["error"]

    async def chunks() -> Any:  # no Content-Length: the cap applies to what is read
        for i in range(0, len(big), 1000):
            yield big[i : i + 1000]

    r = await api.client.post(
        "/api/shares", data=chunks(), headers={"Content-Type": "application/json", **api.token()}
    )
    assert r.status == 413


async def test_a_json_body_arriving_in_pieces_is_read_whole(api: Api) -> None:
    body = json.dumps({"study_uid": CT.StudyInstanceUID, "pad": " " * 8000}).encode()

    async def chunks() -> Any:
        for i in range(0, len(body), 500):
            yield body[i : i + 500]
            await asyncio.sleep(0)

    r = await api.client.post(
        "/api/shares", data=chunks(), headers={"Content-Type": "application/json", **api.token()}
    )
    assert r.status in (201, 400), await r.text()
    assert "must be a JSON object" not in await r.text()


@pytest.mark.parametrize("name", ["film%00.js", "film.js%00", "%01film.css", "film%7f.js", "%0a"])
async def test_control_characters_in_a_static_name_are_404_json(api: Api, name: str) -> None:
    r = await api.client.get(f"/static/{name}")
    assert r.status == 404
    assert (await r.json())["status"] == 404
    assert (await api.client.get("/static/film.js")).status == 200


async def _film_link(api: Api) -> str:
    r = await api.client.post(
        "/api/shares", json={"study_uid": CT.StudyInstanceUID}, headers=api.token()
    )
    assert r.status == 201, await r.text()
    url: str = (await r.json())["url"]
    return url[len(BASE) :]


async def test_a_film_links_viewport_is_capped(api: Api) -> None:
    base = await _film_link(api)
    slice_ = (
        f"{base}/studies/{CT.StudyInstanceUID}/series/{CT.SeriesInstanceUID}"
        f"/instances/{CT.SOPInstanceUID}/frames/1/rendered"
    )
    for too_big in ("4096,4096", "8192,8192", "2049,64"):
        r = await api.client.get(f"{slice_}?viewport={too_big}")
        assert r.status == 400, too_big
        assert "viewport" in (await r.json())["error"]
    r = await api.client.get(f"{slice_}?viewport=2048,2048")
    assert r.status == 200 and r.headers["Content-Type"] == "image/jpeg"


def _instance_path() -> str:
    return (
        f"/dicom-web/studies/{CT.StudyInstanceUID}/series/{CT.SeriesInstanceUID}"
        f"/instances/{CT.SOPInstanceUID}"
    )


async def test_a_repeated_frame_list_sends_each_frame_once(api: Api) -> None:
    r = await api.client.get(
        f"{_instance_path()}/frames/{','.join(['1'] * 1000)}", headers=api.token()
    )
    assert r.status == 200, await r.text()
    boundary = r.headers["Content-Type"].split("boundary=")[1].split(";")[0].strip('"')
    assert (await r.read()).count(f"--{boundary}\r\n".encode()) == 1


@pytest.mark.parametrize(
    "frames",
    [
        ",".join(str(n) for n in range(1, MAX_FRAMES + 2)),
        ",".join(["1"] * (4 * MAX_FRAMES + 1)),
        "1,0",
        "1," + "1" * 10,
    ],
)
async def test_frame_lists_over_the_cap_or_malformed_are_400_json(api: Api, frames: str) -> None:
    r = await api.client.get(f"{_instance_path()}/frames/{frames}", headers=api.token())
    assert r.status == 400
    assert "frame" in (await r.json())["error"]


async def test_a_dicomweb_rendered_viewport_is_capped(api: Api) -> None:
    r = await api.client.get(f"{_instance_path()}/rendered?viewport=8192,8192", headers=api.token())
    assert r.status == 400 and "viewport" in (await r.json())["error"]
    r = await api.client.get(f"{_instance_path()}/rendered?viewport=2048,2048", headers=api.token())
    assert r.status == 200


def _sop_stored(api: Api, sop: str) -> bool:
    return bool(api.index.find_instances(InstanceQuery(sop_uids=(sop,)), limit=1))


@pytest.fixture
async def capped(
    loaded: Any, tmp_path: Path, aiohttp_client: Callable[[web.Application], Any]
) -> Api:
    """The API with small STOW caps: 1 MiB a part, 3 MiB a request, parts under tmp_path/stow."""
    store, index, files = loaded
    settings = ViewerSettings(
        public_base_url=BASE,
        stow_max_part_bytes=1 * MB,
        stow_max_request_bytes=3 * MB,
        stow_tmp_dir=tmp_path / "stow",
    )
    return await make_api(store, index, files, tmp_path, aiohttp_client, settings)


async def test_a_stow_body_declared_over_the_request_cap_is_413_and_stores_nothing(
    capped: Api,
) -> None:
    parts = [
        _big_instance(capped.files["MR_small.dcm"], 900_000, f"1.2.826.0.1.3680043.8.498.77{i}")
        for i in range(4)
    ]
    body, headers = _multipart(parts)
    r = await capped.client.post(
        "/dicom-web/studies",
        data=io.BytesIO(body),
        headers={**headers, **capped.token(role="radiologist")},
    )
    assert r.status == 413
    assert "larger than" in (await r.json())["error"]
    assert not any(_sop_stored(capped, f"1.2.826.0.1.3680043.8.498.77{i}") for i in range(4))


async def test_a_stow_part_over_the_part_cap_fails_alone(capped: Api, tmp_path: Path) -> None:
    big = _big_instance(capped.files["MR_small.dcm"], 2 * MB, "1.2.826.0.1.3680043.8.498.78")
    mr = pydicom.dcmread(io.BytesIO(capped.files["MR_small.dcm"]), stop_before_pixels=True)
    body, headers = _multipart([big, capped.files["MR_small.dcm"]])
    r = await capped.client.post(
        "/dicom-web/studies",
        data=io.BytesIO(body),
        headers={**headers, **capped.token(role="radiologist")},
    )
    assert r.status == 202
    doc = await r.json()
    assert doc["00081198"]["Value"][0]["00081197"]["Value"] == [0xA700]
    assert doc["00081199"]["Value"][0]["00081155"]["Value"] == [mr.SOPInstanceUID]
    assert not _sop_stored(capped, "1.2.826.0.1.3680043.8.498.78")
    assert list((tmp_path / "stow").iterdir()) == []  # the request's part files are gone


async def test_a_stow_body_is_streamed_413_comes_before_the_body_ends(capped: Api) -> None:
    """The client sends a chunked body (no length) past the request cap and never ends it: the
    server can only answer by counting what streamed in, not by holding the whole body."""
    server = capped.client.server
    reader, writer = await asyncio.open_connection(server.host, server.port)
    token = capped.token(role="radiologist")["Authorization"]
    writer.write(
        (
            "POST /dicom-web/studies HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n"
            'Content-Type: multipart/related; type="application/dicom"; boundary=b0undary\r\n'
            f"Authorization: {token}\r\n\r\n"
        ).encode()
    )
    head = b"--b0undary\r\nContent-Type: application/dicom\r\n\r\n"
    writer.write(b"%x\r\n%s\r\n" % (len(head), head))
    block = b"\0" * (256 * 1024)
    try:
        for _ in range(4 * 4 + 2):  # 4.5 MiB of one part, past the 3 MiB cap; no end
            writer.write(b"%x\r\n%s\r\n" % (len(block), block))
            await writer.drain()
        status_line = await asyncio.wait_for(reader.readline(), LIVENESS_S)
        assert status_line.split()[1] == b"413", status_line
    finally:
        writer.close()


# -- liveness through the real server ------------------------------------------------------


def _post(url: str, body: bytes, headers: dict[str, str], timeout: float = 120) -> tuple[int, str]:
    req = urllib.request.Request(url, data=body, method="POST", headers=headers)
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            return r.status, r.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()


def _get(url: str, headers: dict[str, str] | None = None) -> int:
    req = urllib.request.Request(url, headers=headers or {})
    try:
        with urllib.request.urlopen(req, timeout=LIVENESS_S) as r:
            r.read()
            return int(r.status)
    except urllib.error.HTTPError as exc:
        return exc.code


class Live:
    def __init__(self, srv: Server, film_url: str, ct: list[Path]) -> None:
        self.srv, self.film_url, self.ct = srv, film_url, ct

    def auth(self, role: str = "radiologist") -> dict[str, str]:
        return {"Authorization": f"Bearer {self.srv.token(role=role)}"}

    def answers_while(self, work: Callable[[], T]) -> T:
        """Run ``work`` in a thread; until it is done, /healthz and the film page must keep
        answering 200, each within LIVENESS_S."""
        with ThreadPoolExecutor(1) as pool:
            done: Future[T] = pool.submit(work)
            probes = 0
            while not done.done() or probes == 0:
                assert _get(f"{self.srv.base}/healthz") == 200
                assert _get(self.film_url) == 200
                probes += 1
            return done.result()


@pytest.fixture(scope="module")
def live(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Live]:
    root = tmp_path_factory.mktemp("limits")
    proc, srv = start_server(
        root / "data", root / "serve.log", {"CLOUDFILM_STOW_MAX_REQUEST_MB": "64"}
    )
    try:
        ct = synthesize_study(root / "ct", modality="CT", images=2, seed=91)
        body, headers = _multipart([p.read_bytes() for p in ct])
        live = Live(srv, "", ct)
        status, text = _post(f"{srv.base}/dicom-web/studies", body, {**headers, **live.auth()})
        assert status == 200, text
        study_uid = str(pydicom.dcmread(ct[0], stop_before_pixels=True).StudyInstanceUID)
        status, text = _post(
            f"{srv.base}/api/shares",
            json.dumps({"study_uid": study_uid}).encode(),
            {"Content-Type": "application/json", **live.auth("clinician")},
        )
        assert status == 201, text
        live.film_url = json.loads(text)["url"]
        yield live
    finally:
        stop_server(proc)


@pytest.mark.e2e
def test_a_30_mb_stow_part_does_not_stall_healthz_or_a_film_page(live: Live) -> None:
    """30 MB of three million tiny elements: seconds of parsing, none of it on the event loop;
    and a 30 MB image stored beside it."""
    slow = _many_elements(live.ct[0].read_bytes(), 3_000_000)
    big = _big_instance(live.ct[0].read_bytes(), 30 * MB, "1.2.826.0.1.3680043.8.498.930")
    body, headers = _multipart([slow, big])
    auth = live.auth()
    status, text = live.answers_while(
        lambda: _post(f"{live.srv.base}/dicom-web/studies", body, {**headers, **auth})
    )
    assert status == 202, text
    doc = json.loads(text)
    assert doc["00081198"]["Value"][0]["00081197"]["Value"] == [0xC000]
    assert doc["00081199"]["Value"][0]["00081155"]["Value"] == ["1.2.826.0.1.3680043.8.498.930"]


@pytest.mark.e2e
def test_a_stow_body_past_the_request_cap_is_413_while_the_server_keeps_answering(
    live: Live,
) -> None:
    big = _big_instance(live.ct[0].read_bytes(), 25 * MB, "1.2.826.0.1.3680043.8.498.931")
    body, headers = _multipart([big, big, big])  # 75 MB, over the 64 MB cap
    auth = live.auth()
    status, text = live.answers_while(
        lambda: _post(f"{live.srv.base}/dicom-web/studies", body, {**headers, **auth})
    )
    assert status == 413, text


@pytest.mark.e2e
def test_deep_json_and_big_viewports_are_refused_while_the_server_keeps_answering(
    live: Live,
) -> None:
    deep = ('{"study_uid": ' + "[" * 8000 + "]" * 8000 + "}").encode()
    json_headers = {"Content-Type": "application/json", **live.auth("clinician")}
    status, _ = live.answers_while(
        lambda: _post(f"{live.srv.base}/api/shares", deep[:16_000] + b"}", json_headers)
    )
    assert status == 400
    ds = pydicom.dcmread(live.ct[0], stop_before_pixels=True)
    rendered = (
        f"{live.film_url}/studies/{ds.StudyInstanceUID}/series/{ds.SeriesInstanceUID}"
        f"/instances/{ds.SOPInstanceUID}/frames/1/rendered?viewport="
    )
    assert live.answers_while(lambda: _get(rendered + "8192,8192")) == 400
    assert live.answers_while(lambda: _get(rendered + "2048,2048")) == 200


@pytest.mark.e2e
def test_a_repeated_frame_list_keeps_the_server_answering(live: Live) -> None:
    ds = pydicom.dcmread(live.ct[0], stop_before_pixels=True)
    url = (
        f"{live.srv.base}/dicom-web/studies/{ds.StudyInstanceUID}/series/{ds.SeriesInstanceUID}"
        f"/instances/{ds.SOPInstanceUID}/frames/{','.join(['1'] * 1000)}"
    )
    auth = live.auth("clinician")

    def fetch() -> tuple[int, int]:
        with urllib.request.urlopen(urllib.request.Request(url, headers=auth), timeout=60) as r:
            return int(r.status), len(r.read())

    status, size = live.answers_while(fetch)
    assert status == 200
    assert size < 2 * ds.Rows * ds.Columns * 2  # one frame (and its framing), not 1000

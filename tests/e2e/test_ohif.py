"""The OHIF Viewer (v3.13, the pre-built @ohif/app that scripts/fetch-ohif.sh fetches) against
`cloudfilm serve` in Debian's headless Chromium: OHIF on its own origin, CloudFilm's DICOMweb on
another (CORS for a configured origin), a bearer token sent by OHIF's authentication service.
The study list shows the study; the viewer loads the series' metadata and frames and paints the
image. Every request OHIF makes to CloudFilm must succeed. Screenshots in test-artifacts/ohif/.
"""

from __future__ import annotations

import functools
import http.server
import json
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pydicom
import pytest
from PIL import Image

from tests.browser import artifacts_dir
from tests.e2e.conftest import Server, start_server, stop_server
from tests.e2e.conftest import http as http_get
from tests.e2e.test_end_to_end import storescu, wait_indexed
from tests.e2e.test_region import STORED_SYNTAX
from tests.servers import free_ports

OHIF_DIST = Path(__file__).resolve().parents[2] / ".venv" / "ohif-3.13.2" / "dist"
SLICES = 6

APP_CONFIG = """
window.config = {{
  routerBasename: '/',
  showStudyList: true,
  extensions: [{{
    id: 'cloudfilm-bearer',
    preRegistration: ({{ servicesManager }}) => {{
      servicesManager.services.userAuthenticationService.setServiceImplementation({{
        getAuthorizationHeader: () => ({{ Authorization: 'Bearer {token}' }}),
      }});
    }},
  }}],
  modes: [],
  customizationService: {{}},
  maxNumberOfWebWorkers: 2,
  showWarningMessageForCrossOrigin: false,
  showCPUFallbackMessage: false,
  defaultDataSourceName: 'cloudfilm',
  dataSources: [{{
    namespace: '@ohif/extension-default.dataSourcesModule.dicomweb',
    sourceName: 'cloudfilm',
    configuration: {config},
  }}],
}};
"""


def data_source(root: str) -> dict[str, Any]:
    """The data-source configuration of docs/ohif.md (the flags are what the server does)."""
    return {
        "friendlyName": "CloudFilm",
        "name": "cloudfilm",
        "qidoRoot": root,
        "wadoRoot": root,
        "wadoUriRoot": root,
        "qidoSupportsIncludeField": True,
        "supportsFuzzyMatching": True,
        "supportsWildcard": True,
        "imageRendering": "wadors",
        "thumbnailRendering": "wadors",
        "enableStudyLazyLoad": True,
        "supportsReject": False,
        "staticWado": False,
        "singlepart": "bulkdata,video",
        "bulkDataURI": {"enabled": True, "relativeResolution": "studies"},
        "omitQuotationForMultipartRequest": True,
    }


class _OhifHandler(http.server.SimpleHTTPRequestHandler):
    """OHIF's dist/ with our app-config.js and the single-page-app fallback to index.html."""

    app_config = b""

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def send_head(self) -> Any:
        path = self.path.split("?", 1)[0]
        if path == "/app-config.js":
            self.send_response(200)
            self.send_header("Content-Type", "text/javascript")
            self.send_header("Content-Length", str(len(self.app_config)))
            self.end_headers()
            return _Body(self.app_config)
        if not Path(self.translate_path(path)).exists():
            self.path = "/index.html"
        return super().send_head()


class _Body:
    def __init__(self, data: bytes) -> None:
        self.data = data

    def read(self, n: int = -1) -> bytes:
        out, self.data = self.data, b""
        return out

    def close(self) -> None:
        pass


@pytest.fixture(scope="module", params=["jpeg-ls", "htj2k"])
def region(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[Server, str, str]]:
    """(CloudFilm, OHIF's origin, the study's UID); the gateway compresses at the edge with
    each codec in turn, so OHIF decodes JPEG-LS and HTJ2K frames."""
    if not (OHIF_DIST / "index.html").exists():
        pytest.fail("the OHIF Viewer is missing: run scripts/setup.sh --dev (fetch-ohif.sh)")
    root = tmp_path_factory.mktemp("ohif")
    (port,) = free_ports(1)
    origin = f"http://127.0.0.1:{port}"
    proc, server = start_server(
        root / "data",
        root / "serve.log",
        {"CLOUDFILM_CORS_ORIGINS": origin, "CLOUDFILM_UPLOAD_COMPRESSION": request.param},
    )
    httpd = None
    try:
        out = root / "ct"
        server.cli("synth", str(out), "--modality", "CT", "--images", str(SLICES), "--seed", "91")
        storescu(server, out)
        uid = str(pydicom.dcmread(sorted(out.glob("*.dcm"))[0]).StudyInstanceUID)
        wait_indexed(server, server.token(), uid, SLICES + 1)
        listed = http_get(f"{server.base}/dicom-web/studies/{uid}/instances", token=server.token())
        stored = {d["00083002"]["Value"][0] for d in listed.json()}  # type: ignore[attr-defined]
        assert stored == {STORED_SYNTAX[request.param]}, stored
        config = json.dumps(data_source(f"{server.base}/dicom-web"))
        handler = type("Handler", (_OhifHandler,), {})
        handler.app_config = APP_CONFIG.format(token=server.token(), config=config).encode()
        httpd = http.server.ThreadingHTTPServer(
            ("127.0.0.1", port), functools.partial(handler, directory=str(OHIF_DIST))
        )
        threading.Thread(target=httpd.serve_forever, daemon=True).start()
        yield server, origin, uid
    finally:
        if httpd is not None:
            httpd.shutdown()
            httpd.server_close()
        stop_server(proc)


def _watch(page: Any, server: Server) -> tuple[list[str], list[str]]:
    """(every DICOMweb request OHIF made, the ones that failed)."""
    seen: list[str] = []
    failed: list[str] = []

    def on_response(r: Any) -> None:
        if r.url.startswith(server.base):
            seen.append(f"{r.request.method} {r.url[len(server.base) :]}")
            if r.status >= 400:
                failed.append(f"{r.status} {r.request.method} {r.url[len(server.base) :]}")

    page.on("response", on_response)
    # a request OHIF cancels itself (it re-prioritises frames) is not a failure of the server
    page.on(
        "requestfailed",
        lambda r: (
            None
            if "ERR_ABORTED" in (r.failure or "")
            else failed.append(f"failed {r.url} {r.failure}")
        ),
    )
    return seen, failed


def test_ohif_lists_the_study_and_shows_its_images(
    region: tuple[Server, str, str], browser: Any
) -> None:
    server, origin, uid = region
    context = browser.new_context(viewport={"width": 1400, "height": 900})
    page = context.new_page()
    seen, failed = _watch(page, server)

    page.goto(origin + "/", wait_until="networkidle")
    page.wait_for_selector("text=CHEST", timeout=60_000)  # the study description, from QIDO
    page.screenshot(path=str(artifacts_dir("ohif") / "01-study-list.png"))
    assert any(s.startswith("GET /dicom-web/studies?") for s in seen), seen

    page.goto(f"{origin}/viewer?StudyInstanceUIDs={uid}", wait_until="networkidle")
    page.wait_for_function(
        "() => [...document.querySelectorAll('canvas')].some(c => c.width > 100)",
        timeout=60_000,
    )
    # wait until a frame has come back and been drawn: the viewport is not blank
    deadline = 60
    for _ in range(deadline * 2):
        if any("/frames/" in s for s in seen):
            shot = artifacts_dir("ohif") / "02-viewer.png"
            page.screenshot(path=str(shot))
            grey = np.asarray(Image.open(shot).convert("L"))
            center = grey[200:700, 300:1100]
            if center.std() > 20:
                break
        page.wait_for_timeout(500)
    else:
        pytest.fail(f"OHIF painted no image; requests: {seen[-20:]}")
    assert any("/metadata" in s for s in seen), seen
    assert failed == [], failed
    context.close()

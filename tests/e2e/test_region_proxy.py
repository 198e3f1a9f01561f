"""A gateway behind a hospital's HTTPS proxy: `cloudfilm gateway run` with ``HTTPS_PROXY`` set
reaches an HTTPS cloud only through the proxy (Debian's tinyproxy, CONNECT tunnels), uploads and
answers a C-FIND through it, and keeps what it accepted while the proxy is down. The machine
also has ``REQUESTS_CA_BUNDLE`` set (the system's bundle, as hospital machines often do for
their proxy): the cloud's private CA given by ``--cloud-ca`` must still be the one used."""

from __future__ import annotations

import os
import signal
import socket
import ssl
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import requests.certs
from pydicom.dataset import Dataset
from pynetdicom import AE
from pynetdicom.sop_class import StudyRootQueryRetrieveInformationModelFind

from tests.e2e.conftest import http
from tests.e2e.test_region import (
    CLOUD_READY,
    GATEWAY_READY,
    Region,
    _spawn,
    _stop,
    cli,
    storescu,
    study,
)
from tests.pki import make_pki

pytestmark = pytest.mark.e2e


@dataclass
class Proxy:
    conf: Path
    log: Path
    port: int
    proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        self.proc = subprocess.Popen(
            ["tinyproxy", "-d", "-c", str(self.conf)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
        )
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=1).close()
                return
            except OSError:
                time.sleep(0.05)
        raise RuntimeError(f"tinyproxy did not start:\n{self.log.read_text()[-2000:]}")

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            self.proc.wait(10)
        self.proc = None
        (self.log.parent / "tinyproxy.pid").unlink(missing_ok=True)

    def tunnels_to(self, port: int) -> int:
        """How many CONNECT tunnels to 127.0.0.1:``port`` the proxy has opened."""
        text = self.log.read_text(errors="replace")
        return text.count(f"CONNECT 127.0.0.1:{port} ")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture
def proxy(tmp_path: Path) -> Iterator[Proxy]:
    log = tmp_path / "tinyproxy.log"
    log.touch()
    port = _free_port()
    conf = tmp_path / "tinyproxy.conf"
    # no ConnectPort line: CONNECT to any port (the test cloud is not on 443)
    conf.write_text(
        f"Port {port}\nListen 127.0.0.1\nAllow 127.0.0.1\nTimeout 60\nMaxClients 20\n"
        f'LogFile "{log}"\nLogLevel Connect\nPidFile "{tmp_path / "tinyproxy.pid"}"\n'
    )
    p = Proxy(conf, log, port)
    p.start()
    yield p
    p.stop()


def _find(port: int, study_uid: str) -> int:
    ae = AE(ae_title="WORKSTATION")
    ae.add_requested_context(StudyRootQueryRetrieveInformationModelFind)
    assoc = ae.associate("127.0.0.1", port, ae_title="GWH1")
    assert assoc.is_established
    q = Dataset()
    q.QueryRetrieveLevel = "STUDY"
    q.StudyInstanceUID = study_uid
    found = 0
    for status, ident in assoc.send_c_find(q, StudyRootQueryRetrieveInformationModelFind):
        if status and status.Status in (0xFF00, 0xFF01) and ident is not None:
            found += 1
    assoc.release()
    return found


def test_a_gateway_behind_an_https_proxy_uploads_and_queries_through_it_only(
    tmp_path: Path, proxy: Proxy
) -> None:
    pki = make_pki(tmp_path)
    cloud_dir, gw_dir = tmp_path / "cloud", tmp_path / "gw"
    gw_dir.mkdir(mode=0o700)
    cloud, m = _spawn(
        ["cloud", "--data", str(cloud_dir), "--http", "127.0.0.1:0"],
        tmp_path / "cloud.log",
        CLOUD_READY,
        {
            "CLOUDFILM_HTTPS_CERT_FILE": str(pki / "server.pem"),
            "CLOUDFILM_HTTPS_KEY_FILE": str(pki / "server.key"),
        },
    )
    gateway = None
    try:
        url = m[1]
        assert url.startswith("https://127.0.0.1:")
        trust = ssl.create_default_context(cafile=str(pki / "ca.pem"))
        cloud_port = int(url.rsplit(":", 1)[1])
        cli("hospitals", "add", "H1", "--name", "Hospital H1", "--data", str(cloud_dir))
        cred = tmp_path / "cred.json"
        cli("gateway", "credential", "--data", str(cloud_dir), "--hospital", "H1",
            "--out", str(cred), "--cloud-url", url)  # fmt: skip
        proxy_url = f"http://127.0.0.1:{proxy.port}"
        gateway, g = _spawn(
            ["gateway", "run", "--data", str(gw_dir), "--dicom", "127.0.0.1:0", "--ae", "GWH1",
             "--cloud", url, "--credential", str(cred), "--cloud-ca", str(pki / "ca.pem")],
            tmp_path / "gw.log",
            GATEWAY_READY,
            {
                "HTTPS_PROXY": proxy_url,
                "https_proxy": proxy_url,
                "NO_PROXY": "",
                "no_proxy": "",
                "REQUESTS_CA_BUNDLE": requests.certs.where(),  # public CAs only
            },
        )  # fmt: skip
        dicom_port = int(g[4])

        region = Region(tmp_path, cloud_dir, url=url, context=trust)
        folder, paths, uid = study(tmp_path, "study", 3, 7)
        storescu(dicom_port, "GWH1", folder)
        token = region.token("H1")
        assert len(region.wait_instances(token, uid, len(paths))) == len(paths)
        assert proxy.tunnels_to(cloud_port) >= 1  # the upload went through the proxy
        assert _find(dicom_port, uid) == 1  # priors: the cloud answered, through the proxy

        # the proxy down: the gateway still accepts, nothing reaches the cloud (though the
        # cloud itself is on this machine), and the spool drains once the proxy is back
        proxy.stop()
        folder2, paths2, uid2 = study(tmp_path, "study2", 3, 8)
        storescu(dicom_port, "GWH1", folder2)
        time.sleep(2)
        assert len(list((gw_dir / "spool" / "ready").glob("*.dcm"))) == len(paths2)
        none = http(f"{url}/dicom-web/studies/{uid2}/instances", token=token, context=trust)
        assert none.status == 404 or (none.status == 200 and none.json() == []), none.status
        proxy.start()
        assert len(region.wait_instances(token, uid2, len(paths2))) == len(paths2)
    finally:
        if gateway is not None:
            _stop(gateway)
        _stop(cloud)

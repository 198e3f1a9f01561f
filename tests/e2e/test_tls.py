"""The stack with certificates: the API over HTTPS only, the gateway over DICOM TLS."""

from __future__ import annotations

import json
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import pydicom
import pytest
from pydicom.data import get_testdata_file
from pydicom.dataset import Dataset
from pynetdicom import AE
from pynetdicom.sop_class import CTImageStorage, StudyRootQueryRetrieveInformationModelFind

from tests.e2e.conftest import Server, start_server, stop_server
from tests.pki import client_context, make_pki


def test_api_speaks_https_and_gateway_dicom_tls_with_the_given_certificates(
    tmp_path: Path,
) -> None:
    pki = make_pki(tmp_path)
    env = {
        "CLOUDFILM_HTTPS_CERT_FILE": str(pki / "server.pem"),
        "CLOUDFILM_HTTPS_KEY_FILE": str(pki / "server.key"),
        "CLOUDFILM_DICOM_TLS_CERT_FILE": str(pki / "server.pem"),
        "CLOUDFILM_DICOM_TLS_KEY_FILE": str(pki / "server.key"),
        "CLOUDFILM_DICOM_TLS_CA_FILE": str(pki / "ca.pem"),
    }
    proc, server = start_server(tmp_path / "data", tmp_path / "server.log", env)
    try:
        assert server.base.startswith("https://127.0.0.1:")
        trust = client_context(pki, with_cert=False)
        with urllib.request.urlopen(f"{server.base}/healthz", context=trust) as r:
            assert r.status == 200
            assert r.headers["Strict-Transport-Security"].startswith("max-age=")
        # plain HTTP to the HTTPS port gets no answer
        with pytest.raises((urllib.error.URLError, ConnectionError)):
            urllib.request.urlopen(
                server.base.replace("https://", "http://") + "/healthz", timeout=5
            )

        assoc = _associate_tls(server, pki, "MODALITY", CTImageStorage)
        ds = pydicom.dcmread(get_testdata_file("CT_small.dcm"))  # type: ignore[arg-type]
        assert assoc.send_c_store(ds).Status == 0
        assoc.release()

        req = urllib.request.Request(
            f"{server.base}/dicom-web/studies?StudyInstanceUID={ds.StudyInstanceUID}",
            headers={"Authorization": f"Bearer {server.token()}"},
        )
        for _ in range(100):
            with urllib.request.urlopen(req, context=trust) as r:
                if json.loads(r.read()):
                    break
            time.sleep(0.1)
        else:
            raise AssertionError("the study sent over DICOM TLS never appeared")

        # a workstation's C-FIND over DICOM TLS is answered through the cloud's priors API,
        # over HTTPS to the API's own certificate (the same wire as a hospital's gateway)
        assoc = _associate_tls(
            server, pki, "WORKSTATION", StudyRootQueryRetrieveInformationModelFind
        )
        query = Dataset()
        query.QueryRetrieveLevel = "STUDY"
        query.StudyInstanceUID = ds.StudyInstanceUID
        found = [
            ident.StudyInstanceUID
            for status, ident in assoc.send_c_find(
                query, StudyRootQueryRetrieveInformationModelFind
            )
            if status is not None and status.Status in (0xFF00, 0xFF01) and ident is not None
        ]
        assoc.release()
        assert found == [ds.StudyInstanceUID]
        audit = server.cli("audit", "export", "--data", str(tmp_path / "data"))
        asked = [json.loads(line) for line in audit.splitlines() if line.strip()]
        assert any(
            e["resource"].startswith("/gateway/priors/") and e["role"] == "gateway" for e in asked
        ), asked[-5:]
    finally:
        stop_server(proc)


def _associate_tls(server: Server, pki: Path, calling: str, context: str) -> Any:
    """An established association over DICOM TLS with a client certificate of the test CA."""
    ae = AE(ae_title=calling)
    ae.add_requested_context(context)
    assoc = ae.associate(
        server.dicom_host,
        server.dicom_port,
        ae_title=server.ae,
        tls_args=(client_context(pki, with_cert=True), "127.0.0.1"),
    )
    assert assoc.is_established
    return assoc

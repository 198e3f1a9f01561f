"""Who may associate: calling-AE and network allow-lists, and DICOM TLS."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pydicom
import pytest
from pydicom.data import get_testdata_file
from pynetdicom import AE
from pynetdicom.sop_class import CTImageStorage, Verification

from pacs_gateway.scp import ScpSettings, TlsSettings, start_scp
from pacs_gateway.spool import Spool
from tests.pki import client_context, make_pki

# pynetdicom 3.0.4's requestor does not close its socket when the peer drops the connection or
# the TLS handshake fails, so _echo closes it.


def _echo(port: int, calling: str = "MODALITY", tls: Any = None) -> Any:
    ae = AE(ae_title=calling)
    ae.add_requested_context(Verification)
    assoc = ae.associate("127.0.0.1", port, ae_title="GW", tls_args=tls)
    if not assoc.is_established:
        assoc.dul.join(5)
        raw = getattr(assoc.dul.socket, "socket", None)
        if raw is not None:
            raw.close()
    return assoc


def _serve(tmp_path: Path, **kw: Any) -> Any:
    return start_scp(ScpSettings(ae_title="GW", port=0, **kw), Spool(tmp_path / "spool"))


def test_calling_ae_allow_list_rejects_unknown_modalities(tmp_path: Path) -> None:
    server = _serve(tmp_path, allowed_calling_aes=frozenset({"CT01"}))
    try:
        ok = _echo(server.server_address[1], "CT01")
        assert ok.is_established
        ok.release()
        refused = _echo(server.server_address[1], "INTRUDER")
        assert refused.is_rejected
    finally:
        server.shutdown()


def test_network_allow_list_drops_connections_from_elsewhere(tmp_path: Path) -> None:
    server = _serve(tmp_path, allowed_networks=("10.0.0.0/8",))
    try:
        assoc = _echo(server.server_address[1])
        assert not assoc.is_established
    finally:
        server.shutdown()
    server = _serve(tmp_path, allowed_networks=("127.0.0.0/8",))
    try:
        assoc = _echo(server.server_address[1])
        assert assoc.is_established
        assoc.release()
    finally:
        server.shutdown()


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_pki(tmp_path_factory.mktemp("pki"))


def test_tls_with_client_certificates_stores_and_refuses_peers_without_one(
    tmp_path: Path, pki: Path
) -> None:
    tls = TlsSettings(pki / "server.pem", pki / "server.key", client_ca_file=pki / "ca.pem")
    spool = Spool(tmp_path / "spool")
    server = start_scp(ScpSettings(ae_title="GW", port=0, tls=tls), spool)
    port = server.server_address[1]
    try:
        ae = AE(ae_title="MODALITY")
        ae.add_requested_context(CTImageStorage)
        assoc = ae.associate(
            "127.0.0.1",
            port,
            ae_title="GW",
            tls_args=(client_context(pki, with_cert=True), "127.0.0.1"),
        )
        assert assoc.is_established
        path = get_testdata_file("CT_small.dcm")
        assert assoc.send_c_store(pydicom.dcmread(path)).Status == 0
        assoc.release()
        assert len(spool.pending()) == 1

        plain = _echo(port)
        assert not plain.is_established
        no_cert = _echo(port, tls=(client_context(pki, with_cert=False), "127.0.0.1"))
        assert not no_cert.is_established
    finally:
        server.shutdown()

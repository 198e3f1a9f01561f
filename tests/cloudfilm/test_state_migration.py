"""An embedded install's per-process files (written by the stores the way older versions kept
them: one SQLite file per kind, revoked tokens in a text file) move into the index's database on
first open, nothing lost, and are never read again."""

from __future__ import annotations

import time
from pathlib import Path

from cloudfilm.config import load_settings
from cloudfilm.stores import open_state
from image_store.consents import SqlConsents
from image_store.gateway_credentials import GatewayCredential, SqlGatewayCredentials
from image_store.state.records import Report
from viewer_api.registry import SqlRegistry
from viewer_api.report_store import SqlReports
from viewer_api.share import SqlShareLinks


def test_old_files_migrate_on_first_open_and_are_kept_aside(tmp_path: Path) -> None:
    data = tmp_path / "data"
    later = time.time() + 3600
    shares = SqlShareLinks(data / "shares.sqlite")
    link = shares.create("1.2.3", "H1", "clinician:H1:dr", later, code="1234")
    shares.close()
    consents = SqlConsents(data / "consents.sqlite")
    grant = consents.grant("pk", "H2", created_by="patient", ttl_s=3600)
    consents.close()
    registry = SqlRegistry(data / "registry.sqlite")
    registry.add_hospital("H1", "City")
    registry.add_user("dr.li", "H1", "radiologist")
    registry.set_enabled("dr.li", False)
    registry.close()
    reports = SqlReports(data / "reports.sqlite")
    report = Report(
        "r1", "1.2.3", "H1", "text/plain", "CT", "final", False, "k", 1, "0" * 64, "x", 1.0
    )
    reports.add(report)
    reports.close()
    creds = SqlGatewayCredentials(data / "gateways.sqlite")
    creds.add(GatewayCredential("gw-1", "H1", b"k" * 32, 1.0))
    creds.close()
    (data / "secrets").mkdir(mode=0o700)
    (data / "secrets" / "revoked-tokens").write_text(f"0123456789abcdef {int(later)}\n")

    settings = load_settings({"data_dir": str(data)}, env={})
    state = open_state(settings, audit_key=None)
    try:
        got = state.shares.get(link.id)
        assert got is not None and got.code_hash == link.code_hash
        assert state.shares.try_code(link.id, "1234").outcome == "ok"
        assert state.consents.covering("pk", "H2", "dr", "1.2.3") == grant
        user = state.registry.user("dr.li")
        assert user is not None and not user.enabled  # a disabled user stays disabled
        assert state.reports.get("r1") == report
        assert state.gateway_credentials.get("gw-1") is not None
        assert "0123456789abcdef" in state.revocations
    finally:
        state.close()
    for name in ("shares.sqlite", "consents.sqlite", "registry.sqlite", "reports.sqlite",
                 "gateways.sqlite", "secrets/revoked-tokens"):  # fmt: skip
        assert not (data / name).exists()
        assert (data / (name + ".migrated")).exists()
    again = open_state(settings, audit_key=None)  # a second open finds nothing to do
    try:
        assert again.registry.user("dr.li") == user
    finally:
        again.close()

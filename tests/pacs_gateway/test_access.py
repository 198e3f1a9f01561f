"""The gateway's access rules (pacs_gateway/access.py), their settings, and the slots they
free: pure decisions first, then the real SCP on real sockets."""

from __future__ import annotations

import socket
import time
from pathlib import Path
from typing import Any

import pytest
from pynetdicom import AE
from pynetdicom.sop_class import Verification  # type: ignore[attr-defined]

from cloudfilm.config import ConfigError, load_settings
from cloudfilm.stack import gateway_scp_settings
from pacs_gateway.access import (
    AccessPolicy,
    Reject,
    Rights,
    decide,
    parse_ae_rules,
    parse_networks,
)
from pacs_gateway.scp import ScpSettings, start_scp
from pacs_gateway.spool import Spool

LIVENESS_S = 20.0


def _policy(rules: str = "", **kw: Any) -> AccessPolicy:
    return AccessPolicy(ae_title="GW", rules=parse_ae_rules(rules), **kw)


def test_ae_rules_parse_rights_hosts_and_networks() -> None:
    rules = parse_ae_rules("CT01, WS1:query@10.0.0.5;10.1.0.0/16 ,PACS:both")
    assert rules["CT01"].rights == Rights.STORE and rules["CT01"].networks == ()
    assert rules["WS1"].rights == Rights.QUERY
    assert rules["WS1"].networks == parse_networks(["10.0.0.5", "10.1.0.0/16"], "x")
    assert rules["PACS"].rights == Rights.BOTH


@pytest.mark.parametrize("bad", ["CT01:admin", "THIS_AE_IS_TOO_LONG", "WS1:query@10.0.0.300"])
def test_bad_ae_rules_are_named(bad: str) -> None:
    with pytest.raises(ValueError, match="AE"):
        parse_ae_rules(bad)


def test_decisions_name_the_reject_reason() -> None:
    policy = _policy("CT01,WS1:query@10.0.0.5", max_associations=4, max_associations_per_host=2)
    assert decide(policy, "CT01", "GW", "10.9.9.9", 0, 0).rights == Rights.STORE
    assert decide(policy, "WS1", "GW", "10.0.0.5", 0, 0).rights == Rights.QUERY
    assert decide(policy, "WS1", "GW", "10.0.0.6", 0, 0).reject == Reject.CALLING_AE_NOT_RECOGNIZED
    assert decide(policy, "NOBODY", "GW", "10.0.0.5", 0, 0).reject == (
        Reject.CALLING_AE_NOT_RECOGNIZED
    )
    assert decide(policy, "CT01", "OTHER", "10.0.0.5", 0, 0).reject == (
        Reject.CALLED_AE_NOT_RECOGNIZED
    )
    assert decide(policy, "CT01", "GW", "10.0.0.5", 4, 0).reject == Reject.LOCAL_LIMIT_EXCEEDED
    assert decide(policy, "CT01", "GW", "10.0.0.5", 2, 2).reject == Reject.LOCAL_LIMIT_EXCEEDED
    open_policy = _policy(open_rights=Rights.STORE)
    assert decide(open_policy, "ANYONE", "GW", "10.0.0.5", 0, 0).rights == Rights.STORE


def test_settings_carry_the_dicom_access_policy(tmp_path: Path) -> None:
    s = load_settings(
        {"data_dir": str(tmp_path)},
        env={
            "CLOUDFILM_DICOM_ALLOWED_AES": "CT01:store@10.0.0.0/8,WS1:both",
            "CLOUDFILM_DICOM_ALLOWED_NETWORKS": "10.0.0.0/8",
            "CLOUDFILM_DICOM_MAX_ASSOCIATIONS_PER_HOST": "3",
            "CLOUDFILM_DICOM_ACSE_TIMEOUT_S": "2.5",
        },
    )
    scp = gateway_scp_settings(s)
    policy = scp.policy()
    assert set(policy.rules) == {"CT01", "WS1"}
    assert policy.max_associations_per_host == 3 and scp.acse_timeout_s == 2.5
    assert not decide(policy, "CT01", s.ae_title, "10.2.3.4", 0, 0).reject
    with pytest.raises(ConfigError, match="AE"):
        load_settings({"data_dir": str(tmp_path)}, env={"CLOUDFILM_DICOM_ALLOWED_AES": "X:all"})
    with pytest.raises(ConfigError, match="CIDR"):
        load_settings({"data_dir": str(tmp_path)}, env={"CLOUDFILM_DICOM_ALLOWED_NETWORKS": "x"})


def test_without_an_allow_list_a_reachable_gateway_takes_stores_only(tmp_path: Path) -> None:
    loopback = load_settings({"data_dir": str(tmp_path)}, env={})
    assert gateway_scp_settings(loopback).open_rights == Rights.BOTH
    reachable = load_settings({"data_dir": str(tmp_path), "dicom_host": "0.0.0.0"}, env={})
    assert gateway_scp_settings(reachable).open_rights == Rights.STORE


def _echo(port: int, source: str = "127.0.0.1", calling: str = "MOD") -> Any:
    ae = AE(ae_title=calling)
    ae.add_requested_context(Verification)
    assoc = ae.associate("127.0.0.1", port, ae_title="GW", bind_address=(source, 0))
    if not assoc.is_established:
        assoc.dul.join(5)
        raw = getattr(assoc.dul.socket, "socket", None)
        if raw is not None:
            raw.close()
    return assoc


def _idle(port: int, n: int) -> list[socket.socket]:
    out = []
    for _ in range(n):
        s = socket.socket()
        s.bind(("127.0.0.1", 0))
        s.connect(("127.0.0.1", port))
        out.append(s)
    return out


def test_idle_connections_from_one_host_leave_other_hosts_their_slots(tmp_path: Path) -> None:
    # a long ACSE timeout: only noticing that the peers left can free their slots in time
    settings = ScpSettings(ae_title="GW", port=0, acse_timeout_s=300)
    server = start_scp(settings, Spool(tmp_path / "spool"))
    port = server.server_address[1]
    try:
        idle = _idle(port, 60)
        time.sleep(0.2)
        other = _echo(port, source="127.0.0.2")
        assert other.is_established
        other.release()
        assert not _echo(port).is_established  # this host is at its limit meanwhile
        for s in idle:
            s.close()
        deadline = time.monotonic() + LIVENESS_S
        again = _echo(port)
        while not again.is_established and time.monotonic() < deadline:
            time.sleep(0.1)
            again = _echo(port)
        assert again.is_established
        again.release()
    finally:
        server.shutdown()


def test_a_connection_that_never_associates_is_closed_after_the_acse_timeout(
    tmp_path: Path,
) -> None:
    server = start_scp(ScpSettings(ae_title="GW", port=0, acse_timeout_s=1), Spool(tmp_path / "s"))
    try:
        (s,) = _idle(server.server_address[1], 1)
        s.settimeout(LIVENESS_S)
        assert s.recv(1) == b""  # closed by the gateway (a timeout error fails the test)
        s.close()
    finally:
        server.shutdown()


def test_connections_per_host_are_capped_and_other_hosts_still_associate(
    tmp_path: Path,
) -> None:
    settings = ScpSettings(ae_title="GW", port=0, maximum_associations_per_host=2)
    server = start_scp(settings, Spool(tmp_path / "spool"))
    port = server.server_address[1]
    held = []
    try:
        held = [_echo(port), _echo(port)]
        assert all(a.is_established for a in held)
        refused = _echo(port)
        assert not refused.is_established
        other = _echo(port, source="127.0.0.3")
        assert other.is_established
        other.release()
        held[0].release()
        deadline = time.monotonic() + LIVENESS_S  # the slot comes back once it is released
        again = _echo(port)
        while not again.is_established and time.monotonic() < deadline:
            time.sleep(0.1)
            again = _echo(port)
        assert again.is_established
        again.release()
    finally:
        for a in held:
            if a.is_established:
                a.release()
        server.shutdown()

"""Who may associate with the gateway, and what each calling AE may do: pure rules.

A policy names the gateway's own AE title, the networks peers may connect from, and an
allow-list of calling AE titles, each with its rights (``store``: C-STORE; ``query``: C-FIND,
C-GET, C-MOVE; ``both``) and optionally the hosts or networks it must call from. An empty
allow-list leaves the gateway open to any calling AE with ``open_rights`` (the embedded stack
gives every right on a loopback-only listener and store only elsewhere: see
``cloudfilm/stack.py``). C-ECHO is open to anyone who may associate.

:func:`decide` turns one A-ASSOCIATE-RQ into the rights granted or the A-ASSOCIATE-RJ reason
(PS3.8 9.3.4); :class:`pacs_gateway.reactor.GatewayACSE` applies it during negotiation.
"""

from __future__ import annotations

import enum
import ipaddress
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

Network = ipaddress.IPv4Network | ipaddress.IPv6Network


class Rights(enum.Flag):
    NONE = 0
    STORE = enum.auto()
    QUERY = enum.auto()
    BOTH = STORE | QUERY


_RIGHTS_NAMES = {"store": Rights.STORE, "query": Rights.QUERY, "both": Rights.BOTH}


class Reject(enum.Enum):
    """A-ASSOCIATE-RJ (result, source, reason/diagnostic) of PS3.8 Table 9-21."""

    CALLING_AE_NOT_RECOGNIZED = (0x01, 0x01, 0x03)
    CALLED_AE_NOT_RECOGNIZED = (0x01, 0x01, 0x07)
    LOCAL_LIMIT_EXCEEDED = (0x02, 0x03, 0x02)


@dataclass(frozen=True, slots=True)
class AeRule:
    ae_title: str
    rights: Rights
    networks: tuple[Network, ...] = ()
    """Hosts or networks the AE must call from; empty: any allowed network."""


@dataclass(frozen=True, slots=True)
class AccessPolicy:
    ae_title: str
    rules: Mapping[str, AeRule]
    """Allowed calling AE titles; empty: any AE, with ``open_rights``."""
    networks: tuple[Network, ...] = ()
    """Peers must connect from one of these; empty: from anywhere."""
    open_rights: Rights = Rights.BOTH
    max_associations: int = 16
    max_associations_per_host: int = 8


@dataclass(frozen=True, slots=True)
class Decision:
    rights: Rights
    reject: Reject | None
    reason: str


def parse_networks(items: Iterable[str], what: str) -> tuple[Network, ...]:
    """CIDRs or single addresses -> networks (ValueError naming ``what`` and the bad item)."""
    out = []
    for item in items:
        try:
            out.append(ipaddress.ip_network(item.strip(), strict=False))
        except ValueError as exc:
            raise ValueError(f"{what}: {item.strip()!r} is not an address or CIDR") from exc
    return tuple(out)


def parse_ae_rules(text: str) -> dict[str, AeRule]:
    """``AE[:store|query|both][@HOST-OR-CIDR[;HOST-OR-CIDR...]]``, comma-separated; the
    rights default to ``store`` (a modality). ValueError names the bad entry."""
    rules: dict[str, AeRule] = {}
    for raw in text.split(","):
        item = raw.strip()
        if not item:
            continue
        head, _, hosts = item.partition("@")
        ae, _, rights_name = head.partition(":")
        ae = ae.strip()
        rights = _RIGHTS_NAMES.get(rights_name.strip().lower() or "store")
        if not 1 <= len(ae) <= 16 or "\\" in ae or rights is None:
            raise ValueError(
                f"calling AE entry must be AE[:store|query|both][@HOST/CIDR], got {item!r}"
            )
        networks = parse_networks(filter(None, hosts.split(";")), f"calling AE {ae}")
        rules[ae] = AeRule(ae, rights, networks)
    return rules


def decide(
    policy: AccessPolicy,
    calling_ae: str,
    called_ae: str,
    host: str,
    established: int,
    established_from_host: int,
) -> Decision:
    """The rights an A-ASSOCIATE-RQ gets, or why it is rejected. ``established``: the
    associations already established (from ``host``: ``established_from_host``)."""
    calling, called = calling_ae.strip(), called_ae.strip()
    if called != policy.ae_title.strip():
        return Decision(
            Rights.NONE, Reject.CALLED_AE_NOT_RECOGNIZED, f"called AE {called!r} is not ours"
        )
    if policy.rules:
        rule = policy.rules.get(calling)
        if rule is None:
            return Decision(
                Rights.NONE,
                Reject.CALLING_AE_NOT_RECOGNIZED,
                f"calling AE {calling!r} is not allowed",
            )
        if rule.networks and not _in(host, rule.networks):
            return Decision(
                Rights.NONE,
                Reject.CALLING_AE_NOT_RECOGNIZED,
                f"calling AE {calling!r} is not allowed from {host}",
            )
        rights = rule.rights
    else:
        rights = policy.open_rights
    if established >= policy.max_associations:
        return Decision(
            Rights.NONE, Reject.LOCAL_LIMIT_EXCEEDED, f"{established} associations are open"
        )
    if established_from_host >= policy.max_associations_per_host:
        return Decision(
            Rights.NONE,
            Reject.LOCAL_LIMIT_EXCEEDED,
            f"{established_from_host} associations from {host} are open",
        )
    return Decision(rights, None, "")


def host_allowed(policy: AccessPolicy, host: str) -> bool:
    """True when a peer at ``host`` may open a connection at all."""
    return not policy.networks or _in(host, policy.networks)


def _in(host: str, networks: tuple[Network, ...]) -> bool:
    try:
        peer = ipaddress.ip_address(host)
    except ValueError:
        return False
    if isinstance(peer, ipaddress.IPv6Address) and peer.ipv4_mapped is not None:
        peer = peer.ipv4_mapped
    return any(peer in net for net in networks)


QR_SOP_CLASSES = frozenset(
    (
        "1.2.840.10008.5.1.4.1.2.1.1",  # Patient Root Q/R FIND
        "1.2.840.10008.5.1.4.1.2.1.2",  # Patient Root Q/R MOVE
        "1.2.840.10008.5.1.4.1.2.1.3",  # Patient Root Q/R GET
        "1.2.840.10008.5.1.4.1.2.2.1",  # Study Root Q/R FIND
        "1.2.840.10008.5.1.4.1.2.2.2",  # Study Root Q/R MOVE
        "1.2.840.10008.5.1.4.1.2.2.3",  # Study Root Q/R GET
    )
)
"""The Query/Retrieve information models the gateway serves (accepted only for AEs with
the query right)."""

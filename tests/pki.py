"""A throwaway PKI for TLS tests: a CA, and a server and a client certificate it signed (both
for IP 127.0.0.1), made with the openssl command (installed by scripts/setup.sh --dev)."""

from __future__ import annotations

import ssl
import subprocess
from pathlib import Path


def _openssl(*args: str) -> None:
    subprocess.run(["openssl", *args], check=True, capture_output=True)


def make_pki(d: Path) -> Path:
    """Write ca.pem/ca.key, server.pem/server.key and client.pem/client.key into ``d``."""
    _openssl(
        "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-subj", "/CN=Test CA",
        "-keyout", str(d / "ca.key"), "-out", str(d / "ca.pem"),
    )  # fmt: skip
    for name in ("server", "client"):
        _openssl(
            "req", "-newkey", "rsa:2048", "-nodes", "-subj", f"/CN={name}",
            "-keyout", str(d / f"{name}.key"), "-out", str(d / f"{name}.csr"),
        )  # fmt: skip
        ext = d / f"{name}.ext"
        ext.write_text("subjectAltName=IP:127.0.0.1\n")
        _openssl(
            "x509", "-req", "-in", str(d / f"{name}.csr"), "-CA", str(d / "ca.pem"),
            "-CAkey", str(d / "ca.key"), "-CAcreateserial", "-days", "2",
            "-extfile", str(ext), "-out", str(d / f"{name}.pem"),
        )  # fmt: skip
    return d


def client_context(pki: Path, *, with_cert: bool) -> ssl.SSLContext:
    """A client context trusting the test CA, presenting the client certificate if asked."""
    ctx = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=str(pki / "ca.pem"))
    if with_cert:
        ctx.load_cert_chain(pki / "client.pem", pki / "client.key")
    return ctx

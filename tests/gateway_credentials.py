"""Gateway credentials in a test's own data directory (a registry file and a credentials file
of their own, as the tests' threaded clouds keep them), through the production functions."""

from __future__ import annotations

from pathlib import Path

from image_store.gateway_credentials import SqlGatewayCredentials
from viewer_api.gateway_auth import issue_credential, revoke_credential
from viewer_api.registry import SqlRegistry

GATEWAYS_FILE = "gateways.sqlite"
REGISTRY_FILE = "registry.sqlite"


def issue_gateway_credential(
    data_dir: Path, hospital: str, out_file: Path, *, cloud_url: str = ""
) -> str:
    registry = SqlRegistry(Path(data_dir) / REGISTRY_FILE)
    credentials = SqlGatewayCredentials(Path(data_dir) / GATEWAYS_FILE)
    try:
        return issue_credential(credentials, registry, hospital, out_file, cloud_url=cloud_url)
    finally:
        credentials.close()
        registry.close()


def revoke_gateway_credential(data_dir: Path, credential_id: str) -> bool:
    credentials = SqlGatewayCredentials(Path(data_dir) / GATEWAYS_FILE)
    try:
        return revoke_credential(credentials, credential_id)
    finally:
        credentials.close()

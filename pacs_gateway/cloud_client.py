"""What the gateway's HTTP clients of the cloud share: a keep-alive session to the cloud and
a live bearer token for the gateway's credential.

``pacs_gateway.cloud_sink.HttpIngestSink`` is such a connection (it exchanges the credential's
signed assertion for a token at ``/api/gateway/token`` and renews it); the priors source
(pacs_gateway.priors_http) uses the same one, so a gateway holds one token and one connection
pool for its uploads and its priors.
"""

from __future__ import annotations

from typing import Protocol

import requests


class BearerToken(Protocol):
    @property
    def value(self) -> str: ...


class CloudConnection(Protocol):
    """A session to the cloud at ``base`` and the gateway's token for it."""

    @property
    def base(self) -> str:
        """The cloud's base URL, without a trailing slash."""
        ...

    @property
    def session(self) -> requests.Session: ...

    def token(self, *, renew: bool = False) -> BearerToken:
        """A live token; a new one with ``renew`` (after a 401). Raises CredentialRefused or
        CloudUnavailable (pacs_gateway.cloud_sink), both OSError."""
        ...

"""What the gateway's HTTP clients of the cloud share: a keep-alive session to the cloud and
a live bearer token for the gateway's credential.

``pacs_gateway.cloud_sink.HttpIngestSink`` is such a connection (it exchanges the credential's
signed assertion for a token at ``/api/gateway/token`` and renews it); the priors source
(pacs_gateway.priors_http) uses the same one, so a gateway holds one token and one connection
pool for its uploads and its priors.
"""

from __future__ import annotations

from typing import Any, Protocol

import requests


class CloudSession(requests.Session):
    """A ``requests.Session`` whose ``verify`` (the cloud's CA bundle) holds for every request.

    A plain Session lets ``REQUESTS_CA_BUNDLE`` or ``CURL_CA_BUNDLE`` in the environment, often
    set on hospital machines for their proxy, replace the session's bundle for each request that
    does not name one; the cloud's private CA would then be ignored and every upload fail. The
    environment still supplies the proxies (``HTTPS_PROXY``, ``NO_PROXY``) and, when no bundle
    is configured (``verify`` is True), the system's bundle."""

    def request(self, method: str, url: str, *args: Any, **kwargs: Any) -> requests.Response:  # type: ignore[override]
        kwargs.setdefault("verify", self.verify)
        return super().request(method, url, *args, **kwargs)


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

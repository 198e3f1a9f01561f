"""Priors from the regional cloud over HTTP: the PriorsSource a gateway's Q/R SCP uses when it
runs apart from the cloud.

Each query is one ``POST`` to the cloud's priors endpoints (viewer_api.priors_api) with the
gateway's bearer token, and each instance one ``GET`` whose bytes are checked against the
sha256 the search listed. The cloud applies the access rule (the credential's hospital, and
other hospitals' studies under the patient's consent), so this source knows nothing of
consents. Every failure is an OSError (the SCP answers it with a failure status): the cloud
unreachable or answering 5xx (CloudUnavailable), the credential refused (CredentialRefused),
an instance no longer readable or damaged on the way (PriorUnavailable).
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import requests

from image_store.priors import instance_from_json, series_from_json, study_from_json
from image_store.records import InstanceSummary, SeriesRecord, StudyQuery, StudyRecord
from pacs_gateway.cloud_client import CloudConnection
from pacs_gateway.cloud_sink import (
    CloudSinkSettings,
    CloudUnavailable,
    CredentialRefused,
    HttpIngestSink,
    error_text,
)
from pacs_gateway.credential import load_credential
from pacs_gateway.errors import GatewayError

logger = logging.getLogger(__name__)

PRIORS_PREFIX = "/gateway/priors"
MAX_MATCHES = 10_000


class PriorUnavailable(GatewayError, OSError):
    """The cloud no longer serves an instance a search listed (consent revoked, deleted), or
    its bytes do not match the listed sha256."""


class HttpPriorsSource:
    """PriorsSource over the cloud's priors endpoints (thread-safe: Q/R associations share
    it)."""

    def __init__(
        self,
        cloud: CloudConnection,
        hospital: str,
        *,
        connect_timeout_s: float = 10.0,
        read_timeout_s: float = 120.0,
    ) -> None:
        self.cloud = cloud
        self.hospital = hospital
        """The credential's hospital (the cloud's answers are for it, whatever this says)."""
        self.readable = frozenset({hospital})
        self.timeout = (connect_timeout_s, read_timeout_s)

    def _call(self, method: str, path: str, **kwargs: Any) -> requests.Response:
        url = self.cloud.base + path

        def send(renew: bool) -> requests.Response:
            token = self.cloud.token(renew=renew)
            try:
                return self.cloud.session.request(
                    method,
                    url,
                    headers={"Authorization": f"Bearer {token.value}"},
                    timeout=self.timeout,
                    allow_redirects=False,
                    **kwargs,
                )
            except requests.RequestException as exc:
                raise CloudUnavailable(
                    f"the cloud at {self.cloud.base} cannot be reached: {exc}"
                ) from exc

        resp = send(False)
        if resp.status_code == 401:
            resp.close()
            resp = send(True)
        if resp.status_code in (401, 403):
            raise CredentialRefused(f"priors refused ({resp.status_code}): {error_text(resp)}")
        if resp.status_code >= 500:
            raise CloudUnavailable(f"the cloud answered {resp.status_code} to {path}")
        return resp

    def _search(self, kind: str, body: dict[str, Any], parse: Callable[[object], Any]) -> list[Any]:
        resp = self._call("POST", f"{PRIORS_PREFIX}/{kind}", json=body)
        if resp.status_code != 200:
            raise CloudUnavailable(
                f"the cloud answered {resp.status_code} to a {kind} search: {error_text(resp)}"
            )
        try:
            return [parse(item) for item in resp.json()[kind]]
        except (ValueError, KeyError, TypeError) as exc:
            raise CloudUnavailable(f"the cloud's {kind} answer cannot be read: {exc}") from exc

    def find_studies(self, q: StudyQuery, *, limit: int = MAX_MATCHES) -> list[StudyRecord]:
        body = {
            "patient_id": q.patient_id,
            "patient_name": q.patient_name,
            "study_date_from": q.study_date_from,
            "study_date_to": q.study_date_to,
            "modalities": list(q.modalities),
            "accession_number": q.accession_number,
            "study_uids": list(q.study_uids),
            "study_description": q.study_description,
            "limit": limit,
        }
        found: list[StudyRecord] = self._search("studies", body, study_from_json)
        return found

    def find_series(
        self,
        study_uid: str,
        *,
        series_uids: Sequence[str] = (),
        modality: str = "",
        limit: int = MAX_MATCHES,
    ) -> list[SeriesRecord]:
        body = {
            "study_uid": study_uid,
            "series_uids": list(series_uids),
            "modality": modality,
            "limit": limit,
        }
        found: list[SeriesRecord] = self._search("series", body, series_from_json)
        return found

    def find_instances(
        self,
        study_uid: str,
        series_uid: str = "",
        *,
        sop_uids: Sequence[str] = (),
        limit: int = MAX_MATCHES,
    ) -> list[InstanceSummary]:
        body = {
            "study_uid": study_uid,
            "series_uid": series_uid,
            "sop_uids": list(sop_uids),
            "limit": limit,
        }
        found: list[InstanceSummary] = self._search("instances", body, instance_from_json)
        return found

    def read(self, inst: InstanceSummary) -> bytes:
        path = (
            f"{PRIORS_PREFIX}/studies/{inst.study_uid}/series/{inst.series_uid}"
            f"/instances/{inst.sop_uid}"
        )
        resp = self._call("GET", path)
        if resp.status_code != 200:
            raise PriorUnavailable(
                f"instance {inst.sop_uid}: the cloud answered {resp.status_code}: "
                f"{error_text(resp)}"
            )
        data = resp.content
        if hashlib.sha256(data).hexdigest() != inst.sha256:
            raise PriorUnavailable(f"instance {inst.sop_uid} does not match its listed sha256")
        return data


@dataclass(frozen=True, slots=True)
class HttpPriorsFactory:
    """Builds an HttpPriorsSource from the credential file: picklable, so each SCP process
    opens its own (own session, own token), with the connect and read timeouts of
    ``cloud``."""

    credential_file: Path
    cloud: CloudSinkSettings

    def __call__(self) -> HttpPriorsSource:
        credential = load_credential(self.credential_file)
        return HttpPriorsSource(
            HttpIngestSink(credential, self.cloud),
            credential.hospital,
            connect_timeout_s=self.cloud.connect_timeout_s,
            read_timeout_s=self.cloud.read_timeout_s,
        )

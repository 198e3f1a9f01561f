"""The ports of the region's state: what handlers, the CLI and the gateway call, one Protocol per
kind of state, beside ``ObjectStore`` and ``Index`` (image_store.ports). One SQL implementation
each, on the index's database (image_store.state.db); :func:`image_store.state.open.open_state`
opens them all."""

from __future__ import annotations

from collections.abc import Callable, Collection, Iterator
from dataclasses import dataclass
from typing import Any, Protocol

from image_store.audit import AuditEvent, AuditVerdict
from image_store.consents import CodeOutcome, Consent, ConsentRequest
from image_store.gateway_credentials import GatewayCredentials
from image_store.state.db import StateDb
from image_store.state.records import Audience, CodeCheck, Hospital, Report, Scope, ShareLink, User
from image_store.state.uploads import UploadSession

__all__ = [
    "AuditLog",
    "Consents",
    "GatewayCredentials",
    "RegionalState",
    "Registry",
    "Reports",
    "Revocations",
    "ShareLinks",
    "UploadSessions",
]


class ShareLinks(Protocol):
    clock: Callable[[], float]

    def create(
        self,
        study_uid: str,
        hospital: str,
        created_by: str,
        expires_at: float,
        *,
        scope: Scope = "study",
        patient_id: str = "",
        issuer: str = "",
        allow_download: bool = False,
        code: str | None = None,
        audience: Audience = "patient",
        parent_id: str | None = None,
    ) -> ShareLink: ...
    def get(self, link_id: str) -> ShareLink | None: ...
    def children(self, parent_id: str) -> list[ShareLink]: ...
    def revoke(self, link_id: str) -> bool: ...
    def count_view(self, link_id: str) -> None: ...
    def try_code(self, link_id: str, code: str, now: float | None = None) -> CodeCheck: ...
    def unlock(self, link_id: str) -> bool: ...


class Consents(Protocol):
    clock: Callable[[], float]

    def grant(
        self,
        person_key: str,
        grantee_hospital: str,
        *,
        grantee_subject: str = "",
        study_uid: str = "",
        created_by: str,
        ttl_s: int,
    ) -> Consent: ...
    def get(self, consent_id: str) -> Consent | None: ...
    def revoke(self, consent_id: str) -> bool: ...
    def of_person(self, person_key: str) -> list[Consent]: ...
    def covering(
        self, person_key: str, hospital: str, subject: str, study_uid: str
    ) -> Consent | None: ...
    def request(
        self,
        person_key: str,
        hospital: str,
        *,
        subject: str = "",
        study_uid: str = "",
        requested_by: str,
        ttl_s: int,
    ) -> ConsentRequest: ...
    def get_request(self, request_id: str) -> ConsentRequest | None: ...
    def requests_of(self, person_key: str) -> list[ConsentRequest]: ...
    def decide(self, request_id: str, *, approve: bool, by: str) -> ConsentRequest | None: ...
    def issue_code(
        self,
        person_key: str,
        *,
        bind_subject: bool,
        study_uid: str = "",
        ttl_s: int,
        created_by: str,
    ) -> tuple[str, float]: ...
    def redeem_code(
        self, person_key: str, code: str, *, hospital: str, subject: str, by: str
    ) -> CodeOutcome: ...


class Registry(Protocol):
    def add_hospital(self, hospital_id: str, name: str) -> Hospital: ...
    def hospitals(self) -> list[Hospital]: ...
    def hospital_names(self) -> dict[str, str]: ...
    def add_user(self, subject: str, hospital: str, role: str) -> User: ...
    def set_enabled(self, subject: str, enabled: bool) -> bool: ...
    def user(self, subject: str) -> User | None: ...
    def users(self) -> list[User]: ...


class Reports(Protocol):
    def add(self, report: Report) -> None: ...
    def of_study(self, study_uid: str) -> list[Report]: ...
    def get(self, report_id: str) -> Report | None: ...


class AuditLog(Protocol):
    def append(self, event: AuditEvent) -> None: ...
    def check(self) -> AuditVerdict: ...
    def verify(self) -> int | None: ...
    def iter_events(self) -> Iterator[AuditEvent]: ...
    def study_reads(self, study_uids: Collection[str]) -> list[dict[str, Any]]: ...
    def reads_via(self, kind: str, limit: int | None = None) -> list[AuditEvent]: ...


class Revocations(Protocol):
    """Bearer-token ids (``jti``) revoked before they expire."""

    def revoke(self, jti: str, expires_at: float) -> None: ...
    def __contains__(self, jti: object) -> bool: ...


class UploadSessions(Protocol):
    """Resumable upload sessions (image_store.state.uploads): declarations, bytes received,
    one writer's lease at a time, outcomes."""

    def add(self, s: UploadSession) -> None: ...
    def get(self, hospital: str, session: str) -> UploadSession | None: ...
    def of_hospital(self, hospital: str) -> list[UploadSession]: ...
    def opened_before(self, t: float) -> list[UploadSession]: ...
    def lease(self, session: str, writer: str, now: float, until: float) -> bool: ...
    def release(self, session: str, writer: str) -> None: ...
    def advance(self, session: str, writer: str, old: int, new: int, chunk: str) -> bool: ...
    def settle(self, session: str, result: dict[str, Any]) -> None: ...
    def delete(self, session: str) -> None: ...


@dataclass(frozen=True, slots=True)
class RegionalState:
    """Every kind of regional state, opened on one database (cloudfilm.stores.open_state)."""

    db: StateDb
    shares: ShareLinks
    consents: Consents
    registry: Registry
    reports: Reports
    audit: AuditLog
    revocations: Revocations
    gateway_credentials: GatewayCredentials
    uploads: UploadSessions

    def close(self) -> None:
        self.db.close()

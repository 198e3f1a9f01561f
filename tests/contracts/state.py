"""The contract every regional-state backend passes, one test class per port: subclass
StateContract and provide ``state`` (a RegionalState on a fresh database, its ``clock`` the
``clock`` fixture's, its audit sealed with ``AUDIT_KEY``)."""

from __future__ import annotations

import dataclasses
import threading
from dataclasses import dataclass

import pytest

from image_store.audit import ANCHOR_EVERY, AuditEvent, SqlAuditLog
from image_store.consents import CODE_MAX_TRIES
from image_store.gateway_credentials import GatewayCredential
from image_store.state.ports import RegionalState
from image_store.state.records import BLOCK_AFTER, Report
from image_store.state.uploads import UploadSession
from viewer_api.registry import RegistryError
from viewer_api.share import LOCK_AFTER, LOCK_S

AUDIT_KEY = b"a" * 32
T0 = 1_800_000_000.0


@dataclass
class Clock:
    """The time the stores see; tests move it instead of editing rows."""

    now: float = T0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock() -> Clock:
    return Clock()


def _event(i: int, study: str = "") -> AuditEvent:
    resource = f"/dicom-web/studies/{study}/metadata" if study else f"/x/{i}"
    return AuditEvent(T0 + i, "clinician:H1:dr", "H1", "clinician", "GET", resource, 200, "::1")


class ShareLinksContract:
    def test_a_link_reads_back_and_expires_with_the_clock(
        self, state: RegionalState, clock: Clock
    ) -> None:
        link = state.shares.create("1.2.3", "H1", "clinician:H1:dr", T0 + 60)
        got = state.shares.get(link.id)
        assert got is not None and got.study_uid == "1.2.3" and got.state(clock()) == "active"
        clock.now += 61
        assert got.state(clock()) == "expired"
        assert state.shares.get("0" * 22) is None

    def test_a_revoked_link_stays_revoked_and_a_child_is_listed(self, state: RegionalState) -> None:
        parent = state.shares.create("", "H1", "x", T0 + 600, scope="patient", patient_id="P1")
        child = state.shares.create(
            "", "H1", "x", T0 + 600, scope="patient", audience="doctor", parent_id=parent.id
        )
        assert [c.id for c in state.shares.children(parent.id)] == [child.id]
        assert state.shares.revoke(parent.id) and state.shares.revoke(parent.id)
        got = state.shares.get(parent.id)
        assert got is not None and got.state(T0) == "revoked"
        assert not state.shares.revoke("nope")

    def test_wrong_codes_lock_after_exactly_the_limit_then_block(
        self, state: RegionalState, clock: Clock
    ) -> None:
        link = state.shares.create("1.2.3", "H1", "x", T0 + 86400, code="123456")
        outcomes = [state.shares.try_code(link.id, "000000").outcome for _ in range(LOCK_AFTER)]
        assert outcomes == ["wrong"] * (LOCK_AFTER - 1) + ["locked"]
        assert state.shares.try_code(link.id, "123456").outcome == "locked"  # even the right one
        clock.now += LOCK_S + 1
        assert state.shares.try_code(link.id, "123456").outcome == "ok"
        for _ in range(BLOCK_AFTER):
            last = state.shares.try_code(link.id, "000000", now=clock.now)
            clock.now += LOCK_S + 1
        assert last.outcome == "blocked"
        assert state.shares.try_code(link.id, "123456").outcome == "blocked"

    def test_parallel_wrong_codes_are_counted_one_by_one(self, state: RegionalState) -> None:
        link = state.shares.create("1.2.3", "H1", "x", T0 + 86400, code="123456")
        outcomes: list[str] = []
        threads = [
            threading.Thread(
                target=lambda: outcomes.append(state.shares.try_code(link.id, "000000").outcome)
            )
            for _ in range(LOCK_AFTER + 3)
        ]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert outcomes.count("wrong") == LOCK_AFTER - 1
        got = state.shares.get(link.id)
        assert got is not None and got.failed_total == LOCK_AFTER


class ConsentsContract:
    def test_a_grant_covers_until_it_expires_or_is_revoked(
        self, state: RegionalState, clock: Clock
    ) -> None:
        c = state.consents.grant("pk", "H2", created_by="patient", ttl_s=3600)
        assert state.consents.covering("pk", "H2", "dr", "1.2.3") == c
        assert state.consents.covering("pk", "H3", "dr", "1.2.3") is None
        clock.now += 3601
        assert state.consents.covering("pk", "H2", "dr", "1.2.3") is None
        clock.now = T0
        assert state.consents.revoke(c.id) and not state.consents.revoke(c.id)
        assert state.consents.covering("pk", "H2", "dr", "1.2.3") is None
        assert [x.id for x in state.consents.of_person("pk")] == [c.id]

    def test_a_grant_to_one_clinician_and_one_study_covers_only_them(
        self, state: RegionalState
    ) -> None:
        state.consents.grant(
            "pk", "H2", grantee_subject="dr", study_uid="1.2.3", created_by="p", ttl_s=60
        )
        assert state.consents.covering("pk", "H2", "dr", "1.2.3") is not None
        assert state.consents.covering("pk", "H2", "", "1.2.3") is None  # not the hospital
        assert state.consents.covering("pk", "H2", "dr", "1.2.4") is None

    def test_a_consent_code_is_single_use_and_burnt_by_guessing(
        self, state: RegionalState, clock: Clock
    ) -> None:
        code, _ = state.consents.issue_code("pk", bind_subject=False, ttl_s=60, created_by="p")
        ok = state.consents.redeem_code("pk", code, hospital="H2", subject="dr", by="dr")
        assert ok.consent is not None and ok.consent.grantee_hospital == "H2"
        again = state.consents.redeem_code("pk", code, hospital="H2", subject="dr", by="dr")
        assert again.reason == "none"
        code, _ = state.consents.issue_code("pk", bind_subject=True, ttl_s=60, created_by="p")
        wrong = f"{(int(code) + 1) % 10**8:08d}"
        reasons = [
            state.consents.redeem_code("pk", wrong, hospital="H2", subject="dr", by="dr").reason
            for _ in range(CODE_MAX_TRIES)
        ]
        assert reasons == ["wrong"] * (CODE_MAX_TRIES - 1) + ["burnt"]
        burnt = state.consents.redeem_code("pk", code, hospital="H2", subject="dr", by="dr")
        assert burnt.consent is None

    def test_a_request_is_decided_once_and_expires_with_the_clock(
        self, state: RegionalState, clock: Clock
    ) -> None:
        req = state.consents.request("pk", "H2", requested_by="dr", ttl_s=60)
        decided = state.consents.decide(req.id, approve=True, by="patient")
        assert decided is not None and decided.state == "approved" and decided.consent_id
        assert state.consents.decide(req.id, approve=False, by="patient") is None
        late = state.consents.request("pk", "H2", requested_by="dr", ttl_s=60)
        clock.now += 7 * 86400 + 1
        got = state.consents.get_request(late.id)
        assert got is not None and got.state == "expired"


class RegistryContract:
    def test_users_are_registered_disabled_and_looked_up(self, state: RegionalState) -> None:
        state.registry.add_hospital("H1", "City")
        user = state.registry.add_user("dr.li", "H1", "radiologist")
        assert state.registry.user("dr.li") == user and user.enabled
        assert state.registry.set_enabled("dr.li", False)
        got = state.registry.user("dr.li")
        assert got is not None and not got.enabled
        assert state.registry.hospital_names() == {"H1": "City"}
        with pytest.raises(RegistryError):
            state.registry.add_user("dr.wu", "H9", "clinician")  # unknown hospital
        assert not state.registry.set_enabled("nobody", True)


class ReportsContract:
    def test_reports_are_listed_by_study(self, state: RegionalState) -> None:
        r = Report(
            "r1", "1.2.3", "H1", "text/plain", "CT", "final", True, "k", 3, "0" * 64, "x", T0
        )
        state.reports.add(r)
        assert state.reports.of_study("1.2.3") == [r]
        assert state.reports.get("r1") == r and state.reports.get("r2") is None


def _query_plan(state: RegionalState, sql: str) -> str:
    """How the database runs ``sql`` (sequential scans discouraged on PostgreSQL, whose planner
    would scan a table this small whatever its indexes)."""
    if state.db.dialect == "sqlite":
        rows = state.db.conn().execute(f"EXPLAIN QUERY PLAN {sql}").fetchall()
        return " ".join(str(r[-1]) for r in rows)
    with state.db.tx("explain") as conn:
        conn.execute("SET LOCAL enable_seqscan = off")
        return " ".join(str(r[0]) for r in conn.execute(f"EXPLAIN {sql}").fetchall())


class AuditLogContract:
    def test_appends_verify_and_a_cut_tail_is_detected(self, state: RegionalState) -> None:
        for i in range(ANCHOR_EVERY + 2):
            state.audit.append(_event(i))
        verdict = state.audit.check()
        assert verdict.ok and verdict.records == ANCHOR_EVERY + 2
        with state.db.tx("audit") as conn:  # the attacker's edit
            conn.execute("DELETE FROM audit WHERE seq > ?", (ANCHOR_EVERY + 1,))
        verdict = state.audit.check()
        assert not verdict.ok and "cut from the end" in verdict.reason

    def test_writers_in_parallel_keep_one_chain(self, state: RegionalState) -> None:
        def write(base: int) -> None:
            for i in range(20):
                state.audit.append(_event(base + i))

        threads = [threading.Thread(target=write, args=(n * 100,)) for n in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        verdict = state.audit.check()
        assert verdict.ok and verdict.records == 80, verdict

    def test_a_patients_history_is_the_reads_of_their_studies_newest_first(
        self, state: RegionalState
    ) -> None:
        for i, study in enumerate(["1.2.3", "1.2.4", "", "1.2.3"]):
            state.audit.append(_event(i, study))
        reads = state.audit.study_reads(["1.2.3"])
        assert [r["ts"] for r in reads] == [T0 + 3, T0]
        assert state.audit.study_reads([]) == []

    def test_break_glass_reads_come_from_the_via_index_newest_first(
        self, state: RegionalState
    ) -> None:
        vias = ["", "consent:c1", "break-glass:ER", "", "break-glass:trauma", "break-glass"]
        for i, via in enumerate(vias):
            state.audit.append(dataclasses.replace(_event(i, "1.2.3"), via=via))
        forged = '/dicom-web/studies/1.2.3?x="via":"break-glass:forged'  # in another field
        state.audit.append(dataclasses.replace(_event(9), resource=forged))
        glass = state.audit.reads_via("break-glass")
        assert [(e.ts, e.via) for e in glass] == [
            (T0 + 4, "break-glass:trauma"),
            (T0 + 2, "break-glass:ER"),
        ]
        assert [e.ts for e in state.audit.reads_via("break-glass", limit=1)] == [T0 + 4]
        assert [e.via for e in state.audit.reads_via("consent")] == ["consent:c1"]
        with pytest.raises(ValueError):
            state.audit.reads_via("own' OR 1=1 --")
        assert "audit_via" in _query_plan(
            state, "SELECT event FROM audit WHERE via_kind = 'break-glass' ORDER BY seq DESC"
        )

    def test_a_log_written_before_the_via_column_gets_it_on_open(
        self, state: RegionalState
    ) -> None:
        state.audit.append(dataclasses.replace(_event(0, "1.2.3"), via="break-glass:ER"))
        state.audit.append(dataclasses.replace(_event(1), resource='/x?"via":"break-glass:no'))
        state.audit.append(dataclasses.replace(_event(2, "1.2.3"), via="consent:c1"))
        with state.db.tx("audit") as conn:  # the older version's table
            conn.execute("DROP INDEX audit_via")
            conn.execute("ALTER TABLE audit DROP COLUMN via_kind")
        assert "via_kind" not in state.db.columns("audit")
        reopened = SqlAuditLog(state.db, head_key=AUDIT_KEY)
        assert [e.via for e in reopened.reads_via("break-glass")] == ["break-glass:ER"]
        assert [e.via for e in reopened.reads_via("consent")] == ["consent:c1"]
        assert reopened.check().ok
        assert "audit_via" in _query_plan(
            state, "SELECT event FROM audit WHERE via_kind = 'consent' ORDER BY seq DESC"
        )


class RevocationsContract:
    def test_a_revoked_token_is_refused_until_it_would_have_expired(
        self, state: RegionalState, clock: Clock
    ) -> None:
        state.revocations.revoke("0123456789abcdef", T0 + 60)
        assert "0123456789abcdef" in state.revocations
        assert "fedcba9876543210" not in state.revocations
        clock.now += 61
        assert "0123456789abcdef" not in state.revocations
        with pytest.raises(ValueError):
            state.revocations.revoke("'; DROP TABLE x; --", T0)


class GatewayCredentialsContract:
    def test_credentials_assertions_and_tokens(self, state: RegionalState) -> None:
        creds = state.gateway_credentials
        cred = GatewayCredential("gw-1", "H1", b"k" * 32, T0)
        creds.add(cred)
        with pytest.raises(ValueError):
            creds.add(cred)
        assert creds.get("gw-1") == cred and [c.id for c in creds.list("H1")] == ["gw-1"]
        assert creds.use_assertion("gw-1", "j1", T0 + 60, now=T0)
        assert not creds.use_assertion("gw-1", "j1", T0 + 60, now=T0)  # a replay
        creds.add_token("t" * 64, "gw-1", T0 + 60, now=T0)
        grant = creds.token("t" * 64, now=T0)
        assert grant is not None and grant.credential.id == "gw-1"
        assert creds.token("t" * 64, now=T0 + 61) is None
        assert creds.revoke("gw-1", at=T0) and not creds.revoke("gw-1", at=T0)
        got = creds.get("gw-1")
        assert got is not None and got.revoked


class UploadSessionsContract:
    def test_a_session_is_found_only_under_its_hospital_and_settles(
        self, state: RegionalState
    ) -> None:
        ups = state.uploads
        ups.add(UploadSession("s" * 32, "H1", "1.2.3", 100, "a" * 64, T0))
        got = ups.get("H1", "s" * 32)
        assert got is not None and (got.size, got.received, got.result) == (100, 0, None)
        assert ups.get("H2", "s" * 32) is None
        assert [s.session for s in ups.of_hospital("H1")] == ["s" * 32]
        assert ups.of_hospital("H2") == []
        assert [s.session for s in ups.opened_before(T0)] == ["s" * 32]
        assert ups.opened_before(T0 - 1) == []
        ups.settle("s" * 32, {"outcome": "stored", "status": 201})
        got = ups.get("H1", "s" * 32)
        assert got is not None and got.result == {"outcome": "stored", "status": 201}
        ups.delete("s" * 32)
        assert ups.get("H1", "s" * 32) is None

    def test_one_writer_at_a_time_advances_the_offset_it_read(self, state: RegionalState) -> None:
        ups = state.uploads
        ups.add(UploadSession("t" * 32, "H1", "1.2.3", 100, "a" * 64, T0))
        assert ups.lease("t" * 32, "w1", T0, T0 + 60)
        assert not ups.lease("t" * 32, "w2", T0 + 1, T0 + 61)  # w1's lease runs
        assert not ups.advance("t" * 32, "w2", 0, 10, "c0")  # not the writer
        assert ups.advance("t" * 32, "w1", 0, 10, "c1")
        assert not ups.advance("t" * 32, "w1", 0, 20, "c2")  # not the offset it read any more
        ups.release("t" * 32, "w1")
        assert ups.lease("t" * 32, "w2", T0 + 2, T0 + 62)
        assert ups.lease("t" * 32, "w3", T0 + 62, T0 + 122)  # w2's lease ran out
        assert not ups.advance("t" * 32, "w2", 10, 20, "c3")
        assert ups.advance("t" * 32, "w3", 10, 30, "c4")
        got = ups.get("H1", "t" * 32)
        assert got is not None and (got.received, got.chunks) == (30, ("c1", "c4"))
        ups.settle("t" * 32, {"outcome": "stored"})
        assert not ups.advance("t" * 32, "w3", 30, 40, "c5")  # finalized
        assert not ups.lease("u" * 32, "w1", T0, T0 + 60)  # no such session


class StateContract(
    ShareLinksContract,
    ConsentsContract,
    RegistryContract,
    ReportsContract,
    AuditLogContract,
    RevocationsContract,
    GatewayCredentialsContract,
    UploadSessionsContract,
):
    """Every port's contract; a backend's test class provides the ``state`` fixture."""

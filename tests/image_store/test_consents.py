"""The consent store: grants, staff's requests the patient decides, and one-time codes (single
use, short-lived, hashed, burnt by guessing), against the real SQLite file and an injected
clock."""

from __future__ import annotations

from pathlib import Path

from image_store.consents import CODE_MAX_TRIES, CODE_TTL_S, REQUEST_TTL_S, SqlConsents

PERSON = "p" * 64


class Clock:
    def __init__(self) -> None:
        self.now = 1_000_000.0

    def __call__(self) -> float:
        return self.now


def test_a_code_expires_after_ten_minutes_and_is_kept_only_as_a_hash(tmp_path: Path) -> None:
    clock = Clock()
    store = SqlConsents(tmp_path / "consents.sqlite", clock=clock)
    code, expires_at = store.issue_code(PERSON, bind_subject=False, ttl_s=3600, created_by="p")
    assert expires_at == clock.now + CODE_TTL_S
    assert code.encode() not in (tmp_path / "consents.sqlite").read_bytes()
    clock.now += CODE_TTL_S
    late = store.redeem_code(PERSON, code, hospital="H1", subject="dr", by="c")
    assert late.consent is None and late.reason == "none"
    code, _ = store.issue_code(PERSON, bind_subject=True, study_uid="1.2", ttl_s=60, created_by="p")
    made = store.redeem_code(PERSON, code, hospital="H1", subject="dr", by="c")
    assert made.consent is not None
    assert (made.consent.grantee_hospital, made.consent.grantee_subject) == ("H1", "dr")
    assert made.consent.study_uid == "1.2" and made.consent.expires_at == clock.now + 60
    assert store.covering(PERSON, "H1", "dr", "1.2") == made.consent
    assert store.covering(PERSON, "H1", "other", "1.2") is None
    again = store.redeem_code(PERSON, code, hospital="H1", subject="dr", by="c")
    assert again.consent is None and again.reason == "none"
    store.close()


def test_wrong_codes_count_down_and_then_burn_the_code(tmp_path: Path) -> None:
    store = SqlConsents(tmp_path / "consents.sqlite")
    code, _ = store.issue_code(PERSON, bind_subject=False, ttl_s=3600, created_by="p")
    wrong = f"{(int(code) + 1) % 10**8:08d}"
    outcomes = [
        store.redeem_code(PERSON, wrong, hospital="H1", subject="", by="c")
        for _ in range(CODE_MAX_TRIES + 1)
    ]
    assert [o.tries_left for o in outcomes[:-2]] == list(range(CODE_MAX_TRIES - 1, 0, -1))
    assert [o.reason for o in outcomes[-2:]] == ["burnt", "burnt"]
    burnt = store.redeem_code(PERSON, code, hospital="H1", subject="", by="c")
    assert burnt.consent is None and burnt.reason == "burnt"
    assert store.of_person(PERSON) == []
    store.close()


def test_a_request_is_decided_once_and_expires_unanswered(tmp_path: Path) -> None:
    clock = Clock()
    store = SqlConsents(tmp_path / "consents.sqlite", clock=clock)
    first = store.request(PERSON, "H1", subject="dr", requested_by="c", ttl_s=3600)
    second = store.request(PERSON, "H1", requested_by="c", ttl_s=3600)
    approved = store.decide(first.id, approve=True, by="patient")
    assert approved is not None and approved.state == "approved"
    assert store.decide(first.id, approve=False, by="patient") is None
    (grant,) = store.of_person(PERSON)
    assert grant.id == approved.consent_id and grant.grantee_subject == "dr"
    clock.now += REQUEST_TTL_S
    late = store.get_request(second.id)
    assert late is not None and late.state == "expired"
    assert store.decide(second.id, approve=True, by="patient") is None
    assert {r.id for r in store.requests_of(PERSON)} == {first.id, second.id}
    store.close()

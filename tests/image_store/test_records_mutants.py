"""The pure rules of the regional state's records (image_store.state.records): a share link's
state at a given time, its lock, and what its creator, an admin and a report's reader see;
each test kills mutants mutmut found alive (the boundaries, the order of the checks, the
fields shown and the ones never shown)."""

from __future__ import annotations

import dataclasses
import time
from typing import Any

import pytest

from image_store.state.records import BLOCK_AFTER, Report, ShareLink, User

NOW = 1_800_000_000.0
LINK = ShareLink(
    id="L1",
    study_uid="1.2.3",
    hospital="H1",
    created_by="u1",
    created_at=NOW - 100,
    expires_at=NOW + 100,
    revoked_at=None,
    views=3,
)


def _link(**changes: Any) -> ShareLink:
    return dataclasses.replace(LINK, **changes)


def test_a_fresh_link_is_active_without_a_code_or_a_lock() -> None:
    assert LINK.state(NOW) == "active"
    assert not LINK.has_code
    assert not LINK.locked(NOW)
    assert (LINK.scope, LINK.audience, LINK.allow_download) == ("study", "patient", False)
    assert (LINK.failed_codes, LINK.failed_total, LINK.parent_id) == (0, 0, None)


def test_a_link_expires_at_its_expiry_time_not_a_moment_later() -> None:
    link = _link(expires_at=NOW)
    assert link.state(NOW - 0.001) == "active"
    assert link.state(NOW) == "expired"


def test_a_link_is_blocked_at_the_tenth_wrong_code_not_the_ninth() -> None:
    assert BLOCK_AFTER == 10
    assert _link(failed_total=BLOCK_AFTER - 1).state(NOW) == "active"
    assert _link(failed_total=BLOCK_AFTER).state(NOW) == "blocked"


def test_revoked_outranks_expired_which_outranks_blocked() -> None:
    assert _link(revoked_at=NOW, expires_at=NOW - 1, failed_total=99).state(NOW) == "revoked"
    assert _link(expires_at=NOW - 1, failed_total=99).state(NOW) == "expired"
    assert _link(revoked_at=0.0).state(NOW) == "revoked"  # a revocation at time 0 still counts


def test_state_and_lock_default_to_the_clock_when_no_time_is_given() -> None:
    now = time.time()
    assert _link(expires_at=now + 3600).state() == "active"
    assert _link(expires_at=now - 1).state() == "expired"
    assert _link(locked_until=now + 3600).locked()
    assert not _link(locked_until=now - 1).locked()


def test_a_lock_holds_until_its_end_and_lifts_at_it() -> None:
    link = _link(locked_until=NOW)
    assert link.locked(NOW - 0.001)
    assert not link.locked(NOW)
    assert not _link(locked_until=None).locked(NOW)


def test_a_link_with_a_code_hash_has_a_code_even_an_empty_one() -> None:
    assert _link(code_hash="scrypt$x").has_code
    assert _link(code_hash="").has_code


def test_the_creator_sees_every_field_but_the_code_and_its_hash() -> None:
    link = _link(code_hash="scrypt$secret", audience="doctor", allow_download=True)
    shown = link.as_json()
    assert shown == {
        "id": "L1",
        "scope": "study",
        "study_uid": "1.2.3",
        "hospital": "H1",
        "audience": "doctor",
        "allow_download": True,
        "has_code": True,
        "created_at": NOW - 100,
        "expires_at": NOW + 100,
        "state": link.state(),
        "views": 3,
    }
    assert "scrypt$secret" not in repr(shown)


@pytest.mark.parametrize("expires_in, state", [(3600.0, "active"), (-1.0, "expired")])
def test_the_creators_view_gives_the_state_now(expires_in: float, state: str) -> None:
    assert _link(expires_at=time.time() + expires_in).as_json()["state"] == state


def test_a_patient_scope_link_shows_no_study() -> None:
    shown = _link(scope="patient", study_uid="").as_json()
    assert (shown["scope"], shown["study_uid"]) == ("patient", None)


def test_a_user_shows_its_subject_hospital_role_and_whether_enabled() -> None:
    user = User(subject="dr.li", hospital="H2", role="radiologist", enabled=False)
    assert user.as_json() == {
        "subject": "dr.li",
        "hospital": "H2",
        "role": "radiologist",
        "enabled": False,
    }


def test_a_report_shows_its_fields_and_a_url_under_the_base_but_not_its_key_or_hash() -> None:
    report = Report(
        id="R1",
        study_uid="1.2.3",
        hospital="H1",
        media_type="application/pdf",
        title="CT chest",
        status="final",
        mutual_recognition=True,
        object_key="H1/reports/R1",
        size=1234,
        sha256="ab" * 32,
        created_by="dr.wang",
        created_at=NOW,
    )
    assert report.as_json("https://cloud.example") == {
        "id": "R1",
        "study_uid": "1.2.3",
        "hospital": "H1",
        "media_type": "application/pdf",
        "title": "CT chest",
        "status": "final",
        "mutual_recognition": True,
        "size": 1234,
        "created_by": "dr.wang",
        "created_at": NOW,
        "url": "https://cloud.example/api/reports/R1",
    }

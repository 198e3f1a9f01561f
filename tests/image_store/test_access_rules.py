"""The one access decision, every combination of role, hospital, consent and break-glass."""

from __future__ import annotations

import itertools

import pytest

from image_store.access_rules import Access, Reader, decide_access, needs_consent

ROLES = ("admin", "radiologist", "clinician", "auditor", "gateway", "link")


def expected(role: str, own: bool, consent: bool, glass: bool) -> str | None:
    if role == "admin":
        return "admin"
    if role == "auditor":
        return None
    if own:
        return "own"
    if consent:
        return "consent:g1"
    if glass and role in ("radiologist", "clinician"):
        return "break-glass:patient unconscious in ER"
    return None


@pytest.mark.parametrize(
    ("role", "own", "consent", "glass"),
    list(itertools.product(ROLES, (True, False), (True, False), (True, False))),
)
def test_decide_access_follows_the_table(role: str, own: bool, consent: bool, glass: bool) -> None:
    reader = Reader("H1", role, "u1")  # type: ignore[arg-type]
    got = decide_access(
        reader,
        "H1" if own else "H2",
        consent_id="g1" if consent else None,
        break_glass_reason="patient unconscious in ER" if glass else "",
    )
    want = expected(role, own, consent, glass)
    assert (None if got is None else str(got)) == want


def test_readable_hospitals_are_read_without_consent_and_others_need_it() -> None:
    gateway = Reader("H1", "gateway", readable=frozenset({"H1", "H3"}))
    assert decide_access(gateway, "H3") == Access("own")
    assert decide_access(gateway, "H2") is None
    assert needs_consent(gateway, "H2") and not needs_consent(gateway, "H3")


def test_whitespace_reason_is_no_break_glass_and_via_names_the_grant() -> None:
    clinician = Reader("H1", "clinician", "dr")
    assert decide_access(clinician, "H2", break_glass_reason="   ") is None
    access = decide_access(clinician, "H2", consent_id="abc")
    assert access is not None and access.via == "consent:abc"
    assert not needs_consent(Reader("H1", "auditor"), "H2")
    assert not needs_consent(Reader("H1", "admin"), "H2")


def test_an_admin_reads_every_hospital_without_consent_and_an_auditor_not_even_its_own() -> None:
    admin, auditor = Reader("H1", "admin"), Reader("H1", "auditor")
    assert admin.reads_without_consent("H1") and admin.reads_without_consent("H2")
    assert not auditor.reads_without_consent("H1")
    wide = Reader("H1", "auditor", readable=frozenset({"H1", "H2"}))
    assert not wide.reads_without_consent("H2")


def test_another_hospitals_study_is_denied_when_no_reason_is_given_at_all() -> None:
    for role in ("radiologist", "clinician"):
        assert decide_access(Reader("H1", role, "dr"), "H2") is None  # type: ignore[arg-type]

"""Person identifiers as keyed hashes; patients linked at ingest from what the hospital's gateway
delivers (never from other uploads), and links that would move a record or join conflicting
demographics held for review."""

from __future__ import annotations

import io
import json
from pathlib import Path

import pydicom
import pytest
from pydicom.dataset import Dataset

from cloudfilm.synth import synthesize_study
from image_store.index.sqlite import SqliteIndex
from image_store.ingest import LocalIngest
from image_store.metadata import read_header
from image_store.objects.filesystem import FilesystemObjectStore
from image_store.persons import InvalidPersonId, PersonKeyer, link_verdict, normalise
from image_store.records import InstanceQuery, PatientInfo, PatientRef, PersonLink, StudyQuery

KEY = b"r" * 32
RESIDENT_ID = "11010519491231002X"
SYNTH_ISSUER = "CLOUDFILM-SYNTH"  # the Issuer of Patient ID cloudfilm synth writes


def test_equal_identifiers_give_equal_keys_whatever_their_spelling() -> None:
    keyer = PersonKeyer(KEY)
    a = keyer.key("CN_RESIDENT_ID", RESIDENT_ID)
    assert a == keyer.key("cn_resident_id", "110105 19491231 002x")
    assert len(a) == 64 and RESIDENT_ID not in a
    assert a != PersonKeyer(b"s" * 32).key("CN_RESIDENT_ID", RESIDENT_ID)  # needs the region key
    assert a != keyer.key("CN_HEALTH_CARD", RESIDENT_ID)


@pytest.mark.parametrize("value", ["", "12345", "1" * 33, "1234567'; --"])
def test_malformed_identifiers_are_refused(value: str) -> None:
    with pytest.raises(InvalidPersonId):
        normalise(value)


def test_issuers_that_are_not_configured_are_refused() -> None:
    with pytest.raises(InvalidPersonId, match="issuer"):
        PersonKeyer(KEY).key("HOSPITAL_MRN", RESIDENT_ID)


def _with_resident_id(
    path: Path, hospital_pid: str, *, birth_date: str = "19491231", sex: str = "M"
) -> bytes:
    ds = pydicom.dcmread(path)
    ds.PatientID = hospital_pid
    ds.PatientBirthDate = birth_date
    ds.PatientSex = sex
    item = Dataset()
    item.PatientID = RESIDENT_ID
    item.IssuerOfPatientID = "CN_RESIDENT_ID"
    item.TypeOfPatientID = "TEXT"
    ds.OtherPatientIDsSequence = [item]
    out = io.BytesIO()
    ds.save_as(out)
    return out.getvalue()


def _gateway(tmp_path: Path, index: SqliteIndex) -> LocalIngest:
    """The ingest a hospital's gateway delivers through: trusted to link patients."""
    return LocalIngest(
        FilesystemObjectStore(tmp_path / "objects"),
        index,
        persons=PersonKeyer(KEY),
        trusted_links=True,
    )


def test_instances_carrying_a_resident_id_link_their_patients_across_hospitals(
    tmp_path: Path,
) -> None:
    index = SqliteIndex(tmp_path / "index.sqlite")
    ingest = _gateway(tmp_path, index)
    (a,) = synthesize_study(tmp_path / "a", modality="MR", images=1, seed=1)
    (b,) = synthesize_study(tmp_path / "b", modality="MR", images=1, seed=2)
    assert all(o.ok for o in ingest.ingest("H1", [_with_resident_id(a, "MRN-A")]))
    assert all(o.ok for o in ingest.ingest("H2", [_with_resident_id(b, "MRN-B")]))
    link = index.person_link(PatientRef("H1", "MRN-A", SYNTH_ISSUER))
    assert link is not None and link.source == "gateway" and link.trusted
    studies = index.find_studies(StudyQuery(person_key=link.person_key), limit=10)
    assert {s.hospital for s in studies} == {"H1", "H2"}
    # the identifier is nowhere in the index: not in the links, not in the stored metadata
    docs = index.instance_metadata(InstanceQuery())
    assert all(RESIDENT_ID not in d for d in docs)
    assert all("00101002" not in json.loads(d) for d in docs)
    raw = (tmp_path / "index.sqlite").read_bytes()
    assert RESIDENT_ID.encode() not in raw
    index.close()


def test_an_upload_that_is_not_the_gateways_never_links_or_relinks(tmp_path: Path) -> None:
    index = SqliteIndex(tmp_path / "index.sqlite")
    store = FilesystemObjectStore(tmp_path / "objects")
    stow = LocalIngest(store, index, persons=PersonKeyer(KEY))  # as STOW-RS builds it
    (a,) = synthesize_study(tmp_path / "a", modality="MR", images=1, seed=1)
    (b,) = synthesize_study(tmp_path / "b", modality="MR", images=1, seed=2)
    assert all(o.ok for o in stow.ingest("H1", [_with_resident_id(a, "MRN-A")]))
    assert index.person_link(PatientRef("H1", "MRN-A", SYNTH_ISSUER)) is None
    # nor does it move a record an administrator linked
    ref = PatientRef("H2", "MRN-B", SYNTH_ISSUER)
    index.link_patient(ref, "f" * 64, "admin:ops")
    assert all(o.ok for o in stow.ingest("H2", [_with_resident_id(b, "MRN-B")]))
    link = index.person_link(ref)
    assert link is not None and link.person_key == "f" * 64
    assert index.link_reviews() == []
    index.close()


def test_a_link_an_administrator_made_is_not_overwritten_by_ingest_but_held_for_review(
    tmp_path: Path,
) -> None:
    index = SqliteIndex(tmp_path / "index.sqlite")
    ingest = _gateway(tmp_path, index)
    ref = PatientRef("H1", "MRN-A", SYNTH_ISSUER)
    index.link_patient(ref, "f" * 64, "admin:ops")
    (a,) = synthesize_study(tmp_path / "a", modality="MR", images=1, seed=1)
    assert all(o.ok for o in ingest.ingest("H1", [_with_resident_id(a, "MRN-A")]))
    link = index.person_link(ref)
    assert link is not None and link.person_key == "f" * 64
    (review,) = index.link_reviews()
    assert review.patient == ref and review.current_key == "f" * 64
    assert review.person_key != "f" * 64 and "another person" in review.reason
    # delivered again: still one review
    assert all(o.ok for o in ingest.ingest("H1", [_with_resident_id(a, "MRN-A")]))
    assert len(index.link_reviews()) == 1
    assert read_header(_with_resident_id(a, "X1")).person_ids == (
        (SYNTH_ISSUER, "X1"),
        ("CN_RESIDENT_ID", RESIDENT_ID),
    )
    index.close()


def test_a_second_hospitals_record_with_another_birth_date_is_held_for_review(
    tmp_path: Path,
) -> None:
    index = SqliteIndex(tmp_path / "index.sqlite")
    ingest = _gateway(tmp_path, index)
    (a,) = synthesize_study(tmp_path / "a", modality="MR", images=1, seed=1)
    (b,) = synthesize_study(tmp_path / "b", modality="MR", images=1, seed=2)
    assert all(o.ok for o in ingest.ingest("H1", [_with_resident_id(a, "MRN-A")]))
    other = _with_resident_id(b, "MRN-B", birth_date="19800101")
    assert all(o.ok for o in ingest.ingest("H2", [other]))
    ref = PatientRef("H2", "MRN-B", SYNTH_ISSUER)
    assert index.person_link(ref) is None
    (review,) = index.link_reviews()
    assert review.patient == ref and "birth date" in review.reason and review.current_key == ""
    decided = index.decide_link_review(review.id, approve=True, by="admin:H1:ops")
    assert decided is not None and decided.state == "approved"
    link = index.person_link(ref)
    assert link is not None and link.trusted and link.source == "review:admin:H1:ops"
    assert index.link_reviews() == []
    index.close()


def _link(key: str, source: str) -> PersonLink:
    return PersonLink(PatientRef("H1", "P1"), key, source, 0.0)


@pytest.mark.parametrize(
    ("current", "others", "action"),
    [
        (None, [], "apply"),
        (None, [("H1", PatientInfo("X", birth_date="19000101"))], "apply"),  # same hospital
        (None, [("H2", PatientInfo("X", birth_date="19491231", sex="M"))], "apply"),
        (None, [("H2", PatientInfo("X", birth_date="", sex=""))], "apply"),
        (None, [("H2", PatientInfo("X", birth_date="19491230"))], "review"),
        (None, [("H2", PatientInfo("X", sex="F"))], "review"),
        (_link("k", "gateway"), [], "keep"),
        (_link("k", "admin:ops"), [], "keep"),
        (_link("k", "dicom"), [], "apply"),  # an untrusted link confirmed
        (_link("z", "gateway"), [], "review"),
        (_link("z", "admin:ops"), [], "review"),
    ],
)
def test_link_verdicts(
    current: PersonLink | None, others: list[tuple[str, PatientInfo]], action: str
) -> None:
    record = PatientInfo("P1", birth_date="19491231", sex="M")
    assert link_verdict(current, "k", record, others, "H1").action == action

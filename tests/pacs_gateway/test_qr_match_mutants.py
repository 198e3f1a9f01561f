"""C-FIND responses and C-GET/C-MOVE instance lists (pacs_gateway.qr_match) over a real
SQLite index: every return key each level answers, the keys that narrow a level, and the
retrieve levels that name fewer instances than their study; each test kills mutants mutmut
found alive."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from pydicom.dataset import Dataset

from image_store.index.sqlite import SqliteIndex
from image_store.objects.filesystem import FilesystemObjectStore
from pacs_gateway.priors import PriorsSource
from pacs_gateway.qr import BadIdentifier, QrSettings, find_matches, local_source, retrieve_matches
from tests.contracts.index import load_two_hospitals, make_record

H1 = QrSettings(ae_title="GW", hospitals=frozenset({"H1"}))


@pytest.fixture
def source(tmp_path: Path) -> Iterator[PriorsSource]:
    """H1: P1's CT study 1.2.1 (series 1.2.1.1 of five images, SR series 1.2.1.2) and a second
    study 1.2.9 of P1 (two images), P2's MR study 1.3.1; H2: P1's study 2.1 (not readable)."""
    index = SqliteIndex(tmp_path / "i.sqlite")
    load_two_hospitals(index)
    index.add_instances(
        [make_record(study="1.2.9", series="1.2.9.1", sop=f"1.2.9.1.{i}", number=i) for i in (1, 2)]
    )
    yield local_source(index, FilesystemObjectStore(tmp_path / "objects"), H1)
    index.close()


def _ident(level: str, **keys: object) -> Dataset:
    ds = Dataset()
    ds.QueryRetrieveLevel = level
    for k, v in keys.items():
        setattr(ds, k, v)
    return ds


STUDY_KEYS = [
    "IssuerOfPatientID",
    "PatientName",
    "PatientBirthDate",
    "PatientSex",
    "StudyDate",
    "StudyTime",
    "AccessionNumber",
    "StudyDescription",
    "ReferringPhysicianName",
    "StudyID",
    "ModalitiesInStudy",
    "NumberOfStudyRelatedSeries",
    "NumberOfStudyRelatedInstances",
    "InstitutionName",
]


def test_a_study_query_answers_every_return_key_from_the_study_and_one_row_per_study(
    source: PriorsSource,
) -> None:
    ident = _ident("STUDY", PatientID="P1", StudyInstanceUID="", **dict.fromkeys(STUDY_KEYS, ""))
    ident.SpecificCharacterSet = "ISO_IR 100"
    got = {g.StudyInstanceUID: g for g in find_matches(ident, source, "GW")}
    assert sorted(got) == ["1.2.1", "1.2.9"]
    ct = got["1.2.1"]
    assert (ct.SpecificCharacterSet, ct.QueryRetrieveLevel, ct.RetrieveAETitle) == (
        "ISO_IR 192",
        "STUDY",
        "GW",
    )
    assert (ct.PatientID, ct.IssuerOfPatientID, str(ct.PatientName), ct.PatientSex) == (
        "P1",
        "ISS",
        "Zhang^San=张^三",
        "M",
    )
    assert ct.PatientBirthDate in (None, "")  # asked, not known: present and empty
    assert (ct.StudyDate, ct.StudyTime, ct.AccessionNumber) == ("20240105", "101500", "ACC1")
    assert (ct.StudyDescription, str(ct.ReferringPhysicianName), ct.StudyID) == (
        "CHEST",
        "Li^Si",
        "1",
    )
    assert list(ct.ModalitiesInStudy) == ["CT", "SR"]
    assert (ct.NumberOfStudyRelatedSeries, ct.NumberOfStudyRelatedInstances) == (2, 6)
    assert ct.InstitutionName == "H1"
    assert "NumberOfPatientRelatedStudies" not in ct


def test_a_key_the_gateway_does_not_know_is_echoed_with_its_value_or_empty(
    source: PriorsSource,
) -> None:
    ident = _ident("STUDY", StudyInstanceUID="1.2.1", StudyComments="ask", OtherPatientIDs="")
    (got,) = find_matches(ident, source, "GW")
    assert got.StudyComments == "ask"
    assert "OtherPatientIDs" in got and got.OtherPatientIDs in (None, "")


def test_a_patient_query_counts_each_patients_studies(source: PriorsSource) -> None:
    ident = _ident("PATIENT", PatientID="P1", NumberOfPatientRelatedStudies="")
    (got,) = find_matches(ident, source, "GW")
    assert (got.PatientID, got.NumberOfPatientRelatedStudies) == ("P1", 2)


def test_a_series_query_answers_every_series_key_narrowed_by_modality_and_uid(
    source: PriorsSource,
) -> None:
    keys = "Modality SeriesNumber SeriesDescription BodyPartExamined"
    ident = _ident(
        "SERIES",
        StudyInstanceUID="1.2.1",
        SeriesInstanceUID="",
        NumberOfSeriesRelatedInstances="",
        **dict.fromkeys(keys.split(), ""),
    )
    got = {g.SeriesInstanceUID: g for g in find_matches(ident, source, "GW")}
    assert sorted(got) == ["1.2.1.1", "1.2.1.2"]
    ct = got["1.2.1.1"]
    assert (ct.StudyInstanceUID, ct.Modality, ct.SeriesNumber) == ("1.2.1", "CT", 1)
    assert (ct.SeriesDescription, ct.BodyPartExamined) == ("AXIAL", "CHEST")
    assert ct.NumberOfSeriesRelatedInstances == 5
    ident.Modality = "SR"
    assert [g.SeriesInstanceUID for g in find_matches(ident, source, "GW")] == ["1.2.1.2"]
    ident.Modality = ""
    ident.SeriesInstanceUID = "1.2.1.1"
    assert [g.SeriesInstanceUID for g in find_matches(ident, source, "GW")] == ["1.2.1.1"]


def test_an_image_query_answers_every_instance_key_of_the_named_series_only(
    source: PriorsSource,
) -> None:
    keys = "SOPClassUID InstanceNumber Rows Columns NumberOfFrames StudyInstanceUID"
    ident = _ident("IMAGE", SeriesInstanceUID="1.2.1.2", SOPInstanceUID="")
    for k in keys.split():
        setattr(ident, k, None)
    (got,) = find_matches(ident, source, "GW")
    assert (got.SOPInstanceUID, got.SeriesInstanceUID, got.StudyInstanceUID) == (
        "1.2.1.2.1",
        "1.2.1.2",
        "1.2.1",
    )
    assert (got.SOPClassUID, got.InstanceNumber, got.Rows, got.Columns) == (
        "1.2.840.10008.5.1.4.1.1.2",
        1,
        512,
        512,
    )
    assert got.NumberOfFrames in (None, "")


def test_an_image_query_naming_another_study_finds_nothing(source: PriorsSource) -> None:
    ident = _ident("IMAGE", StudyInstanceUID="1.3.1", SeriesInstanceUID="1.2.1.1")
    assert list(find_matches(ident, source, "GW")) == []


@pytest.mark.parametrize(
    ("level", "keys", "message"),
    [
        ("SERIES", {"StudyInstanceUID": "1.2.1\\1.3.1"}, "a SERIES query needs one"),
        ("IMAGE", {"SeriesInstanceUID": "1.2.1.1\\1.2.1.2"}, "an IMAGE query needs one"),
    ],
)
def test_a_lower_level_query_over_several_parents_is_refused_saying_why(
    source: PriorsSource, level: str, keys: dict[str, str], message: str
) -> None:
    with pytest.raises(BadIdentifier, match=message):
        list(find_matches(_ident(level, **keys), source, "GW"))


def _sops(found: list[object]) -> list[str]:
    return sorted(i.sop_uid for i in found)  # type: ignore[attr-defined]


def test_a_patient_retrieve_names_every_study_of_the_patient(source: PriorsSource) -> None:
    found = retrieve_matches(_ident("PATIENT", PatientID="P1"), source)
    assert _sops(found) == [f"1.2.1.1.{i}" for i in range(1, 6)] + ["1.2.1.2.1"] + [
        "1.2.9.1.1",
        "1.2.9.1.2",
    ]


def test_a_study_retrieve_names_whole_studies_whatever_else_the_identifier_holds(
    source: PriorsSource,
) -> None:
    ident = _ident("STUDY", StudyInstanceUID="1.2.9\\1.3.1", SeriesInstanceUID="1.2.9.1")
    ident.SOPInstanceUID = "1.2.9.1.1"
    assert _sops(retrieve_matches(ident, source)) == ["1.2.9.1.1", "1.2.9.1.2", "1.3.1.1.1"]


def test_a_series_retrieve_names_each_listed_series(source: PriorsSource) -> None:
    ident = _ident("SERIES", StudyInstanceUID="1.2.1", SeriesInstanceUID="1.2.1.2")
    ident.SOPInstanceUID = "1.2.1.1.1"
    assert _sops(retrieve_matches(ident, source)) == ["1.2.1.2.1"]


def test_an_image_retrieve_names_only_the_listed_instances(source: PriorsSource) -> None:
    ident = _ident(
        "IMAGE",
        StudyInstanceUID="1.2.1",
        SeriesInstanceUID="1.2.1.1",
        SOPInstanceUID="1.2.1.1.2\\1.2.1.1.5",
    )
    assert _sops(retrieve_matches(ident, source)) == ["1.2.1.1.2", "1.2.1.1.5"]


def test_an_image_retrieve_names_no_instance_of_another_series(source: PriorsSource) -> None:
    ident = _ident(
        "IMAGE", StudyInstanceUID="1.2.1", SeriesInstanceUID="1.2.1.1", SOPInstanceUID="1.2.1.2.1"
    )
    assert retrieve_matches(ident, source) == []

from __future__ import annotations

import warnings
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from pydicom.dataset import Dataset

from image_store.consents import SqlConsents
from image_store.index.sqlite import SqliteIndex
from image_store.objects.filesystem import FilesystemObjectStore
from image_store.records import InstanceSummary, PatientRef
from pacs_gateway.qr import (
    BadIdentifier,
    PriorsSource,
    QrSettings,
    find_matches,
    local_source,
    retrieve_matches,
    send_syntax,
)
from tests.contracts.index import load_two_hospitals

H1 = QrSettings(ae_title="GW", hospitals=frozenset({"H1"}))


@pytest.fixture
def index(tmp_path: Path) -> Iterator[SqliteIndex]:
    idx = SqliteIndex(tmp_path / "i.sqlite")
    load_two_hospitals(idx)
    yield idx
    idx.close()


Src = Callable[[QrSettings], PriorsSource]


@pytest.fixture
def src(index: SqliteIndex, tmp_path: Path) -> Src:
    """The local source over ``index`` for given settings."""
    store = FilesystemObjectStore(tmp_path / "objects")
    return lambda settings: local_source(index, store, settings)


def _ident(level: str, **kw: str) -> Dataset:
    ds = Dataset()
    ds.QueryRetrieveLevel = level
    for k, v in kw.items():
        setattr(ds, k, v)
    return ds


def test_study_level_returns_the_asked_keys_of_visible_studies(
    src: Src, index: SqliteIndex
) -> None:
    got = list(
        find_matches(
            _ident("STUDY", PatientID="P1", StudyInstanceUID="", ModalitiesInStudy=""),
            src(H1),
            "GW",
        )
    )
    assert [g.StudyInstanceUID for g in got] == ["1.2.1"]  # H2's study of P1 is not visible
    assert list(got[0].ModalitiesInStudy) == ["CT", "SR"]
    assert got[0].RetrieveAETitle == "GW"
    assert "PatientName" not in got[0]


def test_patient_level_groups_studies(src: Src, index: SqliteIndex) -> None:
    got = list(
        find_matches(
            _ident(
                "PATIENT",
                PatientName="*",
                PatientID="",
                StudyDate="20000101-20991231",
                NumberOfPatientRelatedStudies="",
            ),
            src(H1),
            "GW",
        )
    )
    assert sorted((g.PatientID, g.NumberOfPatientRelatedStudies) for g in got) == [
        ("P1", 1),
        ("P2", 1),
    ]


def test_image_level_and_uid_lists(src: Src, index: SqliteIndex) -> None:
    got = list(
        find_matches(
            _ident("IMAGE", SeriesInstanceUID="1.2.1.1", SOPInstanceUID="1.2.1.1.2\\1.2.1.1.4"),
            src(H1),
            "GW",
        )
    )
    assert sorted(g.SOPInstanceUID for g in got) == ["1.2.1.1.2", "1.2.1.1.4"]


@pytest.mark.parametrize(
    ("level", "keys"),
    [
        ("WORLD", {}),
        ("SERIES", {}),
        ("IMAGE", {"StudyInstanceUID": "1.2.1"}),
        ("STUDY", {"StudyDate": "2024"}),
        ("STUDY", {"StudyInstanceUID": "1.2.x"}),
    ],
)
def test_bad_identifiers_are_refused(
    src: Src, index: SqliteIndex, level: str, keys: dict[str, str]
) -> None:
    with warnings.catch_warnings():  # pydicom warns about the invalid values we send on purpose
        warnings.simplefilter("ignore")
        ident = _ident(level, **keys)
    with pytest.raises(BadIdentifier):
        list(find_matches(ident, src(H1), "GW"))


@pytest.mark.parametrize(
    ("level", "keys"),
    [
        ("PATIENT", {"PatientName": "*", "PatientID": "*"}),
        ("PATIENT", {"PatientID": "", "NumberOfPatientRelatedStudies": ""}),
        ("STUDY", {"PatientID": "**", "PatientName": "?*"}),
        ("STUDY", {"ModalitiesInStudy": "CT", "StudyInstanceUID": ""}),
        ("STUDY", {"StudyDate": "", "AccessionNumber": "*"}),
    ],
)
def test_find_over_the_whole_hospital_is_refused(
    src: Src, index: SqliteIndex, level: str, keys: dict[str, str]
) -> None:
    with pytest.raises(BadIdentifier, match="universal"):
        list(find_matches(_ident(level, **keys), src(H1), "GW"))


@pytest.mark.parametrize(
    "keys",
    [
        {"StudyDate": "20230610"},
        {"StudyDate": "20230101-"},
        {"PatientName": "Wang*"},
        {"AccessionNumber": "ACC2"},
    ],
)
def test_find_narrowed_by_a_date_name_or_accession_answers(
    src: Src, index: SqliteIndex, keys: dict[str, str]
) -> None:
    got = list(find_matches(_ident("STUDY", StudyInstanceUID="", **keys), src(H1), "GW"))
    assert "1.3.1" in [g.StudyInstanceUID for g in got]


@pytest.mark.parametrize("patient_id", ["*", "", "P*", "?1", "P1\\P2"])
def test_patient_level_retrieve_without_one_exact_patient_id_is_refused(
    src: Src, index: SqliteIndex, patient_id: str
) -> None:
    with pytest.raises(BadIdentifier):
        retrieve_matches(_ident("PATIENT", PatientID=patient_id), src(H1))
    with pytest.raises(BadIdentifier):
        retrieve_matches(_ident("STUDY", PatientID=patient_id, StudyInstanceUID=""), src(H1))
    assert len(retrieve_matches(_ident("PATIENT", PatientID="P1"), src(H1))) == 6


def test_retrieve_names_instances_of_visible_studies_only(src: Src, index: SqliteIndex) -> None:
    assert len(retrieve_matches(_ident("STUDY", StudyInstanceUID="1.2.1"), src(H1))) == 6
    assert retrieve_matches(_ident("STUDY", StudyInstanceUID="2.1"), src(H1)) == []
    series = retrieve_matches(
        _ident("SERIES", StudyInstanceUID="1.2.1", SeriesInstanceUID="1.2.1.2"), src(H1)
    )
    assert [i.sop_uid for i in series] == ["1.2.1.2.1"]
    with pytest.raises(BadIdentifier):
        retrieve_matches(_ident("PATIENT"), src(H1))


def _inst(stored: str, original: str = "") -> InstanceSummary:
    return InstanceSummary(
        hospital="H1",
        study_uid="1.2",
        series_uid="1.2.3",
        sop_uid="1.2.3.4",
        sop_class_uid=CT,
        instance_number=1,
        transfer_syntax_uid=stored,
        rows=512,
        columns=512,
        number_of_frames=None,
        object_key="k",
        size=1,
        sha256="0" * 64,
        original_transfer_syntax_uid=original,
    )


CT = "1.2.840.10008.5.1.4.1.1.2"
ELE, IVLE, JLS = "1.2.840.10008.1.2.1", "1.2.840.10008.1.2", "1.2.840.10008.1.2.4.80"


def test_c_get_sends_the_stored_syntax_when_the_peer_takes_it() -> None:
    assert send_syntax(_inst(JLS, ELE), frozenset({(CT, JLS), (CT, ELE)})) == JLS


def test_c_get_transcodes_to_what_the_peer_takes() -> None:
    assert send_syntax(_inst(JLS, ELE), frozenset({(CT, IVLE)})) == IVLE
    assert send_syntax(_inst(JLS, IVLE), frozenset({(CT, ELE), (CT, IVLE)})) == IVLE


def test_c_move_sends_the_syntax_the_instance_arrived_in() -> None:
    assert send_syntax(_inst(JLS, IVLE), None) == IVLE
    assert send_syntax(_inst(JLS), None) == JLS


def test_the_patients_consent_lets_the_gateway_serve_another_hospitals_priors(
    src: Src, index: SqliteIndex, tmp_path: Path
) -> None:
    consents = SqlConsents(tmp_path / "consents.sqlite")
    settings = QrSettings(
        ae_title="GW",
        hospitals=frozenset({"H1"}),
        hospital="H1",
        consents_path=tmp_path / "consents.sqlite",
    )
    for hospital in ("H1", "H2"):  # patient P1 at both hospitals is one person
        index.link_patient(PatientRef(hospital, "P1", "ISS"), "k" * 64, "admin:test")

    def studies() -> list[str]:
        found = find_matches(
            _ident("STUDY", PatientID="P1", StudyInstanceUID=""), src(settings), "GW"
        )
        return sorted(str(d.StudyInstanceUID) for d in found)

    def h2_study() -> list[InstanceSummary]:
        return retrieve_matches(_ident("STUDY", StudyInstanceUID="2.1"), src(settings))

    assert studies() == ["1.2.1"] and h2_study() == []
    # a grant to one clinician does not open the study to every workstation of the hospital
    consents.grant("k" * 64, "H1", grantee_subject="dr-li", created_by="t", ttl_s=3600)
    assert studies() == ["1.2.1"]
    grant = consents.grant("k" * 64, "H1", created_by="t", ttl_s=3600)
    assert studies() == ["1.2.1", "2.1"]
    assert [i.sop_uid for i in h2_study()] == ["2.1.1.1"]
    ident = _ident("SERIES", StudyInstanceUID="2.1", SeriesInstanceUID="")
    series = find_matches(ident, src(settings), "GW")
    assert [str(s.SeriesInstanceUID) for s in series] == ["2.1.1"]
    consents.revoke(grant.id)
    assert studies() == ["1.2.1"] and h2_study() == []
    consents.close()


def test_a_consent_through_an_untrusted_person_link_serves_no_priors(
    src: Src, index: SqliteIndex, tmp_path: Path
) -> None:
    """A link no trusted source made (e.g. from an instance a user uploaded) opens nothing,
    even with a consent grant on the person."""
    consents = SqlConsents(tmp_path / "consents.sqlite")
    settings = QrSettings(
        ae_title="GW",
        hospitals=frozenset({"H1"}),
        hospital="H1",
        consents_path=tmp_path / "consents.sqlite",
    )
    index.link_patient(PatientRef("H1", "P1", "ISS"), "k" * 64, "admin:test")
    index.link_patient(PatientRef("H2", "P1", "ISS"), "k" * 64, "dicom")  # untrusted
    consents.grant("k" * 64, "H1", created_by="t", ttl_s=3600)
    found = find_matches(_ident("STUDY", PatientID="P1", StudyInstanceUID=""), src(settings), "GW")
    assert sorted(str(d.StudyInstanceUID) for d in found) == ["1.2.1"]
    assert retrieve_matches(_ident("STUDY", StudyInstanceUID="2.1"), src(settings)) == []
    consents.close()

"""The contract every Index backend passes: subclass IndexContract, provide ``index``."""

from __future__ import annotations

import json
from dataclasses import replace

from image_store.ports import Index
from image_store.records import (
    ByteRange,
    FrameLayout,
    InstanceHeader,
    InstanceQuery,
    InstanceRecord,
    PatientInfo,
    PatientRef,
    SeriesQuery,
    StudyQuery,
)


def make_record(
    *,
    hospital: str = "H1",
    patient_id: str = "P1",
    name: str = "Zhang^San=张^三",
    study: str = "1.2.1",
    series: str = "1.2.1.1",
    sop: str = "1.2.1.1.1",
    modality: str = "CT",
    date: str = "20240105",
    accession: str = "ACC1",
    number: int | None = 1,
    sha: str = "a" * 64,
) -> InstanceRecord:
    header = InstanceHeader(
        patient=PatientInfo(patient_id=patient_id, issuer="ISS", name=name, sex="M"),
        study_uid=study,
        study_date=date,
        study_time="101500",
        accession_number=accession,
        study_description="CHEST",
        referring_physician="Li^Si",
        study_id="1",
        series_uid=series,
        modality=modality,
        series_number=1,
        series_description="AXIAL",
        body_part="CHEST",
        sop_uid=sop,
        sop_class_uid="1.2.840.10008.5.1.4.1.1.2",
        instance_number=number,
        transfer_syntax_uid="1.2.840.10008.1.2.1",
        rows=512,
        columns=512,
        number_of_frames=None,
        specific_character_set="ISO_IR 192",
        metadata_json=json.dumps({"00080018": {"vr": "UI", "Value": [sop]}}),
    )
    return InstanceRecord(
        hospital=hospital,
        header=header,
        object_key=f"{hospital}/{study}/{series}/{sop}",
        size=100,
        sha256=sha,
    )


def load_two_hospitals(index: Index) -> None:
    recs = [make_record(sop=f"1.2.1.1.{i}", number=i) for i in range(1, 6)] + [
        make_record(series="1.2.1.2", sop="1.2.1.2.1", modality="SR"),
        make_record(
            study="1.3.1",
            series="1.3.1.1",
            sop="1.3.1.1.1",
            modality="MR",
            date="20230610",
            accession="ACC2",
            patient_id="P2",
            name="Wang^Wu",
        ),
        make_record(
            hospital="H2",
            study="2.1",
            series="2.1.1",
            sop="2.1.1.1",
            modality="CT",
            date="20240301",
            accession="B1",
            patient_id="P1",
            name="Zhang^San",
        ),
    ]
    result = index.add_instances(recs)
    assert result.added == len(recs)


class IndexContract:
    def test_adding_the_same_batch_twice_is_idempotent(self, index: Index) -> None:
        recs = [make_record(sop=f"1.2.1.1.{i}", number=i) for i in range(1, 4)]
        assert index.add_instances(recs).added == 3
        again = index.add_instances(recs)
        assert (again.added, again.unchanged, again.replaced) == (0, 3, 0)
        assert index.count_instances() == 3
        (study,) = index.find_studies(StudyQuery(), limit=10)
        assert (study.number_of_series, study.number_of_instances) == (1, 3)

    def test_same_sop_uid_with_other_bytes_replaces_and_reports_it(self, index: Index) -> None:
        index.add_instances([make_record()])
        result = index.add_instances([make_record(sha="b" * 64)])
        assert result.replaced == 1 and result.replaced_uids == ["1.2.1.1.1"]
        (inst,) = index.find_instances(InstanceQuery(), limit=10)
        assert inst.sha256 == "b" * 64
        (prior,) = index.prior_versions("1.2.1.1.1")
        assert prior.sha256 == "a" * 64 and prior.key.startswith(inst.object_key + ".v-")

    def test_frame_layouts_are_kept_per_content_hash(self, index: Index) -> None:
        native = FrameLayout(pixel_offset=1310, frame_bytes=921600)
        index.add_instances([replace(make_record(), frames=native)])
        encapsulated = FrameLayout(fragments=((2000, 500), (2508, 480)))
        index.add_instances([replace(make_record(sha="b" * 64), frames=encapsulated)])
        assert index.frame_layout("1.2.1.1.1", "a" * 64) == native
        assert index.frame_layout("1.2.1.1.1", "b" * 64) == encapsulated
        assert encapsulated.frame_range(2) == ByteRange(2508, 2988)
        assert native.frame_range(3) == ByteRange(1310 + 2 * 921600, 1310 + 3 * 921600)
        assert index.frame_layout("1.2.1.1.1", "c" * 64) is None
        index.add_instances([make_record(sop="1.2.1.1.2")])
        assert index.frame_layout("1.2.1.1.2", "a" * 64) is None

    def test_a_study_of_another_hospital_is_rejected_not_merged(self, index: Index) -> None:
        index.add_instances([make_record()])
        result = index.add_instances([make_record(hospital="H9", sop="1.2.1.1.99")])
        assert result.rejected and result.rejected[0][0] == "1.2.1.1.99"
        assert index.count_instances() == 1

    def test_study_matching_by_each_attribute(self, index: Index) -> None:
        load_two_hospitals(index)

        def uids(q: StudyQuery) -> list[str]:
            return sorted(s.study_uid for s in index.find_studies(q, limit=100))

        assert uids(StudyQuery()) == ["1.2.1", "1.3.1", "2.1"]
        assert uids(StudyQuery(patient_id="P1")) == ["1.2.1", "2.1"]
        assert uids(StudyQuery(patient_name="zhang*")) == ["1.2.1", "2.1"]
        assert uids(StudyQuery(patient_name="张*")) == ["1.2.1"]
        assert uids(StudyQuery(patient_name="W?ng^Wu")) == ["1.3.1"]
        assert uids(StudyQuery(patient_name="Wang")) == []
        assert uids(StudyQuery(study_date_from="20240101")) == ["1.2.1", "2.1"]
        assert uids(StudyQuery(study_date_to="20231231")) == ["1.3.1"]
        assert uids(StudyQuery(study_date_from="20240101", study_date_to="20240131")) == ["1.2.1"]
        assert uids(StudyQuery(modalities=("MR",))) == ["1.3.1"]
        assert uids(StudyQuery(modalities=("SR", "MR"))) == ["1.2.1", "1.3.1"]
        assert uids(StudyQuery(accession_number="ACC2")) == ["1.3.1"]
        assert uids(StudyQuery(study_uids=("1.3.1", "2.1"))) == ["1.3.1", "2.1"]
        assert uids(StudyQuery(hospitals=frozenset({"H2"}))) == ["2.1"]
        assert uids(StudyQuery(hospitals=frozenset())) == []

    def test_fuzzy_name_matching_takes_the_start_of_any_component(self, index: Index) -> None:
        load_two_hospitals(index)

        def fuzzy(name: str) -> list[str]:
            q = StudyQuery(patient_name=name, patient_name_fuzzy=True)
            return sorted(s.study_uid for s in index.find_studies(q, limit=100))

        assert fuzzy("wang") == ["1.3.1"]
        assert fuzzy("WU") == ["1.3.1"]
        assert fuzzy("ang") == []
        assert fuzzy("张") == ["1.2.1"]

    def test_name_prefixes_and_exact_names_ignore_case_in_every_group(self, index: Index) -> None:
        load_two_hospitals(index)
        index.add_instances(
            [
                make_record(
                    study="1.4", series="1.4.1", sop="1.4.1.1", patient_id="P9", name="Zz^Top"
                )
            ]
        )

        def uids(name: str) -> list[str]:
            return sorted(
                s.study_uid for s in index.find_studies(StudyQuery(patient_name=name), limit=9)
            )

        assert uids("ZHANG^SAN") == ["1.2.1", "2.1"]  # the alphabetic group, whole
        assert uids("zhang^san=张^三") == ["1.2.1"]  # both groups, as stored
        assert uids("zHaNg^S*") == ["1.2.1", "2.1"]
        assert uids("张^三") == ["1.2.1"]
        assert uids("zz*") == ["1.4"] and uids("Zz^Top*") == ["1.4"] and uids("Zz^Tp*") == []
        assert uids("*san") == ["1.2.1", "2.1"] and uids("*三") == ["1.2.1"]

    def test_wildcards_match_literally_percent_and_underscore(self, index: Index) -> None:
        index.add_instances([make_record(name="A_B%C")])
        assert index.find_studies(StudyQuery(patient_name="A_B%*"), limit=5)
        assert not index.find_studies(StudyQuery(patient_name="AxB*"), limit=5)

    def test_studies_come_newest_first_with_limit_and_offset(self, index: Index) -> None:
        load_two_hospitals(index)
        all_ = [s.study_uid for s in index.find_studies(StudyQuery(), limit=10)]
        assert all_ == ["2.1", "1.2.1", "1.3.1"]
        assert [s.study_uid for s in index.find_studies(StudyQuery(), limit=1, offset=1)] == [
            "1.2.1"
        ]

    def test_study_record_carries_modalities_and_counts(self, index: Index) -> None:
        load_two_hospitals(index)
        study = index.get_study("1.2.1")
        assert study is not None
        assert study.modalities == ("CT", "SR")
        assert (study.number_of_series, study.number_of_instances) == (2, 6)
        assert study.patient.name == "Zhang^San=张^三"
        assert index.get_study("9.9.9") is None

    def test_series_and_instances_of_a_study(self, index: Index) -> None:
        load_two_hospitals(index)
        series = index.find_series(SeriesQuery(study_uid="1.2.1"), limit=10)
        assert [s.series_uid for s in series] == ["1.2.1.1", "1.2.1.2"]
        assert series[0].number_of_instances == 5
        assert [s.series_uid for s in index.find_series(SeriesQuery(modality="SR"), limit=9)] == [
            "1.2.1.2"
        ]
        insts = index.find_instances(InstanceQuery(series_uid="1.2.1.1"), limit=10)
        assert [i.instance_number for i in insts] == [1, 2, 3, 4, 5]
        assert (
            index.find_instances(InstanceQuery(series_uid="1.2.1.1"), limit=2, offset=3)[
                0
            ].instance_number
            == 4
        )

    def test_metadata_of_a_series_is_one_read_in_instance_order(self, index: Index) -> None:
        load_two_hospitals(index)
        docs = [json.loads(m) for m in index.instance_metadata(InstanceQuery(series_uid="1.2.1.1"))]
        assert [d["00080018"]["Value"][0] for d in docs] == [f"1.2.1.1.{i}" for i in range(1, 6)]

    def test_hospital_restriction_applies_to_series_and_instances(self, index: Index) -> None:
        load_two_hospitals(index)
        only_h2 = frozenset({"H2"})
        assert index.find_series(SeriesQuery(study_uid="1.2.1", hospitals=only_h2), limit=9) == []
        assert (
            index.find_instances(InstanceQuery(study_uid="1.2.1", hospitals=only_h2), limit=9) == []
        )

    def test_linked_patients_of_several_hospitals_give_one_persons_studies(
        self, index: Index
    ) -> None:
        load_two_hospitals(index)  # P1 at H1 (study 1.2.1) and P1 at H2 (study 2.1): not linked
        a, b = PatientRef("H1", "P1", "ISS"), PatientRef("H2", "P1", "ISS")
        assert index.person_link(a) is None
        index.link_patient(a, "k" * 64, "admin:test")
        index.link_patient(b, "k" * 64, "dicom")
        studies = index.find_studies(StudyQuery(person_key="k" * 64), limit=10)
        assert [s.study_uid for s in studies] == ["2.1", "1.2.1"]  # newest first
        link = index.person_link(a)
        assert link is not None and link.source == "admin:test"
        assert [x.patient for x in index.linked_patients("k" * 64)] == [a, b]
        assert index.find_studies(StudyQuery(person_key="z" * 64), limit=10) == []

    def test_held_links_wait_for_a_decision_and_an_approval_applies_them(
        self, index: Index
    ) -> None:
        load_two_hospitals(index)
        a, b = PatientRef("H1", "P1", "ISS"), PatientRef("H2", "P1", "ISS")
        index.link_patient(a, "a" * 64, "gateway")
        first = index.hold_link(a, "b" * 64, "a" * 64, "gateway", "linked to another person")
        again = index.hold_link(a, "b" * 64, "a" * 64, "gateway", "linked to another person")
        other = index.hold_link(b, "a" * 64, "", "gateway", "birth date differs")
        assert first.id == again.id != other.id and first.state == "pending"
        assert [r.id for r in index.link_reviews()] == [first.id, other.id]
        rejected = index.decide_link_review(other.id, approve=False, by="admin:X:ops")
        assert rejected is not None and rejected.state == "rejected"
        assert index.person_link(b) is None
        assert index.decide_link_review(other.id, approve=True, by="admin:X:ops") is None
        approved = index.decide_link_review(first.id, approve=True, by="admin:X:ops")
        assert approved is not None and approved.state == "approved"
        assert approved.decided_by == "admin:X:ops"
        link = index.person_link(a)
        assert link is not None and link.person_key == "b" * 64 and link.trusted
        assert index.link_reviews() == []
        assert {r.state for r in index.link_reviews(pending_only=False)} == {
            "approved",
            "rejected",
        }
        assert index.decide_link_review(10**9, approve=True, by="admin:X:ops") is None

    def test_only_the_gateway_and_administrators_are_trusted_link_sources(
        self, index: Index
    ) -> None:
        load_two_hospitals(index)
        a = PatientRef("H1", "P1", "ISS")
        for source, trusted in (("gateway", True), ("admin:x", True), ("dicom", False)):
            index.link_patient(a, "k" * 64, source)
            link = index.person_link(a)
            assert link is not None and link.trusted is trusted, source

    def test_unlink_and_merge_persons(self, index: Index) -> None:
        load_two_hospitals(index)
        a, b = PatientRef("H1", "P1", "ISS"), PatientRef("H2", "P1", "ISS")
        index.link_patient(a, "a" * 64, "dicom")
        index.link_patient(b, "b" * 64, "dicom")
        assert index.merge_persons("b" * 64, "a" * 64) == 1
        assert len(index.linked_patients("a" * 64)) == 2
        assert index.unlink_patient(b) is True
        assert index.unlink_patient(b) is False
        assert [
            s.study_uid for s in index.find_studies(StudyQuery(person_key="a" * 64), limit=9)
        ] == ["1.2.1"]

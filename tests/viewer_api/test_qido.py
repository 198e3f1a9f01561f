"""QIDO-RS matching over pydicom's test files and synthetic studies at two hospitals."""

from __future__ import annotations

from typing import Any
from urllib.parse import quote

import pytest

from tests.viewer_api.conftest import BASE, Api, Regional, uids

CT_SMALL = uids("CT_small.dcm")
MR_SMALL = uids("MR_small.dcm")
SC = uids("SC_rgb_rle.dcm")
CT_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.2"
MR_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.4"


async def _get(api: Api, url: str, **tok: Any) -> list[dict[str, Any]]:
    r = await api.client.get(url, headers=api.token(**tok))
    assert r.status == 200, await r.text()
    assert r.headers["Content-Type"].startswith("application/dicom+json")
    out: list[dict[str, Any]] = await r.json()
    return out


def _values(items: list[dict[str, Any]], tag: str) -> set[str]:
    return {i[tag]["Value"][0] for i in items}


async def _study_uids(api: Api, query: str, **tok: Any) -> set[str]:
    return _values(await _get(api, f"/dicom-web/studies?{query}", **tok), "0020000D")


async def test_each_study_attribute_matches_by_keyword_and_by_tag(regional: Regional) -> None:
    api, ct = regional.api, regional.ct[0]
    synth = ct.StudyInstanceUID
    small = {CT_SMALL.StudyInstanceUID, MR_SMALL.StudyInstanceUID}
    cases = {
        f"PatientID={ct.PatientID}": {synth},
        f"00100020={ct.PatientID}": {synth},
        "PatientID=?CT1": {CT_SMALL.StudyInstanceUID},
        "PatientName=liu*": {synth},
        f"PatientName={quote('刘*')}": {synth},
        "PatientName=*%5EMR?": {MR_SMALL.StudyInstanceUID},
        f"AccessionNumber={ct.AccessionNumber}": {synth},
        f"00080050={ct.AccessionNumber}": {synth},
        "ReferringPhysicianName=li%5Eming*": {synth},
        "00080090=*ming*": {synth},
        "StudyDescription=ct%20chest": {synth},
        "StudyDescription=e%2B1": {CT_SMALL.StudyInstanceUID},
        "00081030=*CHEST": {synth},
        f"StudyInstanceUID={synth},{MR_SMALL.StudyInstanceUID}": {synth, MR_SMALL.StudyInstanceUID},
        f"0020000D={CT_SMALL.StudyInstanceUID}": {CT_SMALL.StudyInstanceUID},
        "ModalitiesInStudy=CT": {synth, CT_SMALL.StudyInstanceUID},
        "ModalitiesInStudy=MR&ModalitiesInStudy=CT": small | {synth},
        "00080061=MR": {MR_SMALL.StudyInstanceUID},
    }
    for query, expected in cases.items():
        assert await _study_uids(api, query) == expected, query


async def test_study_date_exact_and_ranges(regional: Regional) -> None:
    api, synth = regional.api, regional.ct[0]
    day = synth.StudyDate
    cases = {
        f"StudyDate={day}": {synth.StudyInstanceUID},
        f"00080020={CT_SMALL.StudyDate}": {CT_SMALL.StudyInstanceUID},
        f"StudyDate={CT_SMALL.StudyDate}-{MR_SMALL.StudyDate}": {
            CT_SMALL.StudyInstanceUID,
            MR_SMALL.StudyInstanceUID,
        },
        f"StudyDate={MR_SMALL.StudyDate}-": {MR_SMALL.StudyInstanceUID, synth.StudyInstanceUID},
        f"StudyDate=-{CT_SMALL.StudyDate}": {CT_SMALL.StudyInstanceUID},
        "StudyDate=20050101-20051231": set(),
    }
    for query, expected in cases.items():
        assert await _study_uids(api, query) == expected, query


async def test_attributes_combine_with_and(regional: Regional) -> None:
    api, synth = regional.api, regional.ct[0]
    assert await _study_uids(api, f"ModalitiesInStudy=CT&StudyDate={synth.StudyDate}-") == {
        synth.StudyInstanceUID
    }
    assert await _study_uids(api, f"PatientID={synth.PatientID}&ModalitiesInStudy=MR") == set()


async def test_clinicians_never_see_another_hospitals_studies(regional: Regional) -> None:
    api, mr_h2 = regional.api, regional.mr_h2[0]
    query = f"PatientID={mr_h2.PatientID}"
    assert await _study_uids(api, query) == set()
    assert await _study_uids(api, query, hospital="H2") == {mr_h2.StudyInstanceUID}
    assert await _study_uids(api, query, role="admin") == {mr_h2.StudyInstanceUID}
    everything = await _study_uids(api, "", role="admin")
    assert {SC.StudyInstanceUID, mr_h2.StudyInstanceUID} <= everything
    assert len(everything) == 5
    h1 = await _study_uids(api, "")
    assert len(h1) == 3 and SC.StudyInstanceUID not in h1
    series = await _get(api, "/dicom-web/series?Modality=MR")
    assert _values(series, "0020000E") == {MR_SMALL.SeriesInstanceUID}
    instances = await _get(api, f"/dicom-web/instances?SOPClassUID={MR_IMAGE_STORAGE}")
    assert _values(instances, "00080018") == {MR_SMALL.SOPInstanceUID}


async def test_limit_and_offset_page_without_overlap(regional: Regional) -> None:
    api = regional.api
    everything = await _get(api, "/dicom-web/studies", role="admin")
    seen: list[str] = []
    for offset in range(0, 6, 2):
        page = await _get(api, f"/dicom-web/studies?limit=2&offset={offset}", role="admin")
        assert len(page) <= 2
        seen += [s["0020000D"]["Value"][0] for s in page]
    assert sorted(seen) == sorted(_values(everything, "0020000D"))
    assert await _get(api, "/dicom-web/studies?offset=99", role="admin") == []


async def test_limit_is_capped_by_the_settings(
    loaded: Any, tmp_path: Any, aiohttp_client: Any
) -> None:
    from tests.viewer_api.conftest import make_api
    from viewer_api.app import ViewerSettings

    store, index, files = loaded
    settings = ViewerSettings(public_base_url=BASE, max_limit=2, default_limit=1)
    api = await make_api(store, index, files, tmp_path, aiohttp_client, settings)
    assert len(await _get(api, "/dicom-web/studies", role="admin")) == 1
    assert len(await _get(api, "/dicom-web/studies?limit=1000", role="admin")) == 2


async def test_series_level_matching(regional: Regional) -> None:
    api = regional.api
    localizer, axial = regional.ct[0], regional.ct[1]
    study = localizer.StudyInstanceUID
    base = f"/dicom-web/studies/{study}/series"
    both = {localizer.SeriesInstanceUID, axial.SeriesInstanceUID}
    assert _values(await _get(api, base), "0020000E") == both
    assert _values(await _get(api, f"{base}?SeriesNumber=2"), "0020000E") == {
        axial.SeriesInstanceUID
    }
    assert _values(await _get(api, f"{base}?00200011=1"), "0020000E") == {
        localizer.SeriesInstanceUID
    }
    assert _values(await _get(api, f"{base}?Modality=MR"), "0020000E") == set()
    everywhere = await _get(api, "/dicom-web/series?Modality=CT")
    assert _values(everywhere, "0020000E") == both | {CT_SMALL.SeriesInstanceUID}
    listed = f"{localizer.SeriesInstanceUID},{CT_SMALL.SeriesInstanceUID}"
    by_uid = await _get(api, f"/dicom-web/series?0020000E={listed}")
    assert _values(by_uid, "0020000E") == {localizer.SeriesInstanceUID, CT_SMALL.SeriesInstanceUID}


async def test_series_json_carries_standard_attributes(regional: Regional) -> None:
    api, axial = regional.api, regional.ct[1]
    (s,) = await _get(api, f"/dicom-web/studies/{axial.StudyInstanceUID}/series?SeriesNumber=2")
    assert s["00080060"] == {"vr": "CS", "Value": ["CT"]}
    assert s["00200011"]["Value"] == [2]
    assert s["0008103E"]["Value"] == [axial.SeriesDescription]
    assert s["00201209"]["Value"] == [3]
    assert "00180015" in s
    assert s["00081190"]["Value"] == [
        f"{BASE}/dicom-web/studies/{axial.StudyInstanceUID}/series/{axial.SeriesInstanceUID}"
    ]


async def test_instance_level_matching(regional: Regional) -> None:
    api, ct = regional.api, regional.ct
    study, axial = ct[0].StudyInstanceUID, ct[1].SeriesInstanceUID
    in_series = f"/dicom-web/studies/{study}/series/{axial}/instances"
    in_study = f"/dicom-web/studies/{study}/instances"
    assert len(await _get(api, in_series)) == 3
    assert len(await _get(api, in_study)) == 4
    second = await _get(api, f"{in_series}?InstanceNumber=2")
    assert _values(second, "00080018") == {ct[2].SOPInstanceUID}
    by_tag = await _get(api, f"{in_study}?00200013=3")
    assert _values(by_tag, "00080018") == {ct[3].SOPInstanceUID}
    listed = f"{ct[1].SOPInstanceUID},{ct[3].SOPInstanceUID}"
    assert _values(await _get(api, f"{in_study}?SOPInstanceUID={listed}"), "00080018") == {
        ct[1].SOPInstanceUID,
        ct[3].SOPInstanceUID,
    }
    classes = await _get(api, f"/dicom-web/instances?00080016={CT_IMAGE_STORAGE}")
    assert _values(classes, "00080018") == {d.SOPInstanceUID for d in ct} | {
        CT_SMALL.SOPInstanceUID
    }
    of_series = await _get(api, f"/dicom-web/instances?SeriesInstanceUID={ct[0].SeriesInstanceUID}")
    assert _values(of_series, "00080018") == {ct[0].SOPInstanceUID}


async def test_instance_json_carries_standard_attributes(regional: Regional) -> None:
    api, inst = regional.api, regional.ct[2]
    url = (
        f"/dicom-web/studies/{inst.StudyInstanceUID}/series/{inst.SeriesInstanceUID}"
        f"/instances?SOPInstanceUID={inst.SOPInstanceUID}"
    )
    (doc,) = await _get(api, url)
    assert doc["00080016"]["Value"] == [CT_IMAGE_STORAGE]
    assert doc["00200013"]["Value"] == [2]
    assert doc["00280010"]["Value"] == [inst.Rows]
    assert doc["00280011"]["Value"] == [inst.Columns]
    assert "00280008" in doc
    assert doc["00083002"]["Value"] == [inst.file_meta.TransferSyntaxUID]
    assert doc["00081190"]["Value"] == [
        f"{BASE}/dicom-web/studies/{inst.StudyInstanceUID}/series/{inst.SeriesInstanceUID}"
        f"/instances/{inst.SOPInstanceUID}"
    ]


async def test_study_json_splits_person_names_into_groups(regional: Regional) -> None:
    api, ct = regional.api, regional.ct[0]
    (study,) = await _get(api, f"/dicom-web/studies?PatientID={ct.PatientID}")
    alpha, ideo = str(ct.PatientName).split("=")
    assert study["00100010"] == {"vr": "PN", "Value": [{"Alphabetic": alpha, "Ideographic": ideo}]}
    assert study["00080090"]["Value"] == [{"Alphabetic": "Li^Ming", "Ideographic": "李^明"}]
    assert study["00100021"]["Value"] == [ct.IssuerOfPatientID]
    assert study["00100040"]["Value"] == [ct.PatientSex]
    assert study["00100030"]["Value"] == [ct.PatientBirthDate]
    assert study["00080020"]["Value"] == [ct.StudyDate]
    assert study["00080050"]["Value"] == [ct.AccessionNumber]
    assert study["00201206"]["Value"] == [2]
    assert study["00201208"]["Value"] == [4]
    for tag in ("00080030", "00081030", "00200010", "00080061", "00081190"):
        assert "Value" in study[tag], tag


@pytest.mark.parametrize(
    "query",
    [
        "includefield=all",
        "includefield=00081030,PatientAge&includefield=00100010",
        "fuzzymatching=true",
        "fuzzymatching=false&limit=5&offset=0",
    ],
)
async def test_includefield_and_fuzzymatching_are_accepted(regional: Regional, query: str) -> None:
    found = await _get(regional.api, f"/dicom-web/studies?{query}")
    assert len(found) == 3
    assert all("0020000D" in s and "00100010" in s for s in found)


@pytest.mark.parametrize(
    "url",
    [
        "/dicom-web/series?Modality=M*",
        "/dicom-web/series?SeriesNumber=two",
        "/dicom-web/series?PatientID=x",
        "/dicom-web/series?SeriesInstanceUID=1.2.x",
        "/dicom-web/instances?InstanceNumber=1.5",
        "/dicom-web/instances?SOPInstanceUID=abc",
        "/dicom-web/instances?StudyDate=20240101",
        "/dicom-web/studies?limit=0",
        "/dicom-web/studies?offset=-3",
        "/dicom-web/studies?PatientID=a&PatientID=b",
        "/dicom-web/studies?StudyDate=--",
        "/dicom-web/studies?StudyDate=2024-01-01",
    ],
)
async def test_malformed_or_unknown_parameters_are_400_json(api: Api, url: str) -> None:
    r = await api.client.get(url, headers=api.token())
    assert r.status == 400, url
    body = await r.json()
    assert body["status"] == 400 and body["error"]


async def test_empty_results_are_an_empty_array(api: Api) -> None:
    r = await api.client.get("/dicom-web/studies?PatientID=nobody", headers=api.token())
    assert r.status == 200 and await r.json() == []


async def test_a_search_under_an_unknown_or_unreadable_study_is_the_same_empty_array(
    api: Api,
) -> None:
    # SC_rgb_rle.dcm is H2's: an H1 clinician may not read it (no consent, no break-glass)
    answers = []
    for study, series in (
        (SC.StudyInstanceUID, SC.SeriesInstanceUID),
        ("1.2.3.4.5", "1.2.3.4.6"),
        (CT_SMALL.StudyInstanceUID, "1.2.3.4.6"),  # a readable study, a series not in it
    ):
        for path in (
            f"/dicom-web/studies/{study}/series",
            f"/dicom-web/studies/{study}/instances",
            f"/dicom-web/studies/{study}/series/{series}/instances",
        ):
            r = await api.client.get(path + "?limit=5", headers=api.token())
            if study == CT_SMALL.StudyInstanceUID and path.endswith("/series"):
                continue  # that study has series: not an empty search
            if study == CT_SMALL.StudyInstanceUID and path.endswith(f"{study}/instances"):
                continue
            answers.append((r.status, r.headers["Content-Type"], await r.read()))
    assert answers == [(200, "application/dicom+json; charset=utf-8", b"[]")] * 7
    # H2 itself finds its study's series and instances there
    r = await api.client.get(
        f"/dicom-web/studies/{SC.StudyInstanceUID}/series/{SC.SeriesInstanceUID}/instances",
        headers=api.token(hospital="H2"),
    )
    assert r.status == 200 and len(await r.json()) == 1


async def test_includefield_adds_named_attributes_from_the_stored_headers(
    regional: Regional,
) -> None:
    ct = regional.ct[1]
    study_url = f"/dicom-web/studies?StudyInstanceUID={ct.StudyInstanceUID}"
    (plain,) = await _get(regional.api, study_url)
    assert "00101010" not in plain  # PatientAge is not a default study attribute
    (study,) = await _get(regional.api, f"{study_url}&includefield=PatientAge,00080070")
    assert study["00101010"]["Value"] == [ct.PatientAge]
    assert study["00080070"]["Value"] == [ct.Manufacturer]
    series = await _get(
        regional.api,
        f"/dicom-web/studies/{ct.StudyInstanceUID}/series?includefield=00081090",
    )
    assert {s["00081090"]["Value"][0] for s in series} == {ct.ManufacturerModelName}


async def test_includefield_all_adds_the_attributes_of_each_level(regional: Regional) -> None:
    ct = regional.ct[1]
    (study,) = await _get(
        regional.api, f"/dicom-web/studies?StudyInstanceUID={ct.StudyInstanceUID}&includefield=all"
    )
    assert study["00101010"]["Value"] == [ct.PatientAge]  # patient module
    assert "00080070" not in study  # Manufacturer is a series attribute
    series = await _get(
        regional.api, f"/dicom-web/studies/{ct.StudyInstanceUID}/series?includefield=all"
    )
    assert all(s["00080070"]["Value"] == [ct.Manufacturer] for s in series)
    insts = await _get(
        regional.api,
        f"/dicom-web/studies/{ct.StudyInstanceUID}/series/{ct.SeriesInstanceUID}/instances"
        "?includefield=all",
    )
    assert all("00200032" in i for i in insts)  # ImagePositionPatient, an instance attribute
    assert all("7FE00010" not in i for i in insts)


async def test_an_unknown_includefield_attribute_is_400(api: Api) -> None:
    r = await api.client.get("/dicom-web/studies?includefield=NoSuchThing", headers=api.token())
    assert r.status == 400
    assert "includefield" in (await r.json())["error"]


async def test_fuzzymatching_finds_a_name_by_the_start_of_any_component(
    regional: Regional,
) -> None:
    name = str(regional.ct[0].PatientName)
    _, _, given = name.partition("^")
    assert given, name
    probe = given[:3].lower()
    strict = await _get(regional.api, f"/dicom-web/studies?PatientName={probe}")
    fuzzy = await _get(regional.api, f"/dicom-web/studies?PatientName={probe}&fuzzymatching=true")
    assert strict == []
    assert regional.ct[0].StudyInstanceUID in _values(fuzzy, "0020000D")


async def test_the_study_search_ohif_makes_gets_description_and_modality(
    regional: Regional,
) -> None:
    found = await _get(
        regional.api,
        "/dicom-web/studies?limit=101&offset=0&fuzzymatching=false"
        "&includefield=00081030%2C00080060",
    )
    ct = next(s for s in found if s["0020000D"]["Value"] == [regional.ct[0].StudyInstanceUID])
    assert ct["00080060"]["Value"] == [regional.ct[0].Modality]
    assert "00081030" in ct

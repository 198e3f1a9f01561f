"""The stored DICOM JSON is pydicom's, element for element, however many instances of a
series came before (the JSON of repeated header elements is remembered by their bytes)."""

from __future__ import annotations

import io
import json
import warnings
from pathlib import Path
from typing import Any

import pydicom
import pydicom.data
from pydicom.dataelem import DataElement

from cloudfilm.synth import synthesize_study
from image_store import metadata
from image_store.errors import InvalidDicom
from image_store.metadata import read_header


def _reference(data: bytes) -> dict[str, Any]:
    """The JSON straight from pydicom's Dataset.to_json_dict, as the index must hold it."""
    ds = pydicom.dcmread(io.BytesIO(data), stop_before_pixels=True, force=True)
    path = (
        f"/dicom-web/studies/{ds.StudyInstanceUID}/series/{ds.SeriesInstanceUID}"
        f"/instances/{ds.SOPInstanceUID}"
    )

    def bulk(elem: DataElement) -> str:
        return f"{path}/bulkdata/{elem.tag:08X}"

    for tag in (0x00101000, 0x00101002):
        if tag in ds:
            del ds[tag]
    doc = ds.to_json_dict(bulk_data_threshold=1024, bulk_data_element_handler=bulk)
    if "Rows" in ds:
        syntax = ds.file_meta.TransferSyntaxUID
        vr = "OB" if syntax.is_encapsulated else "OW"
        doc["7FE00010"] = {"vr": vr, "BulkDataURI": f"{path}/bulkdata/7FE00010"}
    return doc


def _headers(paths: list[Path]) -> list[tuple[str, bytes, dict[str, Any]]]:
    out = []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for p in paths:
            data = p.read_bytes()
            try:
                h = read_header(data)
                want = _reference(data)
            except (InvalidDicom, AttributeError, ValueError, KeyError, TypeError):
                continue  # not an instance the index takes
            out.append((p.name, data, json.loads(h.metadata_json)))
            assert json.loads(h.metadata_json) == want, p.name
    return out


def test_pydicoms_test_files_twice_give_pydicoms_json() -> None:
    local = Path(pydicom.data.__file__).parent / "test_files"  # no download
    paths = sorted(local.rglob("*.dcm"))
    metadata._json_memo.clear()
    first = _headers(paths)
    assert len(first) > 50
    again = _headers(paths)  # every short element's JSON now comes from the memo
    assert [d for _, _, d in again] == [d for _, _, d in first]


def test_a_series_repeats_its_header_from_memory_but_not_what_differs(
    tmp_path: Path,
) -> None:
    paths = synthesize_study(tmp_path, modality="CT", images=5, seed=11)
    metadata._json_memo.clear()
    docs = [d for _, _, d in _headers(paths)]
    assert len({d["00080018"]["Value"][0] for d in docs}) == len(paths)  # these differ
    assert len({json.dumps(d["00200032"]) for d in docs}) == len(paths)  # these too
    assert len({d["0020000D"]["Value"][0] for d in docs}) == 1
    assert len(metadata._json_memo) > 0


def test_the_same_bytes_under_another_character_set_are_decoded_by_it(tmp_path: Path) -> None:
    path = synthesize_study(tmp_path, modality="CT", images=1, seed=5)[0]
    utf8 = path.read_bytes()
    assert pydicom.dcmread(io.BytesIO(utf8)).SpecificCharacterSet == "ISO_IR 192"
    # the same length, so every other element stays the bytes it was
    relabelled = utf8.replace(b"ISO_IR 192", b"ISO_IR 100", 1)
    metadata._json_memo.clear()
    docs = []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for data in (utf8, relabelled):
            got = json.loads(read_header(data).metadata_json)
            assert got == _reference(data)
            docs.append(got)
    name = "00100010"
    assert docs[0][name] != docs[1][name]  # a non-ASCII name, decoded two ways

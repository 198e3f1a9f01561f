"""The quick structure walk never calls complete what pydicom would refuse."""

from __future__ import annotations

import io
import random
from pathlib import Path

import pytest

from image_store.errors import InvalidDicom
from image_store.metadata import InstanceIdentity, _check
from image_store.structure import quick_identity
from tests.corpus import CORPUS, check_corpus


def _pydicom_verdict(data: bytes) -> InstanceIdentity | None:
    try:
        return _check(io.BytesIO(data), len(data), defer=False)
    except InvalidDicom:
        return None


def _agrees(data: bytes) -> bool:
    """The walk is either unsure, or says what pydicom says."""
    quick = quick_identity(data)
    if quick is None:
        return True
    ident = _pydicom_verdict(data)
    return ident is not None and (
        ident.sop_class_uid,
        ident.sop_instance_uid,
        ident.study_uid,
    ) == (quick.sop_class_uid, quick.sop_instance_uid, quick.study_uid)


@pytest.mark.filterwarnings("ignore")
def test_on_the_corpus_the_walk_agrees_with_pydicom_and_is_sure_of_most() -> None:
    check_corpus()
    sure = accepted = 0
    for path in CORPUS:
        data = Path(path).read_bytes()
        assert _agrees(data), path
        sure += quick_identity(data) is not None
        accepted += _pydicom_verdict(data) is not None
    assert sure >= 0.75 * accepted, f"sure of {sure} of the {accepted} files pydicom accepts"


_DAMAGED = [
    "CT_small.dcm",  # explicit VR
    "MR_small_implicit.dcm",  # implicit VR
    "JPEG2000.dcm",  # encapsulated pixel data
    "rtplan.dcm",  # nested sequences
    "SC_rgb_rle.dcm",  # RLE fragments
    "liver.dcm",  # undefined-length sequences
]


@pytest.mark.filterwarnings("ignore")
@pytest.mark.parametrize("name", _DAMAGED)
def test_truncated_and_damaged_copies_are_never_called_complete_unless_pydicom_agrees(
    name: str,
) -> None:
    (path,) = [p for p in CORPUS if p.endswith("/" + name)]
    data = Path(path).read_bytes()
    assert quick_identity(data) is not None  # the walk is sure of the intact file
    rng = random.Random(name)
    cuts = sorted({*range(0, min(len(data), 4000), 7), *rng.sample(range(len(data)), 200)})
    for cut in cuts:
        assert _agrees(data[:cut]), f"cut at {cut}"
        assert _agrees(data[:cut] + b"\x00" * 8), f"cut at {cut}, padded"
    header_end = min(len(data), 3000)
    for _ in range(400):
        damaged = bytearray(data)
        at = rng.randrange(132, header_end)
        damaged[at] = rng.randrange(256)
        assert _agrees(bytes(damaged)), f"byte {at} set to {damaged[at]}"

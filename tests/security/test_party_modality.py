"""A modality (or whoever holds a modality's AE title) at the gateway (#14 items 6 and 8),
against the real stack with encryption at rest on: a deflated instance that inflates ~700x is
refused by C-STORE (0xC210) and by STOW-RS (a per-instance failure) while a normal deflated
one is stored; once a study is uploaded, no byte of its patient's name or ID is left anywhere
under the gateway's spool (the journal included), whose files are 0600 and directories 0700."""

from __future__ import annotations

import base64
import io
import os
import stat
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pydicom
import pytest
from pydicom.data import get_testdata_file
from pydicom.uid import DeflatedExplicitVRLittleEndian, generate_uid
from pynetdicom import AE
from pynetdicom.sop_class import CTImageStorage  # type: ignore[attr-defined]

from cloudfilm.synth import synthesize_study
from tests.e2e.conftest import Server, start_server, stop_server
from tests.e2e.test_end_to_end import storescu, wait_indexed

pytestmark = pytest.mark.e2e

MARKER_NAME = "QUOKKAMARKER^ZEPHYRINE"
MARKER_ID = "PIDMARKER7731"
LIVENESS_S = 120.0


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    root = tmp_path_factory.mktemp("modality")
    env = {
        "CLOUDFILM_ENCRYPTION": "aes-256-gcm",
        "CLOUDFILM_KEK_HOSP1": "k1:" + base64.b64encode(os.urandom(32)).decode(),
        "CLOUDFILM_DICOM_ALLOWED_AES": "MODALITY:store",
    }
    proc, srv = start_server(root / "data", root / "serve.log", env)
    yield srv
    stop_server(proc)


def deflated_ct(extra_zero_bytes: int = 0) -> bytes:
    """CT_small.dcm in Deflated Explicit VR Little Endian with a new SOP Instance UID; with
    ``extra_zero_bytes`` of zeros in a private OB element (a deflate bomb: ~740x for 64 MiB)."""
    ds = pydicom.dcmread(str(get_testdata_file("CT_small.dcm")))
    ds.file_meta.TransferSyntaxUID = DeflatedExplicitVRLittleEndian
    ds.SOPInstanceUID = generate_uid()
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    if extra_zero_bytes:
        ds.add_new(0x00091010, "LO", "CLOUDFILM TEST")
        ds.add_new(0x00091011, "OB", b"\0" * extra_zero_bytes)
    buf = io.BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    return buf.getvalue()


def _c_store(srv: Server, path: Path) -> int:
    ae = AE(ae_title="MODALITY")
    ae.add_requested_context(CTImageStorage, DeflatedExplicitVRLittleEndian)
    assoc = ae.associate(srv.dicom_host, srv.dicom_port, ae_title=srv.ae)
    assert assoc.is_established
    try:
        return int(assoc.send_c_store(path).Status)
    finally:
        assoc.release()


def _stow(srv: Server, data: bytes) -> int:
    boundary = "b0undary"
    body = (
        f"--{boundary}\r\nContent-Type: application/dicom\r\n\r\n".encode()
        + data
        + f"\r\n--{boundary}--\r\n".encode()
    )
    req = urllib.request.Request(
        srv.base + "/dicom-web/studies",
        data=body,
        method="POST",
        headers={
            "Authorization": f"Bearer {srv.token(role='radiologist')}",
            "Content-Type": f'multipart/related; type="application/dicom"; boundary={boundary}',
        },
    )
    try:
        with urllib.request.urlopen(req, timeout=60) as r:
            return int(r.status)
    except urllib.error.HTTPError as e:
        return int(e.code)


def test_a_deflate_bomb_is_refused_by_c_store(stack: Server, tmp_path: Path) -> None:
    bomb = tmp_path / "bomb.dcm"
    bomb.write_bytes(deflated_ct(64 * 1024 * 1024))
    assert os.path.getsize(bomb) < 128 * 1024  # 64 MiB of zeros deflate ~700x
    assert _c_store(stack, bomb) == 0xC210
    fine = tmp_path / "fine.dcm"
    fine.write_bytes(deflated_ct())
    assert _c_store(stack, fine) == 0


def test_a_deflate_bomb_is_refused_by_stow(stack: Server) -> None:
    assert _stow(stack, deflated_ct(64 * 1024 * 1024)) == 409
    assert _stow(stack, deflated_ct()) == 200


def _files_under(root: Path) -> Iterator[Path]:
    for dirpath, _, names in os.walk(root):
        for name in names:
            yield Path(dirpath) / name


def test_no_plaintext_stays_in_the_spool_after_upload_and_its_files_are_private(
    stack: Server, tmp_path: Path
) -> None:
    study = synthesize_study(tmp_path / "study", modality="CT", images=6, seed=77)
    for path in study:
        ds = pydicom.dcmread(path)
        ds.PatientName = MARKER_NAME
        ds.PatientID = MARKER_ID
        ds.save_as(path)
    storescu(stack, tmp_path / "study")
    ds = pydicom.dcmread(study[0], stop_before_pixels=True)
    wait_indexed(stack, stack.token(), ds.StudyInstanceUID, len(study))
    spool = stack.data / "spool"
    deadline = time.monotonic() + LIVENESS_S
    while any((spool / "ready").iterdir()) and time.monotonic() < deadline:
        time.sleep(0.1)  # the spool entry goes once the index batch is committed
    assert not any((spool / "ready").iterdir())
    for path in _files_under(spool):
        data = path.read_bytes()
        for marker in (MARKER_NAME.encode(), MARKER_ID.encode()):
            assert marker not in data, f"{marker!r} left in {path}"
        assert stat.S_IMODE(path.stat().st_mode) & 0o077 == 0, path
    for dirpath, _, _ in os.walk(spool):
        assert stat.S_IMODE(os.stat(dirpath).st_mode) == 0o700, dirpath

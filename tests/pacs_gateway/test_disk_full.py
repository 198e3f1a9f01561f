"""A full disk answers 0xA700 (Out of Resources) and loses nothing already acknowledged."""

from __future__ import annotations

import os
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pydicom
import pytest
from pydicom.data import get_testdata_file
from pynetdicom import AE
from pynetdicom.sop_class import CTImageStorage

from pacs_gateway.scp import ScpSettings, start_scp
from pacs_gateway.spool import Spool


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    """A 1 MiB tmpfs (needs root, as in CI)."""
    mnt = tmp_path / "small"
    mnt.mkdir()
    if os.geteuid() != 0:
        pytest.skip("mounting a small tmpfs needs root")
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(mnt)], check=True)
    try:
        yield mnt
    finally:
        subprocess.run(["umount", "-l", str(mnt)], check=True)


@pytest.mark.parametrize("min_free", [0, 256 * 1024], ids=["enospc", "free-space-guard"])
def test_full_disk_answers_out_of_resources_and_keeps_what_was_acknowledged(
    small_disk: Path, min_free: int
) -> None:
    spool = Spool(small_disk / "spool", min_free_bytes=min_free)
    server: Any = start_scp(ScpSettings(ae_title="GW", port=0), spool)
    path = get_testdata_file("CT_small.dcm")
    assert path is not None
    ds = pydicom.dcmread(path)
    acked: list[str] = []
    statuses: list[int] = []
    try:
        ae = AE(ae_title="MODALITY")
        ae.add_requested_context(CTImageStorage)
        assoc = ae.associate("127.0.0.1", server.server_address[1], ae_title="GW")
        assert assoc.is_established
        for i in range(60):  # 60 x 39 KB does not fit in 1 MiB
            ds.SOPInstanceUID = f"1.2.826.0.1.3680043.8.498.77.{i + 1}"
            status = int(assoc.send_c_store(ds).Status)
            statuses.append(status)
            if status == 0:
                acked.append(ds.SOPInstanceUID)
        assoc.release()
    finally:
        server.shutdown()
    assert 0xA700 in statuses and acked
    assert set(statuses) <= {0x0000, 0xA700}
    stored = {e.sop_uid: e for e in spool.pending()}
    assert sorted(stored) == sorted(acked)
    for uid in acked:
        back = pydicom.dcmread(stored[uid].path)
        assert back.SOPInstanceUID == uid and back.PixelData == ds.PixelData
    assert list(spool.incoming.iterdir()) == []

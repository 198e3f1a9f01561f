"""Large instances are streamed to disk by the gateway process, never held whole in memory."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pydicom
from pydicom.uid import ExplicitVRLittleEndian
from pynetdicom import AE
from pynetdicom.sop_class import UltrasoundMultiFrameImageStorage

from cloudfilm.synth import synthesize_study
from pacs_gateway.scp import ScpSettings
from pacs_gateway.spool import Spool
from tests.e2e.fault_harness import dataset_bytes
from tests.pacs_gateway.helpers import gateway_process

FRAMES = 360  # 480x640 RGB: about 330 MB of pixel data


def _peak_rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    raise AssertionError("no VmHWM")


def test_a_330_mb_multiframe_is_stored_without_holding_it_in_memory(tmp_path: Path) -> None:
    (path,) = synthesize_study(tmp_path / "src", modality="US", images=1, frames=4, seed=5)
    ds = pydicom.dcmread(path)
    frame = np.frombuffer(ds.PixelData, dtype=np.uint8).reshape(4, -1)[0]
    ds.PixelData = np.tile(frame, FRAMES).tobytes()
    ds.NumberOfFrames = FRAMES
    big = tmp_path / "big.dcm"
    ds.save_as(big, enforce_file_format=True)
    assert big.stat().st_size > 300e6

    spool = Spool(tmp_path / "spool")
    gw = gateway_process(spool, ScpSettings(ae_title="GW", port=0, stream_to_disk=True))
    port = gw.start()
    try:
        base_rss = _peak_rss_mb(gw.pids[0])
        ae = AE(ae_title="MODALITY")
        ae.add_requested_context(UltrasoundMultiFrameImageStorage, ExplicitVRLittleEndian)
        assoc = ae.associate("127.0.0.1", port, ae_title="GW")
        assert assoc.is_established
        assert assoc.send_c_store(big).Status == 0
        assoc.release()
        peak = _peak_rss_mb(gw.pids[0])
    finally:
        gw.stop()
    assert peak - base_rss < 100, f"gateway peak RSS grew by {peak - base_rss:.0f} MB"
    (entry,) = spool.pending()
    assert dataset_bytes(entry.path.read_bytes()) == dataset_bytes(big.read_bytes())
    assert list(spool.incoming.iterdir()) == []

"""Large instances end to end: streamed into the spool, uploaded from the file, served by byte
ranges; a crash while one arrives loses nothing acknowledged and leaves no partial file."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import time
from http.client import IncompleteRead
from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom.encaps import encapsulate, get_frame
from pydicom.uid import ExplicitVRLittleEndian, RLELossless
from pynetdicom import AE
from pynetdicom.sop_class import UltrasoundMultiFrameImageStorage

from cloudfilm.synth import synthesize_study
from pacs_gateway.scp import ScpSettings
from pacs_gateway.spool import Spool
from tests.e2e.conftest import Reply, http, start_server, stop_server
from tests.e2e.fault_harness import dataset_bytes
from tests.pacs_gateway.helpers import gateway_process

FRAMES = 360  # 480x640 RGB: about 330 MB of pixel data


def test_a_330_mb_multiframe_is_streamed_into_the_spool_byte_identical(tmp_path: Path) -> None:
    """(Its memory is measured by bench/large_instances.py, not asserted here.)"""
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
        ae = AE(ae_title="MODALITY")
        ae.add_requested_context(UltrasoundMultiFrameImageStorage, ExplicitVRLittleEndian)
        assoc = ae.associate("127.0.0.1", port, ae_title="GW")
        assert assoc.is_established
        assert assoc.send_c_store(big).Status == 0
        assoc.release()
    finally:
        gw.stop()
    (entry,) = spool.pending()
    assert dataset_bytes(entry.path.read_bytes()) == dataset_bytes(big.read_bytes())
    assert list(spool.incoming.iterdir()) == []


def _multipart_payloads(reply: Reply) -> list[bytes]:
    m = re.search(r'boundary="?([^";]+)"?', reply.headers["content-type"])
    assert m, reply.headers["content-type"]
    delim = b"--" + m[1].encode()
    return [c[2:-2].partition(b"\r\n\r\n")[2] for c in reply.body.split(delim)[1:-1]]


def _cine(tmp: Path, frames: int, seed: int, *, rle: bool) -> tuple[Path, list[bytes]]:
    """A US multi-frame of ``frames`` 480x640 RGB frames (native, or RLE with one fragment per
    frame) written to ``tmp``, and its frames' stored bytes."""
    (path,) = synthesize_study(tmp / f"src{seed}", modality="US", images=1, frames=4, seed=seed)
    ds = pydicom.dcmread(path)
    if rle:
        ds.compress(RLELossless, encoding_plugin="pydicom", generate_instance_uid=False)
        small = [get_frame(ds.PixelData, n, number_of_frames=4) for n in range(4)]
        stored = [small[n % 4] for n in range(frames)]
        ds.PixelData = encapsulate(stored)
    else:
        size = len(ds.PixelData) // 4
        small = [ds.PixelData[n * size : (n + 1) * size] for n in range(4)]
        stored = [small[n % 4] for n in range(frames)]
        ds.PixelData = b"".join(stored)
    ds.NumberOfFrames = frames
    out = tmp / f"big{seed}.dcm"
    ds.save_as(out, enforce_file_format=True)
    return out, stored


def test_two_large_multiframes_on_two_associations_come_back_byte_identical_and_by_frame(
    tmp_path: Path,
) -> None:
    """storescu → spool → cloud → WADO-RS: a native and an RLE multi-frame (a few hundred MB
    together) sent at once on two associations come back as they arrived; single frames are
    read by their byte ranges and are the stored frames; a thumbnail is made from one frame."""
    native, native_frames = _cine(tmp_path, 160, 11, rle=False)
    encaps, encaps_frames = _cine(tmp_path, 300, 12, rle=True)
    proc, server = start_server(tmp_path / "data", tmp_path / "serve.log")
    try:
        port = str(server.dicom_port)
        senders = [
            subprocess.Popen(
                ["storescu", *opt, "-aec", server.ae, server.dicom_host, port, str(f)],
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                text=True,
            )
            for f, opt in ((native, []), (encaps, ["-xr"]))  # -xr: propose RLE
        ]
        for s in senders:
            out, _ = s.communicate(timeout=300)
            assert s.returncode == 0, out
        token = server.token()
        native_ds = pydicom.dcmread(native, stop_before_pixels=True)
        native_study, native_series, native_sop = (
            native_ds.StudyInstanceUID,
            native_ds.SeriesInstanceUID,
            native_ds.SOPInstanceUID,
        )
        for path, frames in ((native, native_frames), (encaps, encaps_frames)):
            ds = pydicom.dcmread(path, stop_before_pixels=True)
            base = (
                f"{server.base}/dicom-web/studies/{ds.StudyInstanceUID}/series/"
                f"{ds.SeriesInstanceUID}/instances/{ds.SOPInstanceUID}"
            )
            deadline = time.monotonic() + 120
            while http(f"{base}/metadata", token=token).status != 200:
                assert time.monotonic() < deadline, "the instance never became retrievable"
                time.sleep(0.2)
            whole = http(base, token=token, accept=_AS_STORED_DICOM)
            assert whole.status == 200
            (part,) = _multipart_payloads(whole)
            assert dataset_bytes(part) == dataset_bytes(path.read_bytes())
            last = len(frames)
            got = http(f"{base}/frames/1,{last}", token=token, accept=_AS_STORED_FRAMES)
            assert got.status == 200
            assert _multipart_payloads(got) == [frames[0], frames[last - 1]]
            shown = http(f"{base}/frames/{last}/rendered", token=token)
            assert shown.status == 200 and shown.body[:3] == b"\xff\xd8\xff"
            thumb = http(f"{base.rsplit('/instances/', 1)[0]}/thumbnail", token=token)
            assert thumb.status == 200 and thumb.body[:3] == b"\xff\xd8\xff"
        assert http(f"{base}/frames/{last + 1}", token=token).status == 400
        assert http(f"{base}/frames/{last + 1}/rendered", token=token).status == 404
        first = http(f"{base}/frames/1", token=token)
        assert first.status == 200  # decoded: the RLE frame as native pixels
        (pixels,) = _multipart_payloads(first)
        assert pixels == pydicom.dcmread(encaps).pixel_array[0].tobytes()
        (obj,) = (tmp_path / "data" / "objects").rglob(str(pydicom.dcmread(native).SOPInstanceUID))
        with open(obj, "r+b") as fh:  # the attacker (or a bad disk) changes one stored byte
            fh.seek(obj.stat().st_size // 2)
            byte = fh.read(1)
            fh.seek(-1, 1)
            fh.write(bytes([byte[0] ^ 0xFF]))
        native_base = (
            base.replace(str(ds.SOPInstanceUID), str(native_sop))
            .replace(str(ds.SeriesInstanceUID), str(native_series))
            .replace(str(ds.StudyInstanceUID), str(native_study))
        )
        with pytest.raises(IncompleteRead):  # cut short: never taken for a whole instance
            http(native_base, token=token, accept=_AS_STORED_DICOM)
    finally:
        stop_server(proc)
    spool = tmp_path / "data" / "spool"
    assert [p for d in ("incoming", "ready", "failed") for p in (spool / d).iterdir()] == []


def test_a_sigkill_while_a_large_instance_arrives_loses_nothing_acknowledged_and_no_orphans(
    tmp_path: Path,
) -> None:
    """The whole stack is SIGKILLed while a large instance is streaming into the spool, after
    a small one was acknowledged: after a restart the small one is served, the large one was
    never acknowledged (storescu failed) and no partial file is left in the spool or store."""
    (small,) = synthesize_study(tmp_path / "small", modality="US", images=1, frames=2, seed=21)
    big, _ = _cine(tmp_path, 400, 22, rle=False)
    data = tmp_path / "data"
    proc, server = start_server(data, tmp_path / "serve.log", new_session=True)
    try:
        port = str(server.dicom_port)
        sent = subprocess.run(["storescu", "-aec", server.ae, "127.0.0.1", port, str(small)])
        assert sent.returncode == 0
        sender = subprocess.Popen(
            ["storescu", "-aec", server.ae, "127.0.0.1", port, str(big)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        incoming = data / "spool" / "incoming"
        deadline = time.monotonic() + 60
        while not any(p.stat().st_size > 50e6 for p in incoming.glob("*.part")):
            assert time.monotonic() < deadline, "the large instance never started arriving"
            time.sleep(0.01)
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(30)
        assert sender.wait(60) != 0  # never acknowledged
    finally:
        stop_server(proc)
    proc, server = start_server(data, tmp_path / "serve2.log")
    try:
        ds = pydicom.dcmread(small, stop_before_pixels=True)
        url = (
            f"{server.base}/dicom-web/studies/{ds.StudyInstanceUID}/series/"
            f"{ds.SeriesInstanceUID}/instances/{ds.SOPInstanceUID}/metadata"
        )
        token = server.token()
        deadline = time.monotonic() + 60
        while http(url, token=token).status != 200:
            assert time.monotonic() < deadline, "the acknowledged instance is lost"
            time.sleep(0.2)
        assert list(incoming.iterdir()) == []
        assert list((data / "spool" / "ready").iterdir()) == []
        big_sop = str(pydicom.dcmread(big, stop_before_pixels=True).SOPInstanceUID)
        assert list((data / "objects").rglob(f"*{big_sop}*")) == []
        assert [p for p in (data / "objects").rglob("*") if ".partial-" in p.name] == []
    finally:
        stop_server(proc)


_AS_STORED_DICOM = 'multipart/related; type="application/dicom"; transfer-syntax=*'
_AS_STORED_FRAMES = "multipart/related; type=application/octet-stream; transfer-syntax=*"

"""Encryption at rest end to end: storescu -> gateway -> encrypted S3 (a real SeaweedFS) -> WADO-RS.

SeaweedFS's own data directory (its .dat volume files, the filer's store) then holds no DICOM:
no 'DICM' magic, no patient name, no pixel bytes, while WADO-RS returns the exact datasets. A
plaintext object put afterwards is found by the same scan (so the scan can see plaintext), and
a flipped ciphertext byte gives a 500 and a scrub report, never a damaged image.
"""

from __future__ import annotations

import base64
import io
import os
import subprocess
import sys
from pathlib import Path

import pydicom
import pytest

from cloudfilm.synth import synthesize_study
from image_store.objects.s3 import S3ObjectStore, S3Settings
from tests.e2e.conftest import http, start_server, stop_server
from tests.e2e.fault_harness import arrival_bytes, dataset_bytes
from tests.e2e.test_end_to_end import parse_multipart, storescu, wait_indexed
from tests.servers import Seaweed

pytestmark = pytest.mark.e2e


def _found_in_data_dir(root: Path, needles: dict[str, bytes]) -> set[str]:
    """Which needles occur in any file under SeaweedFS's data directory."""
    found: set[str] = set()
    for path in root.rglob("*"):
        if path.is_file():
            blob = path.read_bytes()
            found |= {name for name, needle in needles.items() if needle in blob}
    return found


def test_seaweedfs_holds_no_dicom_while_wado_returns_the_exact_datasets(
    weed: Seaweed, tmp_path: Path
) -> None:
    env = {
        "CLOUDFILM_OBJECT_STORE": "s3",
        "CLOUDFILM_S3_BUCKET": "region",
        "CLOUDFILM_S3_PREFIX": "sealed",
        "CLOUDFILM_S3_ENDPOINT_URL": weed.endpoint,
        "CLOUDFILM_S3_REGION": "us-east-1",
        "CLOUDFILM_ENCRYPTION": "aes-256-gcm",
        "CLOUDFILM_KEK_HOSP1": "hosp1-2027:" + base64.b64encode(os.urandom(32)).decode(),
        "CLOUDFILM_UPLOAD_COMPRESSION": "none",  # raw pixels in the objects, to look for
        "AWS_ACCESS_KEY_ID": weed.access_key,
        "AWS_SECRET_ACCESS_KEY": weed.secret_key,
    }
    paths = synthesize_study(tmp_path / "study", modality="MR", images=4, seed=43)
    first = pydicom.dcmread(paths[0])
    pixels = bytes(first.PixelData)
    needles = {
        "DICM magic": b"DICM",
        "patient name": str(first.PatientName).split("=")[0].encode(),
        "patient id": str(first.PatientID).encode(),
        "pixel bytes": pixels[len(pixels) // 2 : len(pixels) // 2 + 64],
    }
    data = tmp_path / "data"
    proc, srv = start_server(data, tmp_path / "serve.log", env)
    try:
        storescu(srv, tmp_path / "study")
        study = first.StudyInstanceUID
        wait_indexed(srv, srv.token(), study, len(paths))
        parts = parse_multipart(http(f"{srv.base}/dicom-web/studies/{study}", token=srv.token()))
        originals = {pydicom.dcmread(p).SOPInstanceUID: p.read_bytes() for p in paths}
        assert len(parts) == len(paths)
        for _, payload in parts:
            uid = pydicom.dcmread(io.BytesIO(payload), stop_before_pixels=True).SOPInstanceUID
            assert dataset_bytes(arrival_bytes(payload)) == dataset_bytes(originals[uid])

        assert _found_in_data_dir(weed.data_dir, needles) == set()

        # one flipped byte in a stored object: a 500 and a scrub report, never bad bytes
        client = weed.client()
        sop = str(first.SOPInstanceUID)
        key = f"sealed/HOSP1/{study}/{first.SeriesInstanceUID}/{sop}"
        raw = bytearray(client.get_object(Bucket="region", Key=key)["Body"].read())
        raw[len(raw) // 2] ^= 0x04
        client.put_object(Bucket="region", Key=key, Body=bytes(raw))
        url = f"{srv.base}/dicom-web/studies/{study}/series/{first.SeriesInstanceUID}"
        reply = http(f"{url}/instances/{sop}", token=srv.token())
        assert reply.status == 500 and needles["pixel bytes"] not in reply.body
    finally:
        stop_server(proc)
    scrub = subprocess.run(
        [sys.executable, "-m", "cloudfilm.cli", "store", "scrub", "--data", str(data)],
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert scrub.returncode == 1, scrub.stderr
    assert f"corrupt  HOSP1/{study}/{first.SeriesInstanceUID}/{sop}" in scrub.stdout

    # the control: the same scan finds a DICOM file stored without encryption
    plain = S3ObjectStore(weed.client(), S3Settings(bucket="region", prefix="plain"))
    plain.put("HOSP1/1.2/1.2.3/1.2.3.4", paths[0].read_bytes())
    assert _found_in_data_dir(weed.data_dir, needles) == set(needles)

"""The stack on a real SeaweedFS: two API processes over one index and one S3 bucket serve the
same studies (the scale-out shape: stateless API processes, shared index and object store)."""

from __future__ import annotations

import io
from pathlib import Path

import pydicom
import pytest

from cloudfilm.synth import synthesize_study
from tests.e2e.conftest import http, start_server, stop_server
from tests.e2e.fault_harness import arrival_bytes, dataset_bytes
from tests.e2e.test_end_to_end import parse_multipart, storescu, wait_indexed
from tests.servers import Seaweed

pytestmark = pytest.mark.e2e


def test_two_api_processes_serve_the_same_s3_backed_studies(weed: Seaweed, tmp_path: Path) -> None:
    env = {
        "CLOUDFILM_OBJECT_STORE": "s3",
        "CLOUDFILM_S3_BUCKET": "region",
        "CLOUDFILM_S3_PREFIX": "prod",
        "CLOUDFILM_S3_ENDPOINT_URL": weed.endpoint,
        "CLOUDFILM_S3_REGION": "us-east-1",
        "AWS_ACCESS_KEY_ID": weed.access_key,
        "AWS_SECRET_ACCESS_KEY": weed.secret_key,
    }
    data = tmp_path / "data"
    proc_a, a = start_server(data, tmp_path / "a.log", env)
    proc_b, b = start_server(data, tmp_path / "b.log", env)
    try:
        paths = synthesize_study(tmp_path / "study", modality="MR", images=6, seed=41)
        storescu(a, tmp_path / "study")
        first = pydicom.dcmread(paths[0], stop_before_pixels=True)
        wait_indexed(a, a.token(), first.StudyInstanceUID, len(paths))
        found = http(f"{b.base}/dicom-web/studies?PatientID={first.PatientID}", token=b.token())
        assert [s["0020000D"]["Value"][0] for s in found.json()] == [first.StudyInstanceUID]  # type: ignore[attr-defined,index]
        parts = parse_multipart(
            http(f"{b.base}/dicom-web/studies/{first.StudyInstanceUID}", token=b.token())
        )
        originals = {pydicom.dcmread(p).SOPInstanceUID: p.read_bytes() for p in paths}
        assert len(parts) == len(paths)
        for _, payload in parts:
            uid = pydicom.dcmread(io.BytesIO(payload), stop_before_pixels=True).SOPInstanceUID
            assert dataset_bytes(arrival_bytes(payload)) == dataset_bytes(originals[uid])
    finally:
        stop_server(proc_a)
        stop_server(proc_b)
    keys = weed.client().list_objects_v2(Bucket="region", Prefix="prod/HOSP1/")["Contents"]
    assert len([k for k in keys if not k["Key"].endswith(".thumb.jpg")]) == len(paths)
    assert not (data / "objects").exists()  # nothing went to the local filesystem store

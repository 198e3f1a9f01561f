"""Scale-out: two API processes with their own data directories share nothing but one PostgreSQL
index, one SeaweedFS bucket (objects encrypted at rest) and the secrets a region distributes
(token signing key, KEKs). STOW-RS to one, QIDO-RS and WADO-RS from the other: the same data."""

from __future__ import annotations

import base64
import os
import shutil
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pydicom
import pytest
from dicomweb_client.api import DICOMwebClient

from cloudfilm.synth import synthesize_study
from tests.e2e.conftest import Server, start_server, stop_server
from tests.servers import Postgres, Seaweed, postgresql

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def pg() -> Iterator[Postgres]:
    with postgresql() as server:
        with psycopg.connect(server.dsn, autocommit=True) as conn:
            conn.execute("CREATE DATABASE region")
        yield server


def _client(srv: Server, token: str) -> DICOMwebClient:
    return DICOMwebClient(url=f"{srv.base}/dicom-web", headers={"Authorization": f"Bearer {token}"})


def test_stow_to_one_api_process_is_served_by_another(
    weed: Seaweed, pg: Postgres, tmp_path: Path
) -> None:
    env = {
        "CLOUDFILM_INDEX": "postgres",
        "CLOUDFILM_POSTGRES_DSN": pg.dsn.replace("dbname=postgres", "dbname=region"),
        "CLOUDFILM_OBJECT_STORE": "s3",
        "CLOUDFILM_S3_BUCKET": "region",
        "CLOUDFILM_S3_ENDPOINT_URL": weed.endpoint,
        "CLOUDFILM_S3_REGION": "us-east-1",
        "CLOUDFILM_ENCRYPTION": "aes-256-gcm",
        "CLOUDFILM_KEK": "region-1:" + base64.b64encode(os.urandom(32)).decode(),
        "AWS_ACCESS_KEY_ID": weed.access_key,
        "AWS_SECRET_ACCESS_KEY": weed.secret_key,
    }
    proc_a, a = start_server(tmp_path / "a", tmp_path / "a.log", env)
    proc_b = None
    try:
        (tmp_path / "b").mkdir()
        shutil.copytree(tmp_path / "a" / "secrets", tmp_path / "b" / "secrets")
        proc_b, b = start_server(tmp_path / "b", tmp_path / "b.log", env)
        token = a.token(role="radiologist")  # signed in A's data dir, honoured by B

        paths = synthesize_study(tmp_path / "study", modality="CT", images=4, seed=61)
        datasets = [pydicom.dcmread(p) for p in paths]
        stored = _client(a, token).store_instances(datasets)
        assert "FailedSOPSequence" not in stored
        study_uid = datasets[0].StudyInstanceUID

        reader = _client(b, token)
        (study,) = reader.search_for_studies(search_filters={"PatientID": datasets[0].PatientID})
        assert study["0020000D"]["Value"] == [study_uid]
        got = {d.SOPInstanceUID: d for d in reader.retrieve_study(study_uid)}
        assert sorted(got) == sorted(d.SOPInstanceUID for d in datasets)
        for original in datasets:
            assert got[original.SOPInstanceUID].PixelData == original.PixelData
        series = datasets[0].SeriesInstanceUID
        assert len(reader.retrieve_series_metadata(study_uid, series)) == len(
            [d for d in datasets if d.SeriesInstanceUID == series]
        )
    finally:
        stop_server(proc_a)
        if proc_b is not None:
            stop_server(proc_b)
    # neither process kept objects or an index of its own
    for data in (tmp_path / "a", tmp_path / "b"):
        assert not (data / "objects").exists() and not (data / "index.sqlite").exists()

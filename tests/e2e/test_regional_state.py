"""Regional state shared by every API process: three `cloudfilm serve` processes with their own
data directories over one PostgreSQL and one SeaweedFS bucket agree on share links, extraction-
code lockouts, consents, disabled users and revoked tokens, and their audit rows verify as one
chain; an API process SIGKILLed in the middle of a STOW-RS and of share creations leaves nothing
half-written for the others; a gateway's upload session goes on from one process to another."""

from __future__ import annotations

import hashlib
import http.client as http_client
import json
import os
import shutil
import signal
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import psycopg
import pydicom
import pytest
from dicomweb_client.api import DICOMwebClient

from cloudfilm.synth import synthesize_study
from pacs_gateway.cloud_sink import CloudSinkSettings, HttpIngestSink
from pacs_gateway.credential import load_credential
from tests.e2e.conftest import Server, http, start_server, stop_server
from tests.servers import Postgres, Seaweed, postgresql
from viewer_api.share import LOCK_AFTER

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def pg() -> Iterator[Postgres]:
    with postgresql() as server:
        with psycopg.connect(server.dsn, autocommit=True) as conn:
            conn.execute("CREATE DATABASE region")
        yield server


def _on(srv: Server, url: str, base: Server) -> str:
    """``url`` (made by ``base``) as served by ``srv``."""
    return srv.base + url.removeprefix(base.base)


def _enter_code(url: str, code: str) -> int:
    body = urllib.parse.urlencode({"code": code}).encode()
    req = urllib.request.Request(url + "/code", data=body, method="POST")
    try:
        with urllib.request.urlopen(req, timeout=60) as r:
            return int(r.status)
    except urllib.error.HTTPError as exc:
        return exc.code


def _region_env(weed: Seaweed, dsn: str, prefix: str = "") -> dict[str, str]:
    return {
        "CLOUDFILM_S3_PREFIX": prefix,
        "CLOUDFILM_INDEX": "postgres",
        "CLOUDFILM_POSTGRES_DSN": dsn,
        "CLOUDFILM_OBJECT_STORE": "s3",
        "CLOUDFILM_S3_BUCKET": "region",
        "CLOUDFILM_S3_ENDPOINT_URL": weed.endpoint,
        "CLOUDFILM_S3_REGION": "us-east-1",
        "AWS_ACCESS_KEY_ID": weed.access_key,
        "AWS_SECRET_ACCESS_KEY": weed.secret_key,
    }


def _stow(srv: Server, token: str, paths: list[Path], timeout: float = 60) -> int:
    """STOW-RS ``paths`` in one request; the status."""
    boundary = "regionboundary"
    body = (
        b"".join(
            f"--{boundary}\r\nContent-Type: application/dicom\r\n\r\n".encode()
            + p.read_bytes()
            + b"\r\n"
            for p in paths
        )
        + f"--{boundary}--\r\n".encode()
    )
    req = urllib.request.Request(
        f"{srv.base}/dicom-web/studies",
        data=body,
        method="POST",
        headers={
            "Authorization": f"Bearer {token}",
            "Content-Type": f'multipart/related; type="application/dicom"; boundary={boundary}',
        },
    )
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            return int(r.status)
    except urllib.error.HTTPError as exc:
        return exc.code


def test_three_api_processes_share_links_lockouts_consents_users_revocations_and_one_audit_chain(
    weed: Seaweed, pg: Postgres, tmp_path: Path
) -> None:
    dsn = pg.dsn.replace("dbname=postgres", "dbname=region")
    env = _region_env(weed, dsn)
    procs = []
    try:
        proc, a = start_server(tmp_path / "a", tmp_path / "a.log", env)
        procs.append(proc)
        servers = [a]
        for name in ("b", "c"):  # the region distributes its secrets, nothing else
            (tmp_path / name).mkdir()
            shutil.copytree(tmp_path / "a" / "secrets", tmp_path / name / "secrets")
            proc, srv = start_server(tmp_path / name, tmp_path / f"{name}.log", env)
            procs.append(proc)
            servers.append(srv)
        _, b, c = servers
        token = a.token(role="radiologist")
        paths = synthesize_study(tmp_path / "study", modality="CT", images=1, seed=71)
        ds = pydicom.dcmread(paths[0])
        client = DICOMwebClient(
            url=f"{a.base}/dicom-web", headers={"Authorization": f"Bearer {token}"}
        )
        assert "FailedSOPSequence" not in client.store_instances([ds])

        # a link made on A opens on B; revoked on C, it is refused on all three
        made = http(
            f"{a.base}/api/shares", token=token, method="POST",
            body={"study_uid": ds.StudyInstanceUID},
        )  # fmt: skip
        assert made.status == 201, made.body
        link = json.loads(made.body)
        assert http(_on(b, link["url"], a)).status == 200
        revoked = http(f"{c.base}/api/shares/{link['id']}", token=token, method="DELETE")
        assert revoked.status == 204
        assert [http(_on(s, link["url"], a)).status for s in servers] == [403, 403, 403]

        # wrong extraction codes sent in parallel to all three lock after exactly LOCK_AFTER
        coded = http(
            f"{a.base}/api/shares", token=token, method="POST",
            body={"study_uid": ds.StudyInstanceUID, "code": "123456"},
        )  # fmt: skip
        url = json.loads(coded.body)["url"]
        targets = [_on(servers[i % 3], url, a) for i in range(LOCK_AFTER + 4)]
        with ThreadPoolExecutor(len(targets)) as pool:
            statuses = list(pool.map(lambda u: _enter_code(u, "000000"), targets))
        assert statuses.count(403) == LOCK_AFTER - 1, statuses  # wrong, tries left
        assert statuses.count(429) == 5, statuses  # the lockout, then locked
        assert _enter_code(_on(b, url, a), "123456") == 429  # even the right code, everywhere

        # a consent the patient grants on C is enforced on A and B, and revoked on A likewise
        _consent_is_shared(tmp_path, token, a, b, c)

        # a token revoked on A, and a user disabled on A, are refused on B and C
        qido = "/dicom-web/studies?limit=1"
        assert [http(s.base + qido, token=token).status for s in servers] == [200] * 3
        a.cli("keys", "revoke-token", "--data", str(a.data), "--token", token)
        assert [http(s.base + qido, token=token).status for s in (b, c)] == [401, 401]
        other = a.token(role="clinician")
        assert http(c.base + qido, token=other).status == 200
        a.cli("users", "disable", "t.clinician.HOSP1", "--data", str(a.data))
        assert [http(s.base + qido, token=other).status for s in (b, c)] == [401, 401]
    finally:
        for proc in procs:
            stop_server(proc)

    # the audit rows all three wrote verify as one chain; cutting the last rows is caught
    assert a.cli("audit", "verify", "--data", str(a.data)).startswith("audit log intact")
    with psycopg.connect(dsn, autocommit=True) as conn:
        row = conn.execute("SELECT count(*) FROM audit WHERE event LIKE '%/api/shares%'").fetchone()
        assert row is not None and row[0] >= 3  # made on A, revoked on C, one chain
        conn.execute("DELETE FROM audit WHERE seq > (SELECT max(seq) - 3 FROM audit)")
    with pytest.raises(Exception, match="exit status 1"):
        a.cli("audit", "verify", "--data", str(a.data))


def _consent_is_shared(tmp_path: Path, reader: str, a: Server, b: Server, c: Server) -> None:
    """HOSP2's MR of a person (linked by an admin on A): ``reader`` (HOSP1) reads it nowhere,
    then everywhere once the patient grants HOSP1 consent on C, then nowhere once they revoke
    it on A."""
    servers = (a, b, c)
    (mr,) = synthesize_study(tmp_path / "mr", modality="MR", images=1, seed=72)
    ds = pydicom.dcmread(mr)
    ds.PatientID = "B-0777"
    ds.save_as(mr)
    hosp2 = a.token(hospital="HOSP2", role="radiologist")
    assert _stow(a, hosp2, [mr]) == 200
    linked = http(
        f"{a.base}/api/patients/links", token=a.token(role="admin"), method="POST",
        body={"hospital": "HOSP2", "patient_id": "B-0777", "issuer": ds.IssuerOfPatientID,
              "id_issuer": "CN_RESIDENT_ID", "id": "44030519800101123X"},
    )  # fmt: skip
    assert linked.status == 201, linked.body
    meta = f"/dicom-web/studies/{ds.StudyInstanceUID}/metadata"
    assert [http(s.base + meta, token=reader).status for s in servers] == [404] * 3
    own = http(
        f"{b.base}/api/shares", token=hosp2, method="POST",
        body={"scope": "patient", "patient_id": "B-0777", "issuer": ds.IssuerOfPatientID},
    )  # fmt: skip
    assert own.status == 201, own.body
    film = f"/film/{json.loads(own.body)['token']}/api"
    grant = http(f"{c.base}{film}/consents", method="POST", body={"hospital": "HOSP1"})
    assert grant.status == 201, grant.body
    assert [http(s.base + meta, token=reader).status for s in servers] == [200] * 3
    other = a.token(hospital="HOSP3", role="clinician")  # a hospital the patient did not name
    assert [http(s.base + meta, token=other).status for s in servers] == [404] * 3
    consent = json.loads(grant.body)["id"]
    revoked = http(f"{a.base}{film}/consents/{consent}/revoke", method="POST")
    assert revoked.status == 200, revoked.body
    assert [http(s.base + meta, token=reader).status for s in servers] == [404] * 3


def test_an_api_process_killed_mid_stow_and_mid_share_creation_leaves_nothing_half_written(
    weed: Seaweed, pg: Postgres, tmp_path: Path
) -> None:
    with psycopg.connect(pg.dsn, autocommit=True) as conn:
        conn.execute("CREATE DATABASE killed")
    dsn = pg.dsn.replace("dbname=postgres", "dbname=killed")
    env = _region_env(weed, dsn, prefix="killed")
    proc_a, a = start_server(tmp_path / "a", tmp_path / "a.log", env, new_session=True)
    procs = [proc_a]
    try:
        (tmp_path / "b").mkdir()
        shutil.copytree(tmp_path / "a" / "secrets", tmp_path / "b" / "secrets")
        proc_b, b = start_server(tmp_path / "b", tmp_path / "b.log", env)
        procs.append(proc_b)
        token = a.token(role="radiologist")
        paths = synthesize_study(tmp_path / "big", modality="CT", images=24, seed=73)
        study = str(pydicom.dcmread(paths[0]).StudyInstanceUID)
        assert _stow(a, token, paths[:1]) == 200  # the study exists; share links can name it
        made: list[str] = []

        def make_shares() -> None:
            while True:
                try:
                    r = http(
                        f"{a.base}/api/shares", token=token, method="POST",
                        body={"study_uid": study, "code": "123456"},
                    )  # fmt: skip
                except (OSError, http_client.HTTPException):
                    return  # A is gone
                assert r.status == 201, r.body
                made.append(json.loads(r.body)["id"])

        with ThreadPoolExecutor(4) as pool:
            stow = pool.submit(_stow_until_killed, a, token, paths[1:])
            shares = [pool.submit(make_shares) for _ in range(3)]
            deadline = time.monotonic() + 60
            received = a.data / "tmp"  # STOW-RS parts land here, then are stored
            while len(list(received.glob("stow-*/part-*"))) < len(paths) - 1 or len(made) < 3:
                assert time.monotonic() < deadline, "the STOW-RS never got its parts in"
                time.sleep(0.002)
            os.killpg(proc_a.pid, signal.SIGKILL)
            assert stow.result() is None  # the STOW-RS never got its answer
            for f in shares:
                f.result()

        # B serves every link A answered for, and no row is a half-made link
        assert made
        for link_id in made:
            got = http(f"{b.base}/api/shares/{link_id}", token=token)
            assert got.status == 200 and json.loads(got.body)["study_uid"] == study, got.body
        with psycopg.connect(dsn, autocommit=True) as conn:
            rows = conn.execute("SELECT id, study_uid, code_hash FROM share_links").fetchall()
        assert len(rows) >= len(made)
        assert all(uid == study and code_hash for _, uid, code_hash in rows), rows

        # the index names only objects that are there, whole; the study's counts add up
        found = http(f"{b.base}/dicom-web/studies/{study}/instances", token=token)
        assert found.status == 200, found.body
        instances = json.loads(found.body)
        assert 1 <= len(instances) <= len(paths)
        studies = json.loads(http(f"{b.base}/dicom-web/studies?StudyInstanceUID={study}",
                                  token=token).body)  # fmt: skip
        assert studies[0]["00201208"]["Value"] == [len(instances)]
        b.cli("store", "scrub", "--data", str(b.data))  # exit 1 on a missing or bad object
    finally:
        for proc in procs:
            stop_server(proc)
    # the chain both wrote, cut mid-append on A, verifies
    assert b.cli("audit", "verify", "--data", str(b.data)).startswith("audit log intact")


def _stow_until_killed(srv: Server, token: str, paths: list[Path]) -> int | None:
    """The STOW-RS's status, or None when the server died before it answered."""
    try:
        return _stow(srv, token, paths)
    except (OSError, http_client.HTTPException):
        return None


def test_an_upload_session_opened_on_one_api_process_is_resumed_and_finalized_on_another(
    weed: Seaweed, pg: Postgres, tmp_path: Path
) -> None:
    """A gateway behind a load balancer: its large instance's chunks land on whichever API
    process the balancer picks; the session's state is in PostgreSQL and its chunks in S3."""
    with psycopg.connect(pg.dsn, autocommit=True) as conn:
        conn.execute("CREATE DATABASE uploads")
    env = _region_env(weed, pg.dsn.replace("dbname=postgres", "dbname=uploads"), "up/")
    procs = []
    try:
        proc, a = start_server(tmp_path / "a", tmp_path / "a.log", env)
        procs.append(proc)
        (tmp_path / "b").mkdir()
        shutil.copytree(tmp_path / "a" / "secrets", tmp_path / "b" / "secrets")
        proc, b = start_server(tmp_path / "b", tmp_path / "b.log", env)
        procs.append(proc)
        a.cli("gateway", "credential", "--data", str(a.data), "--hospital", "HOSP1",
              "--out", str(tmp_path / "cred.json"), "--cloud-url", a.base)  # fmt: skip
        sink = HttpIngestSink(load_credential(tmp_path / "cred.json"), CloudSinkSettings(a.base))
        (path,) = synthesize_study(tmp_path / "us", modality="US", images=1, frames=5, seed=73)
        data = path.read_bytes()
        uid = str(pydicom.dcmread(path, stop_before_pixels=True).SOPInstanceUID)
        auth = {"Authorization": f"Bearer {sink.token().value}"}
        opened = sink.session.post(
            f"{a.base}/gateway/uploads",
            json={"size": len(data), "sha256": hashlib.sha256(data).hexdigest(), "sop_uid": uid},
            headers=auth,
            timeout=30,
        )
        assert opened.status_code == 201, opened.text
        session = f"/gateway/uploads/{opened.json()['session']}"
        offset, chunk = 0, 1 << 20
        for n, start in enumerate(range(0, len(data), chunk)):
            srv = (a, b)[n % 2]  # the balancer alternates
            resp = sink.session.patch(
                srv.base + session,
                data=data[start : start + chunk],
                headers={**auth, "Upload-Offset": str(offset)},
                timeout=30,
            )
            assert resp.status_code == 204, resp.text
            offset = int(resp.headers["Upload-Offset"])
        assert offset == len(data)
        assert sink.session.head(a.base + session, headers=auth).headers["Upload-Offset"] == str(
            len(data)
        )
        done = sink.session.post(b.base + session + "/finalize", headers=auth, timeout=60)
        assert done.status_code == 200, done.text
        assert done.json()["instance"]["outcome"] == "stored"
        again = sink.session.post(a.base + session + "/finalize", headers=auth, timeout=60)
        assert again.json()["instance"]["outcome"] == "duplicate"
        s3 = weed.client()
        staged = s3.list_objects_v2(Bucket="region", Prefix="up/uploads.staging/")
        assert staged.get("KeyCount", 0) == 0, staged.get("Contents")
        study = str(pydicom.dcmread(path, stop_before_pixels=True).StudyInstanceUID)
        token = a.token()
        found = http(f"{a.base}/dicom-web/studies/{study}/instances", token=token)
        assert [i["00080018"]["Value"][0] for i in json.loads(found.body)] == [uid]
        sink.close()
    finally:
        for proc in procs:
            stop_server(proc)

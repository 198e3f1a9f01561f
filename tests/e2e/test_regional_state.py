"""Regional state shared by every API process: three `cloudfilm serve` processes with their own
data directories over one PostgreSQL and one SeaweedFS bucket agree on share links, extraction-
code lockouts, disabled users and revoked tokens, and their audit rows verify as one chain."""

from __future__ import annotations

import json
import shutil
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


def test_three_api_processes_share_links_lockouts_users_revocations_and_one_audit_chain(
    weed: Seaweed, pg: Postgres, tmp_path: Path
) -> None:
    dsn = pg.dsn.replace("dbname=postgres", "dbname=region")
    env = {
        "CLOUDFILM_INDEX": "postgres",
        "CLOUDFILM_POSTGRES_DSN": dsn,
        "CLOUDFILM_OBJECT_STORE": "s3",
        "CLOUDFILM_S3_BUCKET": "region",
        "CLOUDFILM_S3_ENDPOINT_URL": weed.endpoint,
        "CLOUDFILM_S3_REGION": "us-east-1",
        "AWS_ACCESS_KEY_ID": weed.access_key,
        "AWS_SECRET_ACCESS_KEY": weed.secret_key,
    }
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

"""Priors through the cloud: the gateway's HttpPriorsSource (and its Q/R SCP, driven by DCMTK)
against the real ingest + priors endpoints served on 127.0.0.1 in a thread."""

from __future__ import annotations

import io
import pickle
import secrets
import shutil
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pydicom
import pytest
from aiohttp import web
from pydicom.dataset import Dataset
from pynetdicom import AE, AllStoragePresentationContexts, evt

from cloudfilm.synth import synthesize_study
from image_store.audit import SqlAuditLog
from image_store.consents import SqlConsents
from image_store.gateway_assertion import TOKEN_PATH
from image_store.gateway_credentials import SqlGatewayCredentials
from image_store.index.sqlite import SqliteIndex
from image_store.ingest import LocalIngest
from image_store.objects.filesystem import FilesystemObjectStore
from image_store.priors import IndexPriors
from image_store.records import InstanceQuery, PatientRef, StudyQuery, StudyRecord
from pacs_gateway.cloud_sink import CloudSinkSettings, CredentialRefused, HttpIngestSink
from pacs_gateway.credential import load_credential
from pacs_gateway.priors_http import HttpPriorsFactory, HttpPriorsSource, PriorUnavailable
from pacs_gateway.qr import QrSettings, find_matches, retrieve_matches
from pacs_gateway.scp import QrContext, ScpSettings, start_scp
from pacs_gateway.spool import Spool
from tests.gateway_credentials import (
    GATEWAYS_FILE,
    REGISTRY_FILE,
    issue_gateway_credential,
    revoke_gateway_credential,
)
from tests.threaded_server import ThreadedServer
from viewer_api import middlewares
from viewer_api.gateway_auth import GatewayAuth
from viewer_api.ingest_api import add_ingest_routes
from viewer_api.priors_api import add_priors_routes
from viewer_api.registry import SqlRegistry

PERSON = "p" * 64


@dataclass
class Studies:
    own: StudyRecord
    """Patient P1's study at H1 (the gateway's hospital)."""
    prior: StudyRecord
    """The same person's study at H2 (patient H2-77)."""
    stranger: StudyRecord
    """Another person's study at H2."""
    files: dict[str, bytes]
    """SOP Instance UID -> the bytes as stored."""


class ThreadedCloud:
    """The ingest and priors endpoints on a real socket, in a thread with its own loop."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.data = root / "cloud"
        self.data.mkdir()
        registry = SqlRegistry(self.data / REGISTRY_FILE)
        for h in ("H1", "H2"):
            registry.add_hospital(h, h)
        registry.close()
        self.server = ThreadedServer()
        self.url = self.server.url
        self.index = SqliteIndex(self.data / "index.sqlite")
        self.store = FilesystemObjectStore(self.data / "objects")
        self.consents = SqlConsents(self.data / "consents.sqlite")
        self.audit = SqlAuditLog(self.data / "audit.sqlite")
        app = web.Application(middlewares=[middlewares.errors])
        add_ingest_routes(
            app,
            GatewayAuth(SqlGatewayCredentials(self.data / GATEWAYS_FILE), self.url + TOKEN_PATH),
            LocalIngest(self.store, self.index, trusted_links=True),
        )
        add_priors_routes(app, self.index, self.store, consents=self.consents, audit=self.audit)
        self.app = app

    def credential(self, hospital: str) -> Path:
        path = self.root / f"{hospital}-{secrets.token_hex(4)}.cred"
        issue_gateway_credential(self.data, hospital, path, cloud_url=self.url)
        return path

    def __enter__(self) -> ThreadedCloud:
        self.server.start(self.app)
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.stop()
        self.index.close()
        self.consents.close()


def _load(cloud: ThreadedCloud, hospital: str, out: Path, seed: int, patient: str) -> StudyRecord:
    paths = synthesize_study(out, modality="MR", images=2, seed=seed, patient_id=patient)
    outcomes = LocalIngest(cloud.store, cloud.index).ingest(
        hospital, [p.read_bytes() for p in paths]
    )
    assert all(o.ok for o in outcomes), outcomes
    study = cloud.index.get_study(outcomes[0].study_uid)
    assert study is not None
    return study


@pytest.fixture(scope="module")
def cloud(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[ThreadedCloud, Studies]]:
    root = tmp_path_factory.mktemp("priors")
    with ThreadedCloud(root) as c:
        own = _load(c, "H1", root / "own", 41, "P1")
        prior = _load(c, "H2", root / "prior", 42, "H2-77")
        stranger = _load(c, "H2", root / "stranger", 43, "H2-99")
        for s in (own, prior):  # one person at both hospitals, linked by an administrator
            ref = PatientRef(s.hospital, s.patient.patient_id, s.patient.issuer)
            c.index.link_patient(ref, PERSON, "admin:test")
        files = {
            i.sop_uid: c.store.get(i.object_key)
            for i in c.index.find_instances(InstanceQuery(), limit=100)
        }
        yield c, Studies(own, prior, stranger, files)


@pytest.fixture
def h1(cloud: tuple[ThreadedCloud, Studies]) -> Iterator[HttpPriorsSource]:
    sink = HttpIngestSink(
        load_credential(cloud[0].credential("H1")), CloudSinkSettings(cloud[0].url)
    )
    yield HttpPriorsSource(sink, "H1")
    sink.close()


def _ident(level: str, **kw: str) -> Dataset:
    ds = Dataset()
    ds.QueryRetrieveLevel = level
    for k, v in kw.items():
        setattr(ds, k, v)
    return ds


def _found(source: Any) -> list[str]:
    ident = _ident("STUDY", PatientID="P1", StudyInstanceUID="")
    return sorted(str(d.StudyInstanceUID) for d in find_matches(ident, source, "GW"))


def test_a_gateway_fetches_another_hospitals_priors_only_under_the_patients_consent(
    cloud: tuple[ThreadedCloud, Studies], h1: HttpPriorsSource
) -> None:
    c, st = cloud
    local = IndexPriors(c.index, c.store, "H1", consents=c.consents)
    prior_ident = _ident("STUDY", StudyInstanceUID=st.prior.study_uid)
    prior_instances = c.index.find_instances(InstanceQuery(study_uid=st.prior.study_uid), limit=100)
    assert _found(h1) == [st.own.study_uid] == _found(local)
    assert retrieve_matches(prior_ident, h1) == []
    with pytest.raises(PriorUnavailable, match="404"):  # asking by UID opens nothing either
        h1.read(prior_instances[0])
    # a grant to one clinician does not open the study to every workstation of the hospital
    c.consents.grant(PERSON, "H1", grantee_subject="dr-li", created_by="t", ttl_s=3600)
    assert _found(h1) == [st.own.study_uid]
    grant = c.consents.grant(PERSON, "H1", created_by="t", ttl_s=3600)
    try:
        assert _found(h1) == sorted([st.own.study_uid, st.prior.study_uid]) == _found(local)
        got = retrieve_matches(prior_ident, h1)
        assert sorted(i.sop_uid for i in got) == sorted(i.sop_uid for i in prior_instances)
        assert all(h1.read(i) == st.files[i.sop_uid] for i in got)  # byte-identical
        series = find_matches(
            _ident("SERIES", StudyInstanceUID=st.prior.study_uid, SeriesInstanceUID=""), h1, "GW"
        )
        assert len(list(series)) == 1
        # the patient's other hospital's other patients stay closed
        assert retrieve_matches(_ident("STUDY", StudyInstanceUID=st.stranger.study_uid), h1) == []
        reads = [
            e
            for e in c.audit.iter_events()
            if st.prior.study_uid in e.resource and e.resource.endswith(got[0].sop_uid)
        ]
        assert reads and reads[-1].via == f"consent:{grant.id}"
        assert reads[-1].actor.startswith("gateway:H1:") and reads[-1].role == "gateway"
    finally:
        c.consents.revoke(grant.id)
    assert _found(h1) == [st.own.study_uid]
    assert retrieve_matches(prior_ident, h1) == []


def test_the_source_factory_crosses_to_another_process_and_reads_as_the_credential(
    cloud: tuple[ThreadedCloud, Studies],
) -> None:
    c, st = cloud
    factory = HttpPriorsFactory(c.credential("H1"), CloudSinkSettings(c.url))
    source = pickle.loads(pickle.dumps(factory))()
    assert source.hospital == "H1"
    assert [s.study_uid for s in source.find_studies(StudyQuery(patient_id="P1"))] == [
        st.own.study_uid
    ]


def test_a_revoked_credential_gets_nothing(cloud: tuple[ThreadedCloud, Studies]) -> None:
    c, st = cloud
    cred = load_credential(c.credential("H1"))
    sink = HttpIngestSink(cred, CloudSinkSettings(c.url))
    source = HttpPriorsSource(sink, "H1")
    own = c.index.find_instances(InstanceQuery(study_uid=st.own.study_uid), limit=1)[0]
    assert source.read(own) == st.files[own.sop_uid]
    assert revoke_gateway_credential(c.data, cred.credential_id)
    with pytest.raises(CredentialRefused):
        source.find_studies(StudyQuery(patient_id="P1"))
    with pytest.raises(CredentialRefused):
        source.read(own)
    sink.close()


def test_the_other_hospitals_gateway_reads_none_of_h1s_studies(
    cloud: tuple[ThreadedCloud, Studies],
) -> None:
    """H2's gateway, with its own valid credential, asks for H1's study by UID and by patient."""
    c, st = cloud
    sink = HttpIngestSink(load_credential(c.credential("H2")), CloudSinkSettings(c.url))
    h2 = HttpPriorsSource(sink, "H2")
    own = c.index.find_instances(InstanceQuery(study_uid=st.own.study_uid), limit=1)[0]
    assert h2.find_studies(StudyQuery(patient_id="P1")) == []
    assert h2.find_instances(st.own.study_uid) == []
    assert h2.find_series(st.own.study_uid) == []
    with pytest.raises(PriorUnavailable, match="404"):
        h2.read(own)
    sink.close()


# -- DCMTK at a gateway whose Q/R reads through the cloud ---------------------------------------


@pytest.mark.skipif(shutil.which("findscu") is None, reason="DCMTK is installed by scripts/test.sh")
def test_findscu_getscu_and_movescu_at_the_gateway_fetch_consented_priors_through_the_cloud(
    cloud: tuple[ThreadedCloud, Studies], h1: HttpPriorsSource, tmp_path: Path
) -> None:
    c, st = cloud
    audit = SqlAuditLog(tmp_path / "gateway-audit.sqlite")
    moved: list[str] = []

    def on_store(event: Any) -> int:
        moved.append(str(event.dataset.SOPInstanceUID))
        return 0

    ws = AE(ae_title="WS")
    ws.supported_contexts = AllStoragePresentationContexts
    destination: Any = ws.start_server(
        ("127.0.0.1", 0), block=False, evt_handlers=[(evt.EVT_C_STORE, on_store)]
    )
    settings = QrSettings(
        ae_title="GW",
        hospitals=frozenset({"H1"}),
        hospital="H1",
        move_destinations={"WS": ("127.0.0.1", int(destination.server_address[1]))},
    )
    server = start_scp(
        ScpSettings(ae_title="GW", port=0),
        Spool(tmp_path / "spool"),
        qr=QrContext(None, None, settings, audit, source=h1),
    )
    port = str(server.server_address[1])

    def findscu() -> str:
        args = ["-S", "-k", "QueryRetrieveLevel=STUDY", "-k", "PatientID=P1"]
        args += ["-k", "StudyInstanceUID"]
        out = subprocess.run(
            ["findscu", "-aet", "WS", "-aec", "GW", *args, "127.0.0.1", port],
            capture_output=True,
            text=True,
            timeout=60,
        )
        return out.stdout + out.stderr

    def getscu(study_uid: str, into: Path) -> list[bytes]:
        into.mkdir()
        subprocess.run(
            [
                *("getscu", "-aet", "WS", "-aec", "GW", "-S", "-od", str(into)),
                *("-k", "QueryRetrieveLevel=STUDY", "-k", f"StudyInstanceUID={study_uid}"),
                *("127.0.0.1", port),
            ],
            capture_output=True,
            timeout=60,
        )
        return [p.read_bytes() for p in sorted(into.iterdir())]

    def movescu(study_uid: str) -> None:
        subprocess.run(
            [
                *("movescu", "-aet", "WS", "-aec", "GW", "-aem", "WS", "-S"),
                *("-k", "QueryRetrieveLevel=STUDY", "-k", f"StudyInstanceUID={study_uid}"),
                *("127.0.0.1", port),
            ],
            capture_output=True,
            timeout=60,
        )

    try:
        assert st.own.study_uid in findscu() and st.prior.study_uid not in findscu()
        assert getscu(st.prior.study_uid, tmp_path / "none") == []
        movescu(st.prior.study_uid)
        assert moved == []
        grant = c.consents.grant(PERSON, "H1", created_by="t", ttl_s=3600)
        try:
            assert st.prior.study_uid in findscu()
            got = getscu(st.prior.study_uid, tmp_path / "got")
            movescu(st.prior.study_uid)
        finally:
            c.consents.revoke(grant.id)
        sops = sorted(str(pydicom.dcmread(io.BytesIO(d)).SOPInstanceUID) for d in got)
        expected = c.index.find_instances(InstanceQuery(study_uid=st.prior.study_uid), limit=9)
        assert sops == sorted(i.sop_uid for i in expected) == sorted(moved)
        for data in got:  # the pixels as stored at H2
            ds = pydicom.dcmread(io.BytesIO(data))
            stored = pydicom.dcmread(io.BytesIO(st.files[str(ds.SOPInstanceUID)]))
            assert ds.pixel_array.tobytes() == stored.pixel_array.tobytes()
    finally:
        server.shutdown()
        destination.shutdown()
        audit.close()

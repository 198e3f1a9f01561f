"""``cloudfilm demo``: a small region on one machine, the way its users would meet it.

Starts the embedded stack (the cloud and the first hospital's gateway) and builds a region on it:
three registered hospitals with Chinese names; one patient with a CT at the first hospital, sent
by C-STORE to its gateway, and an MR at the second, sent by C-STORE to a second gateway node (its
own credential, delivering over the same ingest API); both studies carry the patient's synthetic
resident ID (Other Patient IDs Sequence), so the gateways' trusted ingest links the two records
to one person. A radiologist reports the CT; the first hospital makes the patient's own
cloud-film link and the patient, on that link, lets the first hospital read all their studies.
Each step goes through the public API and is checked; then it prints, per user, what to open or
run: the patient's link and its QR code, a clinician's one-click view across hospitals, a
break-glass read, the DICOMweb URL and how to send one's own DICOM. Run again on the same data
directory, it reuses what is there (same studies, report, consent; a new patient link).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import io
import shlex
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import pydicom
import segno
from pydicom.dataset import Dataset

from cloudfilm.config import StackSettings
from cloudfilm.gateway import GatewayNode
from cloudfilm.stack import Stack, serve_until_signal
from cloudfilm.synth import synthesize_study
from image_store.gateway_assertion import CredentialFileError
from image_store.records import PatientRef, StudyQuery
from pacs_gateway.cloud_sink import CloudSinkSettings, HttpIngestSink
from pacs_gateway.credential import load_credential
from pacs_gateway.scu import send_files
from viewer_api.auth import Role
from viewer_api.gateway_auth import issue_credential

RESIDENT_ID_ISSUER = "CN_RESIDENT_ID"
RESIDENT_ID = "110105198006150013"
"""The demo patient's resident ID: synthetic (never a real person's)."""
PATIENT_NAME = "ZHANG^SAN=张^三"
HOSPITAL_NAMES = ("瑞金医院", "华山医院", "中山医院")
OTHER_HOSPITAL_IDS = ("HOSP2", "HOSP3", "HOSP4")
MR_IMAGES = 12
BREAK_GLASS_REASON = "unconscious patient in the emergency room"
REPORT_TEXT = (
    "胸部CT平扫（演示用合成报告 synthetic demo report）\n"
    "所见：双肺纹理清晰，未见明确结节、实变或胸腔积液。纵隔居中，心影大小正常。\n"
    "印象：胸部CT未见明显异常。\n"
)
DRAIN_S = 120.0


class DemoFailed(RuntimeError):
    """A step of the demo did not work; the message says which."""


@dataclass(frozen=True, slots=True)
class Hospital:
    id: str
    name: str
    patient_id: str = ""
    """The demo patient's ID there ('' for a hospital that holds no study of theirs)."""

    @property
    def issuer(self) -> str:
        return f"{self.id}-PID"


@dataclass(frozen=True, slots=True)
class DemoRegion:
    """What the demo built, everything its printout names."""

    base: str
    data_dir: Path
    hospitals: tuple[Hospital, Hospital, Hospital]
    gateways: tuple[str, str]
    """``AE@HOST:PORT`` of the first and the second hospital's gateway."""
    ct_images: int
    ct_study: str
    film_link: str
    clinician_token: str
    """A clinician of the first hospital (where the patient gave consent)."""
    other_token: str
    """A clinician of the second hospital (no consent: break-glass)."""
    codec: str = ""
    """The gateways' edge compression (upload_compression)."""
    raw_bytes: int = 0
    """What the modalities sent the gateways..."""
    sent_bytes: int = 0
    """...and what went up to the cloud for it."""


def demo_hospitals(first: str) -> tuple[Hospital, Hospital, Hospital]:
    """The demo's hospitals: the stack's own and two more; the patient is at the first two."""
    others = [h for h in OTHER_HOSPITAL_IDS if h != first][:2]
    return (
        Hospital(first, HOSPITAL_NAMES[0], patient_id="RJ0001"),
        Hospital(others[0], HOSPITAL_NAMES[1], patient_id="HS0420"),
        Hospital(others[1], HOSPITAL_NAMES[2]),
    )


def demo_users(hospitals: tuple[Hospital, ...]) -> tuple[tuple[str, str, Role], ...]:
    """(subject, hospital, role) of the demo's users."""
    first, second = hospitals[0].id, hospitals[1].id
    return (
        ("dr.wang", first, "clinician"),
        ("dr.li", first, "radiologist"),
        ("dr.chen", second, "clinician"),
    )


def _register(stack: Stack, hospitals: tuple[Hospital, ...]) -> None:
    """Register the hospitals (a name given earlier is kept) and the demo's users."""
    registry = stack.registry
    names = registry.hospital_names()
    for h in hospitals:
        if names.get(h.id, h.id) == h.id:
            registry.add_hospital(h.id, h.name)
    for subject, hospital, role in demo_users(hospitals):
        user = registry.user(subject)
        if user is None:
            registry.add_user(subject, hospital, role)
        elif (user.hospital, user.role) != (hospital, role):
            raise DemoFailed(
                f"user {subject} is registered as {user.role} at {user.hospital} in this data "
                f"directory, not as {role} at {hospital}: use a new --data directory"
            )


def _tokens(stack: Stack, hospitals: tuple[Hospital, ...]) -> dict[str, str]:
    """A day's bearer token for each demo user."""
    return {
        subject: stack.signer.issue(hospital, role, subject=subject, ttl_s=86400)
        for subject, hospital, role in demo_users(hospitals)
    }


def _as_demo_patient(ds: Dataset, hospital: Hospital) -> None:
    """The demo patient's demographics, this hospital's Patient ID and the resident ID that
    the gateway links by."""
    ds.SpecificCharacterSet = "ISO_IR 192"
    ds.PatientName = PATIENT_NAME
    ds.PatientID = hospital.patient_id
    ds.IssuerOfPatientID = hospital.issuer
    ds.PatientBirthDate = "19800615"
    ds.PatientSex = "M"
    ds.InstitutionName = hospital.name
    other = Dataset()
    other.PatientID = RESIDENT_ID
    other.IssuerOfPatientID = RESIDENT_ID_ISSUER
    other.TypeOfPatientID = "TEXT"
    ds.OtherPatientIDsSequence = [other]


def _write_study(
    out: Path, hospital: Hospital, *, modality: str, images: int, seed: int
) -> list[Path]:
    """A synthetic study of the demo patient at ``hospital`` (the same files every run)."""
    paths = synthesize_study(
        out, modality=modality, images=images, seed=seed, patient_id=hospital.patient_id
    )
    for path in paths:
        ds = pydicom.dcmread(path)
        _as_demo_patient(ds, hospital)
        ds.save_as(path, enforce_file_format=True)
    return paths


def _open_second_gateway(stack: Stack, hospital: Hospital, nodes: list[GatewayNode]) -> None:
    """The second hospital's gateway node: its own spool and DICOM port, delivering to the
    cloud's ingest API with a credential issued for that hospital (a credential file of an
    earlier run is revoked and replaced); started, and added to ``nodes``."""
    s = stack.settings
    creds = stack.gateway_credentials
    if creds is None:
        raise DemoFailed("the cloud has no gateway credentials store")
    settings = dataclasses.replace(
        s,
        data_dir=s.data_dir / "demo" / f"gateway-{hospital.id}",
        hospital=hospital.id,
        ae_title=f"{hospital.id}-GW"[:16],
        dicom_port=0,
        dicom_workers=1,
    )
    path = settings.data_dir / "credential.json"
    if path.is_file():
        with contextlib.suppress(CredentialFileError):
            creds.revoke(load_credential(path).credential_id, at=time.time())
        path.unlink()
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    issue_credential(creds, stack.registry, hospital.id, path, cloud_url=stack.internal_url())
    credential = load_credential(path)
    ca_bundle = Path(s.cloud_ca_file or s.https_cert_file) if s.https_cert_file else None
    sink = HttpIngestSink(
        credential, CloudSinkSettings(stack.internal_url(), ca_bundle=ca_bundle, connections=2)
    )
    node = GatewayNode.open(settings, sink, credential.hospital)
    nodes.append(node)  # stopped by run_demo, whatever happens next
    node.start()


def _send(paths: list[Path], *, port: int, ae: str, host: str) -> None:
    statuses = send_files(paths, host=host, port=port, called_ae=ae)
    failed = [hex(x) for x in statuses if x != 0]
    if failed:
        raise DemoFailed(f"C-STORE to {ae} failed for {len(failed)} instances: {failed[:5]}")


def _check_linked(stack: Stack, hospitals: tuple[Hospital, ...]) -> None:
    """Both records of the patient are indexed and linked to one person by the gateways."""
    keys = set()
    for h in hospitals[:2]:
        studies = stack.index.find_studies(
            StudyQuery(hospitals=frozenset({h.id}), patient_id=h.patient_id), limit=10
        )
        if not studies:
            raise DemoFailed(f"{h.name}'s study of patient {h.patient_id} was not indexed")
        link = stack.index.person_link(PatientRef(h.id, h.patient_id, h.issuer))
        if link is None:
            raise DemoFailed(
                f"{h.name}'s patient {h.patient_id} was not linked by the gateway (a link held "
                "for review? see /api/admin/identity-reviews)"
            )
        keys.add(link.person_key)
    if len(keys) != 1:
        raise DemoFailed("the two hospitals' records are linked to different persons")


async def _json(r: aiohttp.ClientResponse, want: int, what: str) -> Any:
    if r.status != want:
        raise DemoFailed(f"{what} answered {r.status}: {(await r.text())[:300]}")
    return await r.json()


async def _through_the_api(
    stack: Stack, hospitals: tuple[Hospital, ...], ct_study: str, tokens: dict[str, str]
) -> str:
    """The report, the patient's link and their consent, through the API as its users would;
    checks what each user then sees. Returns the patient's cloud-film link."""
    base = stack.base_url()
    first, second = hospitals[0], hospitals[1]

    def bearer(subject: str) -> dict[str, str]:
        return {"Authorization": f"Bearer {tokens[subject]}"}

    async with aiohttp.ClientSession() as http:
        reports = f"{base}/api/studies/{ct_study}/reports"
        async with http.get(reports, headers=bearer("dr.li")) as r:
            found = await _json(r, 200, "listing the CT's reports")
        if not found:
            params = {"status": "final", "mutual_recognition": "true", "title": "胸部CT 报告"}
            headers = {**bearer("dr.li"), "Content-Type": "text/plain; charset=utf-8"}
            body = REPORT_TEXT.encode()
            async with http.post(reports, params=params, data=body, headers=headers) as r:
                await _json(r, 201, "writing the CT's report")
        # the patient's own link to all their studies (the hospital holds one issuer: none given)
        share = {"scope": "patient", "patient_id": first.patient_id, "allow_download": True}
        async with http.post(f"{base}/api/shares", json=share, headers=bearer("dr.wang")) as r:
            link: str = (await _json(r, 201, "creating the patient's link"))["url"]
        async with http.get(f"{link}/api/consents") as r:
            given = await _json(r, 200, "the patient's consents")
        if not any(c["active"] and c["grantee_hospital"] == first.id for c in given):
            grant = {"hospital": first.id, "ttl_hours": 720}
            async with http.post(f"{link}/api/consents", json=grant) as r:
                await _json(r, 201, "the patient's consent")
        async with http.get(link) as r:
            if r.status != 200:
                raise DemoFailed(f"the cloud-film page answered {r.status}")
        one_click = f"{base}/patients/{first.patient_id}/studies"
        async with http.get(one_click, headers=bearer("dr.wang")) as r:
            seen = await _json(r, 200, "the clinician's one-click view")
        if {s["hospital"] for s in seen["studies"]} != {first.id, second.id}:
            raise DemoFailed(f"the clinician sees {seen['studies']}, not both hospitals' studies")
    return link


def terminal_qr(url: str) -> str:
    """The link as a QR code of text half blocks (a phone camera reads it off the screen)."""
    out = io.StringIO()
    segno.make(url, error="m").terminal(out=out, compact=True)
    return out.getvalue()


def _curl(token: str, url: str, *extra: str) -> str:
    parts = ["curl", "-s", "-H", f"Authorization: Bearer {token}", *extra, url]
    return " ".join(shlex.quote(p) for p in parts)


_CODEC_NAMES = {"htj2k": "HTJ2K", "jpeg-ls": "JPEG-LS", "rle": "RLE"}


def _wire_line(region: DemoRegion) -> str:
    sizes = (
        f"{region.raw_bytes / 1e6:.1f} MB of DICOM went up as {region.sent_bytes / 1e6:.1f} MB "
        f"({100 * region.sent_bytes / max(1, region.raw_bytes):.0f} %)"
    )
    name = _CODEC_NAMES.get(region.codec)
    if name is None:
        return f"  the wire   the gateways sent the images as they came: {sizes}"
    return (
        f"  the wire   the gateways re-encoded the images losslessly ({name}; each frame "
        f"decoded and compared with the original before it went): {sizes}"
    )


def demo_text(region: DemoRegion, settings: StackSettings, *, once: bool) -> str:
    """What the demo prints: what it built, then what each kind of user can open or run."""
    h1, h2, h3 = region.hospitals
    gw1, gw2 = region.gateways
    base = region.base
    one_click = f"{base}/patients/{h1.patient_id}/studies"
    reports = f"{base}/api/studies/{region.ct_study}/reports"
    ae1, _, hostport1 = gw1.partition("@")
    host1, _, port1 = hostport1.rpartition(":")
    ae2, _, hostport2 = gw2.partition("@")
    host2, _, port2 = hostport2.rpartition(":")
    lines = [
        "",
        f"A demo region at {base} (data in {region.data_dir}):",
        f"  hospitals  {h1.id} {h1.name} (gateway {gw1}), {h2.id} {h2.name} (gateway {gw2}), "
        f"{h3.id} {h3.name}",
        f"  patient    张*三: a CT ({region.ct_images + 1} images) at {h1.name} as "
        f"{h1.patient_id}, an MR ({MR_IMAGES} images) at {h2.name} as {h2.patient_id}; "
        "each sent by C-STORE to its hospital's gateway, whose trusted ingest linked both "
        "records by a synthetic resident ID",
        f"  report     on the CT (final, 互认), by radiologist dr.li of {h1.name}",
        f"  consent    given by the patient on their own link: {h1.name} may read all their "
        "studies",
        _wire_line(region),
        "",
        "For the patient (no login; a phone, or the browser's phone view):",
        f"  Cloud film: {region.film_link}",
        terminal_qr(region.film_link).rstrip("\n"),
        f"  Both hospitals' studies and the CT's report; 'my consents' (grant {h3.name} or "
        "revoke), 'who opened my studies', 'share with a doctor'.",
        f"  Their consents as JSON: curl -s {shlex.quote(region.film_link + '/api/consents')}",
        "",
        f"For a clinician at {h1.name} ({h1.id}, user dr.wang): one click shows the patient "
        "across hospitals",
        f"  Token:      {region.clinician_token}",
        f"  curl:       {_curl(region.clinician_token, one_click)}",
        f'  → both studies; {h2.name}\'s under the patient\'s consent ("access": "consent")',
        f"  curl:       {_curl(region.clinician_token, reports)}",
        "  → the CT's report (final, 互认: eligible for mutual recognition)",
        "",
        f"Break-glass, a clinician at {h2.name} ({h2.id}, user dr.chen; no consent there):",
        f"  curl:       {_curl(region.other_token, f'{base}/patients/{h2.patient_id}/studies')}",
        f"  → {h2.name}'s MR only, {h1.name}'s CT counted as \"withheld\"",
        "  curl:       "
        + _curl(
            region.other_token,
            f"{base}/patients/{h2.patient_id}/studies",
            "-H",
            f"X-Break-Glass-Reason: {BREAK_GLASS_REASON}",
        ),
        '  → both, the CT as "access": "break-glass": audited, flagged to auditors, shown to '
        "the patient under 'who opened my studies'",
        "",
        "For a viewer (OHIF, dicomweb-client: see docs/ohif.md) or a script:",
        f"  DICOMweb:   {base}/dicom-web",
        f"  curl:       {_curl(region.clinician_token, f'{base}/dicom-web/studies')}",
        "",
        "Send your own DICOM (a modality, a PACS, or DCMTK):",
        f"  TCP_NODELAY=1 storescu -aec {ae1} {host1} {port1} +sd YOUR_DIR   # to {h1.name}",
    ]
    if not once:
        lines.append(
            f"  TCP_NODELAY=1 storescu -aec {ae2} {host2} {port2} +sd YOUR_DIR   # to {h2.name}"
        )
    lines += [
        "  No DICOM at hand: .venv/bin/cloudfilm synth YOUR_DIR --modality CT --images 30 --seed 7",
        "",
    ]
    if once:
        serve = [
            ".venv/bin/cloudfilm",
            "serve",
            "--data",
            str(region.data_dir),
            "--http",
            f"{settings.http_host}:{base.rsplit(':', 1)[-1]}",
            "--dicom",
            f"{host1}:{port1}",
            "--ae",
            ae1,
            "--hospital",
            h1.id,
        ]
        lines += [
            "--once: the server stops now, and with it every link and curl line above. The "
            f"region stays in {region.data_dir}; to serve it again at the same address (the "
            "links and, for 24 h, the tokens work again):",
            "  " + " ".join(shlex.quote(p) for p in serve),
            "",
        ]
    return "\n".join(lines)


def _tolerant_stdout() -> None:
    """Chinese names and the QR code's blocks never stop the demo on a terminal whose encoding
    lacks them (shown as replacement characters there)."""
    reconfigure = getattr(sys.stdout, "reconfigure", None)
    if reconfigure is not None:
        reconfigure(errors="replace")


async def _build(stack: Stack, *, images: int, nodes: list[GatewayNode]) -> DemoRegion:
    s = stack.settings
    hospitals = demo_hospitals(s.hospital)
    h1, h2 = hospitals[0], hospitals[1]
    await asyncio.to_thread(_register, stack, hospitals)
    demo_dir = s.data_dir / "demo"
    ct, mr, _ = await asyncio.gather(
        asyncio.to_thread(
            _write_study, demo_dir / f"CT-{images}", h1, modality="CT", images=images, seed=1
        ),
        asyncio.to_thread(
            _write_study, demo_dir / f"MR-{MR_IMAGES}", h2, modality="MR", images=MR_IMAGES, seed=2
        ),
        asyncio.to_thread(_open_second_gateway, stack, h2, nodes),
    )
    node = nodes[0]
    await asyncio.gather(
        asyncio.to_thread(_send, ct, host=s.dicom_host, port=stack.dicom_port, ae=s.ae_title),
        asyncio.to_thread(
            _send, mr, host=s.dicom_host, port=node.dicom_port, ae=node.settings.ae_title
        ),
    )
    drained = await asyncio.gather(
        asyncio.to_thread(stack.uploader.wait_drained, DRAIN_S),
        asyncio.to_thread(node.uploader.wait_drained, DRAIN_S),
    )
    if not all(drained):
        raise DemoFailed(f"the gateways did not deliver their studies within {DRAIN_S:.0f} s")
    counters = [stack.uploader.counters, node.uploader.counters]
    await asyncio.to_thread(_check_linked, stack, hospitals)
    ct_study = str(pydicom.dcmread(ct[0], stop_before_pixels=True).StudyInstanceUID)
    tokens = await asyncio.to_thread(_tokens, stack, hospitals)
    link = await _through_the_api(stack, hospitals, ct_study, tokens)
    return DemoRegion(
        base=stack.base_url(),
        data_dir=s.data_dir,
        hospitals=hospitals,
        gateways=(
            f"{s.ae_title}@{s.dicom_host}:{stack.dicom_port}",
            f"{node.settings.ae_title}@{s.dicom_host}:{node.dicom_port}",
        ),
        ct_images=images,
        ct_study=ct_study,
        film_link=link,
        clinician_token=tokens["dr.wang"],
        other_token=tokens["dr.chen"],
        codec=str(s.upload_compression),
        raw_bytes=sum(c.uploaded_bytes for c in counters),
        sent_bytes=sum(c.sent_bytes for c in counters),
    )


async def run_demo(settings: StackSettings, *, images: int, once: bool) -> int:
    """Build the demo region on the embedded stack, print it, then serve until a signal (or,
    with ``once``, stop)."""
    nodes: list[GatewayNode] = []

    async def on_ready(stack: Stack) -> bool:
        t0 = time.perf_counter()
        region = await _build(stack, images=images, nodes=nodes)
        print(demo_text(region, stack.settings, once=once), flush=True)
        print(f"(built in {time.perf_counter() - t0:.1f} s)", flush=True)
        if not once:
            print("Serving until Ctrl-C.", flush=True)
        return not once

    _tolerant_stdout()
    try:
        return await serve_until_signal(settings, on_ready)
    finally:
        await asyncio.gather(*(asyncio.to_thread(n.stop) for n in nodes))

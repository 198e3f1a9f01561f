"""``cloudfilm demo``: the whole path on one machine, the way a hospital would see it.

Starts the embedded stack, synthesises a CT study, sends it by C-STORE like a modality, waits
until the cloud has indexed it, then prints the DICOMweb URL, a clinician token and a
cloud-film link (after checking that the link's page really loads).
"""

from __future__ import annotations

import asyncio
import time

import aiohttp

from cloudfilm.config import StackSettings
from cloudfilm.stack import Stack, serve_until_signal
from cloudfilm.synth import synthesize_study
from image_store.records import StudyQuery
from pacs_gateway.scu import send_files


class DemoFailed(RuntimeError):
    """A step of the demo did not work; the message says which."""


def _demo_token(stack: Stack) -> str:
    """A clinician token for the user ``demo``, registered at the stack's hospital if new (the
    API honours tokens of registered users only)."""
    registry, hospital = stack.registry, stack.settings.hospital
    if hospital not in registry.hospital_names():
        registry.add_hospital(hospital, hospital)
    if registry.user("demo") is None:
        registry.add_user("demo", hospital, "clinician")
    return stack.signer.issue(hospital, "clinician", subject="demo", ttl_s=86400)


async def _show(stack: Stack, *, images: int) -> None:
    s = stack.settings
    study_dir = s.data_dir / "demo" / f"CT-{images}"
    paths = synthesize_study(study_dir, modality="CT", images=images, seed=1)
    t0 = time.perf_counter()
    statuses = await asyncio.to_thread(
        send_files, paths, host=s.dicom_host, port=stack.dicom_port, called_ae=s.ae_title
    )
    failed = [hex(x) for x in statuses if x != 0]
    if failed:
        raise DemoFailed(f"C-STORE failed for {len(failed)} instances: {failed[:5]}")
    sent_s = time.perf_counter() - t0
    if not await asyncio.to_thread(stack.uploader.wait_drained, 120.0):
        raise DemoFailed("the uploader did not drain the spool within 120 s")
    studies = await asyncio.to_thread(
        stack.index.find_studies, StudyQuery(patient_id="", hospitals=None), limit=1000
    )
    study = next((st for st in studies if st.number_of_instances >= len(paths)), None)
    if study is None:
        raise DemoFailed("the study was not indexed")
    token = await asyncio.to_thread(_demo_token, stack)
    base = stack.base_url()
    async with aiohttp.ClientSession(headers={"Authorization": f"Bearer {token}"}) as http:
        async with http.post(f"{base}/api/shares", json={"study_uid": study.study_uid}) as r:
            if r.status != 201:
                raise DemoFailed(f"creating the share link answered {r.status}: {await r.text()}")
            link = (await r.json())["url"]
        async with http.get(link, headers={"Authorization": ""}) as r:
            if r.status != 200:
                raise DemoFailed(f"the cloud-film page answered {r.status}")
    print(
        f"\nSent {len(paths)} CT images by C-STORE in {sent_s:.1f} s; indexed.\n"
        f"  DICOMweb:   {base}/dicom-web/studies?PatientID={study.patient.patient_id}\n"
        f"  Token:      {token}\n"
        f"  curl:       curl -H 'Authorization: Bearer {token}' '{base}/dicom-web/studies'\n"
        f"  Cloud film: {link}\n"
        f"  DICOM SCP:  {s.ae_title}@{s.dicom_host}:{stack.dicom_port}\n",
        flush=True,
    )


async def run_demo(settings: StackSettings, *, images: int, once: bool) -> int:
    async def on_ready(stack: Stack) -> bool:
        await _show(stack, images=images)
        if not once:
            print("Serving until Ctrl-C.", flush=True)
        return not once

    return await serve_until_signal(settings, on_ready)

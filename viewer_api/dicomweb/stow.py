"""STOW-RS: store instances sent as multipart/related; type="application/dicom" (PS3.18 10.5).

Only the roles that write images (admin, radiologist) may store. The body is streamed to
temporary files part by part (never held in memory whole) under a per-part and a per-request
cap; each part is then checked in a worker thread (complete, identifies itself, belongs to the
study named in the path) and committed, a bounded batch at a time, through the same ingest as
the gateway's uploads. The response lists what was stored and, per failed instance, the reason
(PS3.18 Table 10.5.3-1): 200 when all were stored, 202 when some failed, 409 when none was; 413
when the body is over the request cap (nothing stored). A full disk (or quota) is 507 when
nothing of the request was stored; once a batch is stored, the later ones fail per instance
with 0xA700 Out of Resources (202). An instance whose stored bytes were
replaced (the keep-newer duplicate policy keeps the old ones as a prior version) is audited
with a 'replace' event naming the instance and its prior version.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from aiohttp import web

from image_store.audit import AuditEvent
from image_store.errors import InvalidDicom
from image_store.ingest import IngestOutcome, IngestSink
from image_store.keys import prior_version_key
from image_store.metadata import check_instance
from image_store.ports import Index
from image_store.records import InstanceQuery
from viewer_api.auth import Principal
from viewer_api.context import blocking, principal, services, uid_param
from viewer_api.dicomweb.json import attr
from viewer_api.dicomweb.multipart import part_files, receive_dicom_parts
from viewer_api.errors import BadRequest, full_disk_is_507, out_of_space

"""Roles that may store instances: clinicians read, auditors read the audit log."""
BATCH_BYTES = 64 * 1024**2
"""Most instance bytes read into memory for one ingest call (at least one instance)."""
FAILURE_PROCESSING = 0x0110  # Processing failure
FAILURE_CANNOT_UNDERSTAND = 0xC000
FAILURE_STUDY_MISMATCH = 0xA900
FAILURE_TOO_LARGE = 0xA700  # Out of resources
OUT_OF_RESOURCES = 0xA700  # the cloud's disk is full


@dataclass(frozen=True, slots=True)
class _Accepted:
    path: Path
    size: int
    sop_class_uid: str
    sop_uid: str


def _failed(reason: int, sop_class: str = "", sop_uid: str = "") -> dict[str, Any]:
    return {
        "00081150": attr("UI", sop_class),
        "00081155": attr("UI", sop_uid),
        "00081197": attr("US", reason),
    }


def _batches(accepted: list[_Accepted]) -> list[list[_Accepted]]:
    """Consecutive groups of at most BATCH_BYTES (a bigger instance goes alone)."""
    out: list[list[_Accepted]] = []
    size = 0
    for a in accepted:
        if not out or size + a.size > BATCH_BYTES:
            out.append([])
            size = 0
        out[-1].append(a)
        size += a.size
    return out


def _ingest_files(ingest: IngestSink, hospital: str, batch: list[_Accepted]) -> list[IngestOutcome]:
    """Read one batch from its files and commit it (in a worker thread)."""
    return ingest.ingest(hospital, [a.path.read_bytes() for a in batch])


def _stored_versions(index: Index, sop_uids: tuple[str, ...]) -> dict[str, tuple[str, str]]:
    """SOP Instance UID -> (object key, sha256) of the instances already stored."""
    if not sop_uids:
        return {}
    found = index.find_instances(InstanceQuery(sop_uids=sop_uids), limit=len(sop_uids))
    return {i.sop_uid: (i.object_key, i.sha256) for i in found}


async def store(request: web.Request) -> web.Response:
    svc = services(request)
    who = principal(request)
    study_uid = uid_param(request, "study") if "study" in request.match_info else ""
    settings = svc.settings
    failed: list[dict[str, Any]] = []
    stored: list[dict[str, Any]] = []
    async with part_files(settings.stow_tmp_dir) as where:
        with full_disk_is_507():  # nothing is stored before every part is received
            parts = await receive_dicom_parts(
                request,
                where,
                max_part=settings.stow_max_part_bytes,
                max_total=settings.stow_max_request_bytes,
            )
        if not parts:
            raise BadRequest("the body holds no instances")
        accepted: list[_Accepted] = []
        for part in parts:
            if part.path is None:
                failed.append(_failed(FAILURE_TOO_LARGE))
                continue
            try:
                ident = await blocking(check_instance, part.path)
            except InvalidDicom:
                failed.append(_failed(FAILURE_CANNOT_UNDERSTAND))
                continue
            if study_uid and ident.study_uid != study_uid:
                failed.append(
                    _failed(FAILURE_STUDY_MISMATCH, ident.sop_class_uid, ident.sop_instance_uid)
                )
                continue
            accepted.append(
                _Accepted(part.path, part.size, ident.sop_class_uid, ident.sop_instance_uid)
            )
        before = await blocking(
            _stored_versions, svc.index, tuple(dict.fromkeys(a.sop_uid for a in accepted))
        )
        base = settings.public_base_url
        for batch in _batches(accepted):
            try:
                outcomes = await blocking(_ingest_files, svc.ingest, who.hospital, batch)
            except OSError as exc:
                full = out_of_space(exc)
                if full is None:
                    raise
                if not stored:  # nothing of the request was stored: one clear 507
                    raise full from exc
                # the batches before stay stored; this one is refused, out of resources
                failed += [_failed(OUT_OF_RESOURCES, a.sop_class_uid, a.sop_uid) for a in batch]
                continue
            for a, outcome in zip(batch, outcomes, strict=True):
                if not outcome.ok:
                    failed.append(_failed(FAILURE_PROCESSING, a.sop_class_uid, a.sop_uid))
                    continue
                path = (
                    f"/dicom-web/studies/{outcome.study_uid}/series/{outcome.series_uid}"
                    f"/instances/{a.sop_uid}"
                )
                if outcome.replaced:
                    await _audit_replaced(request, who, path, before.get(a.sop_uid))
                stored.append(
                    {
                        "00081150": attr("UI", a.sop_class_uid),
                        "00081155": attr("UI", a.sop_uid),
                        "00081190": attr("UR", base + path),
                    }
                )
    body: dict[str, Any] = {}
    if study_uid:
        body["00081190"] = attr("UR", f"{settings.public_base_url}/dicom-web/studies/{study_uid}")
    if stored:
        body["00081199"] = {"vr": "SQ", "Value": stored}
    if failed:
        body["00081198"] = {"vr": "SQ", "Value": failed}
    status = 200 if not failed else (202 if stored else 409)
    return web.Response(
        body=json.dumps(body).encode(), status=status, content_type="application/dicom+json"
    )


async def _audit_replaced(
    request: web.Request, who: Principal, path: str, prior: tuple[str, str] | None
) -> None:
    """One 'replace' event for an instance whose stored bytes this request replaced; ``via``
    names where the prior version is kept."""
    via = f"prior:{prior_version_key(*prior)}" if prior is not None else "prior:unknown"
    event = AuditEvent(
        ts=time.time(),
        actor=who.actor,
        hospital=who.hospital,
        role=who.role,
        action="replace",
        resource=path,
        status=200,
        remote=request.remote or "",
        via=via,
    )
    await blocking(services(request).audit.append, event)

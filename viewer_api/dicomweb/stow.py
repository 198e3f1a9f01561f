"""STOW-RS: store instances sent as multipart/related; type="application/dicom" (PS3.18 10.5).

Each part is checked (complete, identifies itself, belongs to the study named in the path)
and committed through the same ingest as the gateway's uploads; the response lists what was
stored and, per failed instance, the reason (PS3.18 Table 10.5.3-1): 200 when all were
stored, 202 when some failed, 409 when none was.
"""

from __future__ import annotations

import json
from typing import Any

from aiohttp import BodyPartReader, MultipartReader, web

from image_store.errors import InvalidDicom
from image_store.metadata import check_instance
from viewer_api.context import blocking, principal, services, uid_param
from viewer_api.dicomweb.json import attr
from viewer_api.errors import BadRequest, NotAcceptable

MAX_PART_BYTES = 512 * 1024**2
FAILURE_PROCESSING = 0x0110  # Processing failure
FAILURE_CANNOT_UNDERSTAND = 0xC000
FAILURE_STUDY_MISMATCH = 0xA900
FAILURE_TOO_LARGE = 0xA700  # Out of resources


async def _parts(request: web.Request) -> list[bytes | int]:
    ctype = request.headers.get("Content-Type", "")
    if not ctype.lower().startswith("multipart/related"):
        raise NotAcceptable('STOW-RS takes multipart/related; type="application/dicom"')
    try:
        reader = MultipartReader(request.headers, request.content)
        out: list[bytes | int] = []
        while True:
            part = await reader.next()
            if part is None:
                return out
            if not isinstance(part, BodyPartReader):
                raise BadRequest("nested multipart bodies are not accepted")
            ptype = part.headers.get("Content-Type", "application/dicom").split(";")[0].strip()
            if ptype.lower() != "application/dicom":
                raise BadRequest(f"part of type {ptype!r}: only application/dicom is accepted")
            chunks, size = [], 0
            while chunk := await part.read_chunk(1 << 20):
                size += len(chunk)
                if size > MAX_PART_BYTES:
                    break
                chunks.append(chunk)
            if size > MAX_PART_BYTES:
                while await part.read_chunk(1 << 20):  # drain the rest of the part
                    pass
                out.append(FAILURE_TOO_LARGE)
            else:
                out.append(b"".join(chunks))
    except (ValueError, AssertionError) as exc:
        raise BadRequest(f"malformed multipart body: {exc}") from exc


def _failed(reason: int, sop_class: str = "", sop_uid: str = "") -> dict[str, Any]:
    return {
        "00081150": attr("UI", sop_class),
        "00081155": attr("UI", sop_uid),
        "00081197": attr("US", reason),
    }


async def store(request: web.Request) -> web.Response:
    svc = services(request)
    who = principal(request)
    study_uid = uid_param(request, "study") if "study" in request.match_info else ""
    parts = await _parts(request)
    if not parts:
        raise BadRequest("the body holds no instances")
    failed: list[dict[str, Any]] = []
    accepted: list[tuple[bytes, str, str]] = []
    for part in parts:
        if isinstance(part, int):
            failed.append(_failed(part))
            continue
        try:
            ident = check_instance(part)
            header_study = ident.study_uid
        except InvalidDicom:
            failed.append(_failed(FAILURE_CANNOT_UNDERSTAND))
            continue
        if study_uid and header_study != study_uid:
            failed.append(
                _failed(FAILURE_STUDY_MISMATCH, ident.sop_class_uid, ident.sop_instance_uid)
            )
            continue
        accepted.append((part, ident.sop_class_uid, ident.sop_instance_uid))
    stored: list[dict[str, Any]] = []
    base = svc.settings.public_base_url
    if accepted:
        outcomes = await blocking(svc.ingest.ingest, who.hospital, [a[0] for a in accepted])
        for (_, sop_class, sop_uid), outcome in zip(accepted, outcomes, strict=True):
            if outcome.ok:
                url = (
                    f"{base}/dicom-web/studies/{outcome.study_uid}/series/{outcome.series_uid}"
                    f"/instances/{sop_uid}"
                )
                stored.append(
                    {
                        "00081150": attr("UI", sop_class),
                        "00081155": attr("UI", sop_uid),
                        "00081190": attr("UR", url),
                    }
                )
            else:
                failed.append(_failed(FAILURE_PROCESSING, sop_class, sop_uid))
    body: dict[str, Any] = {}
    if study_uid:
        body["00081190"] = attr(
            "UR", f"{svc.settings.public_base_url}/dicom-web/studies/{study_uid}"
        )
    if stored:
        body["00081199"] = {"vr": "SQ", "Value": stored}
    if failed:
        body["00081198"] = {"vr": "SQ", "Value": failed}
    status = 200 if not failed else (202 if stored else 409)
    return web.Response(
        body=json.dumps(body).encode(), status=status, content_type="application/dicom+json"
    )

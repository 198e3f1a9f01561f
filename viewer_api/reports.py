"""Diagnostic reports beside the images: text or PDF attached to a study by its hospital's
radiologists, preliminary or final, and marked when eligible for mutual recognition (互认) across
hospitals. A DICOM SR is simply stored with STOW-RS and shows as an SR series.

    POST /api/studies/{study}/reports?status=final&mutual_recognition=true&title=...
         body text/plain (UTF-8) or application/pdf
    GET  /api/studies/{study}/reports       the list (who may read the study may read them)
    GET  /api/reports/{id}                  one report's content

Bytes go to the object store (sha256 checked on read); the list is kept in SQLite.
"""

from __future__ import annotations

import hashlib
import re
import time

from aiohttp import web

from image_store.keys import report_key
from image_store.state.ports import Reports
from image_store.state.records import Report
from image_store.verified import read_verified
from viewer_api.auth import new_link_id
from viewer_api.context import blocking, principal, services, uid_param
from viewer_api.dicomweb.access import visible_study
from viewer_api.errors import BadRequest, Forbidden, NotFound

MAX_TEXT = 1 << 20
MAX_PDF = 20 << 20
_MEDIA = {"text/plain": "txt", "application/pdf": "pdf"}
_STATUSES = ("preliminary", "final")


def _store(request: web.Request) -> Reports:
    return services(request).reports


def _flag(value: str, name: str) -> bool:
    if value not in ("", "true", "false"):
        raise BadRequest(f"{name} must be true or false")
    return value == "true"


async def add_report(request: web.Request) -> web.Response:
    study_uid = uid_param(request, "study")
    who = principal(request)
    reports = _store(request)
    status = request.query.get("status", "final")
    if status not in _STATUSES:
        raise BadRequest("status must be preliminary or final")
    mutual = _flag(request.query.get("mutual_recognition", ""), "mutual_recognition")
    title = request.query.get("title", "")
    if len(title) > 128 or any(ord(c) < 32 for c in title):
        raise BadRequest("title must be at most 128 printable characters")
    media = (request.content_type or "").lower()
    if media not in _MEDIA:
        raise BadRequest("a report is text/plain (UTF-8) or application/pdf")
    limit = MAX_TEXT if media == "text/plain" else MAX_PDF
    if request.content_length is not None and request.content_length > limit:
        raise BadRequest(f"the report is larger than {limit >> 20} MB")
    study = await visible_study(request, study_uid)
    if who.role not in ("radiologist", "admin") or not who.may_see(study.hospital):
        raise Forbidden("reports are written by the study hospital's radiologists")
    body = await request.content.read(limit + 1)
    if len(body) > limit or not body:
        raise BadRequest(f"the report must be 1 byte to {limit >> 20} MB")
    if media == "text/plain":
        try:
            body.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise BadRequest("a text report must be UTF-8") from exc
    elif not body.startswith(b"%PDF-"):
        raise BadRequest("the body is not a PDF document")
    report_id = new_link_id()
    key = report_key(study.hospital, study_uid, report_id, _MEDIA[media])
    digest = hashlib.sha256(body).hexdigest()
    svc = services(request)
    await blocking(svc.store.put, key, body, sha256=digest)
    report = Report(
        report_id,
        study_uid,
        study.hospital,
        media,
        title,
        status,
        mutual,
        key,
        len(body),
        digest,
        who.actor,
        time.time(),
    )
    await blocking(reports.add, report)
    return web.json_response(report.as_json(svc.settings.public_base_url), status=201)


async def list_reports(request: web.Request) -> web.Response:
    study_uid = uid_param(request, "study")
    await visible_study(request, study_uid)
    found = await blocking(_store(request).of_study, study_uid)
    base = services(request).settings.public_base_url
    return web.json_response([r.as_json(base) for r in found])


async def get_report(request: web.Request) -> web.Response:
    report_id = request.match_info["id"]
    if not re.fullmatch(r"[A-Za-z0-9_-]{16,64}", report_id):
        raise BadRequest("malformed report id")
    report = await blocking(_store(request).get, report_id)
    if report is None:
        raise NotFound("no such report")
    await visible_study(request, report.study_uid)
    data = await blocking(read_verified, services(request).store, report.object_key, report.sha256)
    charset = "utf-8" if report.media_type == "text/plain" else None
    return web.Response(body=data, content_type=report.media_type, charset=charset)

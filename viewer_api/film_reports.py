"""The reports of a cloud-film link's studies: what the page shows of them, and their bytes.

``GET /film/{token}/reports/{id}``  a report attached to a study of the link (a PDF may be
                                    framed by the page itself, inline)
"""

from __future__ import annotations

import re
from typing import Any

from aiohttp import web

from image_store.errors import IntegrityError
from image_store.records import StudyRecord
from image_store.verified import read_verified
from viewer_api.context import blocking, hospital_names, services
from viewer_api.errors import NotFound
from viewer_api.film_link import LinkClosed, film_base, open_link_or_error, study_of_link

STATUS_LABELS = {
    "preliminary": "初步报告 Preliminary",
    "final": "正式报告 Final",
    "amended": "修订报告 Amended",
}
ROLE_LABELS = {
    "radiologist": "放射科医生 Radiologist",
    "clinician": "临床医生 Clinician",
    "admin": "管理员 Administrator",
}
TEXT_LIMIT = 256 * 1024
"""Text reports up to this size travel in the manifest; larger ones are opened by URL."""


def reader_of(created_by: str, names: dict[str, str]) -> dict[str, str]:
    """Who wrote a report (``role:hospital:subject``, as the reports API records it): the user,
    their role in both languages and their hospital's name."""
    parts = created_by.split(":", 2)
    if len(parts) != 3:
        return {"name": created_by, "role": "", "hospital": ""}
    role, hospital, subject = parts
    return {
        "name": subject,
        "role": ROLE_LABELS.get(role, role),
        "hospital": names.get(hospital, hospital),
    }


async def study_reports(request: web.Request, study: StudyRecord) -> list[dict[str, Any]]:
    """The study's reports, newest last: status (and its label), reader, date, whether the
    stored bytes still match their checksum, the text of a text report, the URL of the bytes."""
    svc = services(request)
    names = await hospital_names(request)
    base = film_base(request.match_info["token"])
    out = []
    for report in await blocking(svc.reports.of_study, study.study_uid):
        text = None
        verified = True
        if report.media_type == "text/plain" and report.size <= TEXT_LIMIT:
            try:
                data = await blocking(read_verified, svc.store, report.object_key, report.sha256)
                text = data.decode("utf-8", "replace")
            except IntegrityError:
                verified = False  # a damaged report's text is not shown beside the images
        out.append(
            {
                "title": report.title,
                "status": report.status,
                "status_label": STATUS_LABELS.get(report.status, report.status),
                "reader": reader_of(report.created_by, names),
                "created_at": report.created_at,
                "verified": verified,
                "mutual_recognition": report.mutual_recognition,
                "media_type": report.media_type,
                "text": text,
                "url": f"{base}/reports/{report.id}",
            }
        )
    return out


async def report(request: web.Request) -> web.Response:
    link = await open_link_or_error(request)
    report_id = request.match_info["id"]
    svc = services(request)
    if not re.fullmatch(r"[A-Za-z0-9_-]{16,64}", report_id):
        raise NotFound("no such report")
    found = await blocking(svc.reports.get, report_id)
    if found is None:
        raise NotFound("no such report")
    try:
        await study_of_link(request, link, found.study_uid)
    except LinkClosed:
        raise NotFound("no such report") from None
    data = await blocking(read_verified, svc.store, found.object_key, found.sha256)
    charset = "utf-8" if found.media_type == "text/plain" else None
    headers = {
        "Cache-Control": "private, no-store",
        "Content-Disposition": "inline",
        "X-Content-Type-Options": "nosniff",
        # only the cloud-film page of this origin may frame it; nothing but a PDF viewer runs
        "Content-Security-Policy": "default-src 'none'; frame-ancestors 'self'"
        + ("" if found.media_type == "application/pdf" else "; sandbox"),
    }
    return web.Response(body=data, content_type=found.media_type, charset=charset, headers=headers)

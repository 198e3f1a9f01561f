"""Resolving path UIDs to records the caller may see (404 unknown, 403 another hospital)."""

from __future__ import annotations

from aiohttp import web

from image_store.records import (
    InstanceQuery,
    InstanceSummary,
    PatientRef,
    SeriesQuery,
    SeriesRecord,
    StudyRecord,
)
from viewer_api.context import VIA, blocking, principal, services
from viewer_api.errors import BadRequest, Forbidden, NotFound

BREAK_GLASS = "X-Break-Glass-Reason"
"""Header with which a clinician reads another hospital's study without a consent grant, in
an emergency: the reason is required and the access is flagged in the audit."""


async def visible_study(request: web.Request, study_uid: str) -> StudyRecord:
    study = await blocking(services(request).index.get_study, study_uid)
    if study is None:
        raise NotFound(f"no study {study_uid}")
    if principal(request).may_see(study.hospital):
        return study
    via = await cross_hospital_access(request, study)
    if via is None:
        raise Forbidden(
            f"study {study_uid} belongs to another hospital: it needs the patient's consent "
            f"(or, in an emergency, a {BREAK_GLASS} header)"
        )
    request[VIA] = via
    return study


async def cross_hospital_access(request: web.Request, study: StudyRecord) -> str | None:
    """'consent:<id>' or 'break-glass:<reason>' when the caller may read another hospital's
    study, None otherwise. Only radiologists and clinicians read under consent."""
    who = principal(request)
    if who.role not in ("radiologist", "clinician"):
        return None
    svc = services(request)
    if svc.consents is not None:
        ref = PatientRef(study.hospital, study.patient.patient_id, study.patient.issuer)
        link = await blocking(svc.index.person_link, ref)
        if link is not None:
            grant = await blocking(
                svc.consents.covering, link.person_key, who.hospital, who.subject, study.study_uid
            )
            if grant is not None:
                return f"consent:{grant.id}"
    reason = request.headers.get(BREAK_GLASS, "").strip()
    if reason:
        if len(reason) < 10:
            raise BadRequest(f"{BREAK_GLASS} must say why (at least 10 characters)")
        return "break-glass:" + reason[:200]
    return None


async def series_of(request: web.Request, study_uid: str, series_uid: str) -> SeriesRecord:
    found = await blocking(
        services(request).index.find_series,
        SeriesQuery(study_uid=study_uid, series_uids=(series_uid,)),
        limit=1,
    )
    if not found:
        raise NotFound(f"no series {series_uid} in study {study_uid}")
    return found[0]


async def instances_of(
    request: web.Request, study_uid: str, series_uid: str = "", sop_uid: str = ""
) -> list[InstanceSummary]:
    q = InstanceQuery(
        study_uid=study_uid, series_uid=series_uid, sop_uids=(sop_uid,) if sop_uid else ()
    )
    found = await blocking(services(request).index.find_instances, q, limit=10_000_000)
    if sop_uid and not found:
        raise NotFound(f"no instance {sop_uid} in series {series_uid}")
    return found

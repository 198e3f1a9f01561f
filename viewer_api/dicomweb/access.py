"""Resolving path UIDs to records the caller may see. A study that does not exist and a study
the caller may not read get the same 404, so study UIDs cannot be probed."""

from __future__ import annotations

from aiohttp import web

from image_store.access_rules import Reader, decide_access, needs_consent
from image_store.records import (
    InstanceQuery,
    InstanceSummary,
    PatientRef,
    PersonLink,
    SeriesQuery,
    SeriesRecord,
    StudyRecord,
)
from viewer_api.context import VIA, blocking, principal, services
from viewer_api.errors import BadRequest, NotFound

BREAK_GLASS = "X-Break-Glass-Reason"
"""Header with which a clinician reads another hospital's study without a consent grant, in
an emergency: the reason is required and the access is flagged in the audit."""

NOT_VISIBLE = (
    "no study {uid} you may read; another hospital's study needs the patient's consent "
    f"(or, in an emergency, a {BREAK_GLASS} header)"
)
"""The one answer for a study that does not exist and for one the caller may not read."""


def break_glass_reason(request: web.Request) -> str:
    """The request's break-glass reason ('' without the header); BadRequest when it does not
    say why (under 10 characters), checked before any study is looked up."""
    reason = request.headers.get(BREAK_GLASS, "").strip()
    if reason and len(reason) < 10:
        raise BadRequest(f"{BREAK_GLASS} must say why (at least 10 characters)")
    return reason[:200]


async def trusted_link(request: web.Request, patient: PatientRef) -> PersonLink | None:
    """The patient's person link when a trusted source (the hospital's gateway, an
    administrator) made it; an untrusted link counts as none."""
    link = await blocking(services(request).index.person_link, patient)
    return link if link is not None and link.trusted else None


def reader_of(request: web.Request) -> Reader:
    """The bearer principal as a reader for :func:`decide_access`."""
    who = principal(request)
    return Reader(who.hospital, who.role, who.subject)


async def consent_for(
    request: web.Request, reader: Reader, study: StudyRecord, person_key: str | None = None
) -> str | None:
    """The id of a consent grant letting ``reader`` read ``study`` through a trusted person link
    of its patient (``person_key`` when already known), None when none is needed or found."""
    if not needs_consent(reader, study.hospital):
        return None
    if person_key is None:
        ref = PatientRef(study.hospital, study.patient.patient_id, study.patient.issuer)
        link = await trusted_link(request, ref)
        person_key = "" if link is None else link.person_key
    if not person_key:
        return None
    grant = await blocking(
        services(request).consents.covering,
        person_key,
        reader.hospital,
        reader.user,
        study.study_uid,
    )
    return None if grant is None else grant.id


async def visible_study(request: web.Request, study_uid: str) -> StudyRecord:
    """The study if the caller may read it (setting the audit's VIA for a cross-hospital
    read); the same NotFound whether it does not exist or may not be read."""
    reason = break_glass_reason(request)
    study = await blocking(services(request).index.get_study, study_uid)
    if study is None:
        raise NotFound(NOT_VISIBLE.format(uid=study_uid))
    reader = reader_of(request)
    consent_id = await consent_for(request, reader, study)
    access = decide_access(reader, study.hospital, consent_id=consent_id, break_glass_reason=reason)
    if access is None:
        raise NotFound(NOT_VISIBLE.format(uid=study_uid))
    if access.via:
        request[VIA] = access.via
    return study


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

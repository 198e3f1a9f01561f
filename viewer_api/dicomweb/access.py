"""Resolving path UIDs to records the caller may see (404 unknown, 403 another hospital)."""

from __future__ import annotations

from aiohttp import web

from image_store.records import (
    InstanceQuery,
    InstanceSummary,
    SeriesQuery,
    SeriesRecord,
    StudyRecord,
)
from viewer_api.context import blocking, principal, services
from viewer_api.errors import Forbidden, NotFound


async def visible_study(request: web.Request, study_uid: str) -> StudyRecord:
    study = await blocking(services(request).index.get_study, study_uid)
    if study is None:
        raise NotFound(f"no study {study_uid}")
    if not principal(request).may_see(study.hospital):
        raise Forbidden(f"study {study_uid} belongs to another hospital")
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

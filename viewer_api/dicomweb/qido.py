"""QIDO-RS: search for studies, series and instances (PS3.18 10.6).

A search is answered 200 with a JSON array, empty when nothing matches (PS3.18 as clarified
by CP-2473) and also when the path names a study that does not exist or that the caller may
not read, or a series that is not in it: the answer is the same either way, so a search never
tells which UIDs exist elsewhere."""

from __future__ import annotations

import json
from typing import Any

from aiohttp import web

from viewer_api.context import blocking, principal, services, uid_param
from viewer_api.dicomweb import include, params
from viewer_api.dicomweb.access import visible_study
from viewer_api.dicomweb.json import instance_json, series_json, study_json
from viewer_api.errors import NotFound

DICOM_JSON = "application/dicom+json"


def _reply(items: list[dict[str, Any]]) -> web.Response:
    return web.Response(
        body=json.dumps(items, ensure_ascii=False, separators=(",", ":")).encode(),
        content_type=DICOM_JSON,
        charset="utf-8",
    )


def _paging(request: web.Request, values: dict[str, list[str]]) -> params.Paging:
    settings = services(request).settings
    return params.paging(values, default_limit=settings.default_limit, max_limit=settings.max_limit)


async def search_studies(request: web.Request) -> web.Response:
    svc = services(request)
    values = params.normalise(request.query, params.STUDY_KEYS)
    page = _paging(request, values)
    q = params.study_query(values, principal(request).visible_hospitals(), fuzzy=page.fuzzy)
    found = await blocking(svc.index.find_studies, q, limit=page.limit, offset=page.offset)
    base = svc.settings.public_base_url
    docs = [study_json(s, base) for s in found]
    await _include(request, docs, page, "study", "0020000D")
    return _reply(docs)


async def search_series(request: web.Request) -> web.Response:
    svc = services(request)
    study_uid = uid_param(request, "study") if "study" in request.match_info else ""
    values = params.normalise(request.query, params.SERIES_KEYS)
    page = _paging(request, values)
    if study_uid and not await _may_search(request, study_uid):
        return _reply([])
    # inside a study the caller was allowed to see (own hospital, consent or break-glass)
    hospitals = None if study_uid else principal(request).visible_hospitals()
    q = params.series_query(values, hospitals, study_uid)
    found = await blocking(svc.index.find_series, q, limit=page.limit, offset=page.offset)
    base = svc.settings.public_base_url
    docs = [series_json(s, base) for s in found]
    await _include(request, docs, page, "series", "0020000E")
    return _reply(docs)


async def search_instances(request: web.Request) -> web.Response:
    svc = services(request)
    study_uid = uid_param(request, "study") if "study" in request.match_info else ""
    series_uid = uid_param(request, "series") if "series" in request.match_info else ""
    allowed = params.INSTANCE_KEYS if series_uid else params.INSTANCE_KEYS | {"SeriesInstanceUID"}
    values = params.normalise(request.query, allowed)
    page = _paging(request, values)
    if study_uid and not await _may_search(request, study_uid):
        return _reply([])
    hospitals = None if study_uid else principal(request).visible_hospitals()
    q = params.instance_query(values, hospitals, study_uid, series_uid)
    found = await blocking(svc.index.find_instances, q, limit=page.limit, offset=page.offset)
    base = svc.settings.public_base_url
    docs = [instance_json(i, base) for i in found]
    await _include(request, docs, page, "instance", "00080018")
    return _reply(docs)


async def _may_search(request: web.Request, study_uid: str) -> bool:
    """True when the caller may read the study the path names; False, alike, when it does not
    exist or is another hospital's without consent or break-glass."""
    try:
        await visible_study(request, study_uid)
    except NotFound:
        return False
    return True


async def _include(
    request: web.Request, docs: list[dict[str, Any]], page: params.Paging, level: str, key: str
) -> None:
    """Apply includefield (in place): one or two index reads, only when something is missing."""
    if not include.wants_more(page, docs):
        return
    uids = [(d.get(key, {}).get("Value") or [""])[0] for d in docs]
    meta = await blocking(include.representative_metadata, services(request).index, level, uids)
    include.merge(docs, key, page, meta, level)

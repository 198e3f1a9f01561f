"""The cloud's priors endpoints for hospital gateways: what a gateway's Q/R SCP asks for when a
workstation finds and pulls priors.

``POST /gateway/priors/studies``, ``/series`` and ``/instances`` search (a JSON body, so no
patient identifier appears in a URL or an access log) and answer ``{"studies"|"series"|
"instances": [record, ...]}`` (image_store.priors.record_json);
``GET /gateway/priors/studies/{study}/series/{series}/instances/{instance}`` answers the
instance's bytes as stored (``application/dicom``, ``X-SHA256`` of the body, checked against
the index before it is sent).

The caller is a gateway with a live token (``POST /api/gateway/token``, viewer_api.ingest_api):
401 without one, 403 for a revoked credential or a staff token. Its hospital comes from the
credential, and what it may read is image_store.priors' rule: its own hospital's studies, and
another hospital's when the patient, through a trusted person link, consented to the gateway's
hospital as a whole. A study it may not read answers like one that does not exist (an empty
list, or 404). Every request is appended to the audit log here, under the gateway's credential
(``gateway:<hospital>:<credential id>``, role ``gateway``, ``via=consent:<id>`` for a
consented read); an instance read names its study, so it shows in the patient's access
history. These paths are outside ``/api/`` on purpose: the staff-token and audit middlewares
do not touch them.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from typing import Any, Protocol

from aiohttp import web

from image_store.audit import AuditEvent
from image_store.keys import is_valid_uid
from image_store.ports import Index, ObjectStore
from image_store.priors import ConsentLookup, IndexPriors, record_json
from image_store.records import StudyQuery
from viewer_api import openapi_schemas as s
from viewer_api.context import blocking, json_object, uid_param
from viewer_api.errors import BadRequest, NotFound, ViewerError
from viewer_api.gateway_auth import GatewayPrincipal
from viewer_api.ingest_api import gateway_principal
from viewer_api.route_table import Auth, Route, add_routes

logger = logging.getLogger(__name__)

PRIORS_PREFIX = "/gateway/priors"
STUDIES_PATH = PRIORS_PREFIX + "/studies"
SERIES_PATH = PRIORS_PREFIX + "/series"
INSTANCES_PATH = PRIORS_PREFIX + "/instances"
INSTANCE_PATH = STUDIES_PATH + "/{study}/series/{series}/instances/{instance}"
MAX_BODY = 64 * 1024
MAX_TEXT = 256
MAX_UIDS = 1000
MAX_LIMIT = 10_000


class AuditLog(Protocol):
    def append(self, event: AuditEvent) -> None: ...


@dataclass(frozen=True, slots=True)
class PriorsService:
    index: Index
    store: ObjectStore
    consents: ConsentLookup | None
    audit: AuditLog

    def priors_for(self, who: GatewayPrincipal) -> IndexPriors:
        """The reads the gateway ``who`` may make: its own hospital, others under consent."""
        return IndexPriors(self.index, self.store, who.hospital, consents=self.consents)


PRIORS = web.AppKey("gateway_priors", PriorsService)


def add_priors_routes(
    app: web.Application,
    index: Index,
    store: ObjectStore,
    *,
    consents: ConsentLookup | None,
    audit: AuditLog,
) -> None:
    """Add the priors endpoints to ``app``, which must have the ingest routes
    (viewer_api.ingest_api.add_ingest_routes: the token exchange and gateway authentication)."""
    app[PRIORS] = PriorsService(index, store, consents, audit)
    search = s.json_body({"type": "object"})
    found = {"200": s.json("the matches", s.ARRAY)}
    gw, big = Auth.GATEWAY, (413,)
    add_routes(
        app,
        [
            Route("POST", STUDIES_PATH, search_studies, "a gateway's study search", body=search,
                  auth=gw, ok=found, errors=big),
            Route("POST", SERIES_PATH, search_series, "a gateway's series search", body=search,
                  auth=gw, ok=found, errors=big),
            Route("POST", INSTANCES_PATH, search_instances, "a gateway's instance search",
                  body=search, auth=gw, ok=found, errors=big),
            Route("GET", INSTANCE_PATH, read_instance, "an instance a gateway may read",
                  auth=gw, ok={"200": {"description": "application/dicom"}}),
        ],
    )  # fmt: skip


# -- request bodies ----------------------------------------------------------------------------


def _text(body: dict[str, Any], name: str) -> str:
    value = body.get(name, "")
    if not isinstance(value, str) or len(value) > MAX_TEXT:
        raise BadRequest(f"{name} must be a string of at most {MAX_TEXT} characters")
    return value


def _uid(body: dict[str, Any], name: str) -> str:
    value = _text(body, name)
    if value and not is_valid_uid(value):
        raise BadRequest(f"{name} must be 1-64 digits and dots, got {value[:80]!r}")
    return value


def _list(body: dict[str, Any], name: str, *, uids: bool) -> tuple[str, ...]:
    value = body.get(name, [])
    if not isinstance(value, list) or len(value) > MAX_UIDS:
        raise BadRequest(f"{name} must be a list of at most {MAX_UIDS} strings")
    for item in value:
        if not isinstance(item, str) or len(item) > MAX_TEXT:
            raise BadRequest(f"{name} must be a list of strings")
        if uids and not is_valid_uid(item):
            raise BadRequest(f"{name} holds an invalid UID {item[:80]!r}")
    return tuple(value)


def _limit(body: dict[str, Any]) -> int:
    value = body.get("limit", MAX_LIMIT)
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= MAX_LIMIT:
        raise BadRequest(f"limit must be an integer 1..{MAX_LIMIT}")
    return value


def study_query_of(body: dict[str, Any]) -> StudyQuery:
    """The StudyQuery a search body asks for (hospitals and person are the cloud's to set)."""
    return StudyQuery(
        patient_id=_text(body, "patient_id"),
        patient_name=_text(body, "patient_name"),
        study_date_from=_text(body, "study_date_from"),
        study_date_to=_text(body, "study_date_to"),
        modalities=_list(body, "modalities", uids=False),
        accession_number=_text(body, "accession_number"),
        study_uids=_list(body, "study_uids", uids=True),
        study_description=_text(body, "study_description"),
    )


# -- handlers ----------------------------------------------------------------------------------


async def _audited(
    request: web.Request,
    who: GatewayPrincipal | None,
    resource: str,
    status: int,
    via: str = "",
) -> None:
    event = AuditEvent(
        ts=time.time(),
        actor=who.actor if who is not None else "anonymous",
        hospital=who.hospital if who is not None else "",
        role="gateway",
        action=request.method,
        resource=resource,
        status=status,
        remote=request.remote or "",
        via=via,
    )
    try:
        await blocking(request.app[PRIORS].audit.append, event)
    except Exception:  # the edge: a failed append is logged, the answer stands
        logger.exception("audit append failed for %s", resource)


async def _search(request: web.Request, kind: str) -> web.Response:
    who: GatewayPrincipal | None = None
    matched = 0
    status = 500
    try:
        who = await gateway_principal(request)
        body = await json_object(request, MAX_BODY)
        priors = request.app[PRIORS].priors_for(who)
        limit = _limit(body)
        found: list[Any]
        if kind == "studies":
            found = await blocking(priors.find_studies, study_query_of(body), limit=limit)
        elif kind == "series":
            study_uid = _uid(body, "study_uid")
            if not study_uid:
                raise BadRequest("study_uid is required")
            found = await blocking(
                priors.find_series,
                study_uid,
                series_uids=_list(body, "series_uids", uids=True),
                modality=_text(body, "modality"),
                limit=limit,
            )
        else:
            found = await blocking(
                priors.find_instances,
                _uid(body, "study_uid"),
                _uid(body, "series_uid"),
                sop_uids=_list(body, "sop_uids", uids=True),
                limit=limit,
            )
        matched = len(found)
        status = 200
        return web.json_response(
            {kind: [record_json(r) for r in found]}, headers={"Cache-Control": "no-store"}
        )
    except ViewerError as exc:
        status = exc.status
        raise
    finally:
        await _audited(request, who, f"{request.path}?matched={matched}", status)


async def search_studies(request: web.Request) -> web.Response:
    return await _search(request, "studies")


async def search_series(request: web.Request) -> web.Response:
    return await _search(request, "series")


async def search_instances(request: web.Request) -> web.Response:
    return await _search(request, "instances")


async def read_instance(request: web.Request) -> web.Response:
    """One instance's stored bytes, if the gateway may read its study (else 404)."""
    who: GatewayPrincipal | None = None
    via = ""
    status = 500
    try:
        who = await gateway_principal(request)
        study, series = uid_param(request, "study"), uid_param(request, "series")
        sop = uid_param(request, "instance")
        priors = request.app[PRIORS].priors_for(who)
        access = await blocking(priors.access, await blocking(priors.index.get_study, study))
        found = []
        if access is not None:
            found = await blocking(priors.find_instances, study, series, sop_uids=(sop,), limit=1)
        if not found:
            raise NotFound(f"no instance {sop} of a study this gateway may read")
        via = "" if access == "own" else str(access)
        data = await blocking(priors.read, found[0])  # checked against found[0].sha256
        status = 200
        return web.Response(
            body=data,
            content_type="application/dicom",
            headers={
                "X-SHA256": found[0].sha256,
                "Cache-Control": "no-store",
            },
        )
    except ViewerError as exc:
        status = exc.status
        raise
    finally:
        await _audited(request, who, request.path, status, via)

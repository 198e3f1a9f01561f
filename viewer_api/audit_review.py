"""The auditors' review of break-glass reads.

    GET    /api/audit/break-glass     break-glass reads (auditor, admin)

Read from the audit log's ``via`` index (image_store.audit.SqlAuditLog.reads_via), never a scan
of the whole log.
"""

from __future__ import annotations

import json
from typing import Any

from aiohttp import web

from image_store.audit import study_of
from viewer_api.context import blocking, hospital_names, principal, services
from viewer_api.errors import Forbidden


async def break_glass_reads(request: web.Request) -> web.Response:
    """Every break-glass read for review (auditors and admins), newest first: who, when, from
    which hospital, why, which study and its hospital, and the answer's status."""
    who = principal(request)
    if who.role not in ("auditor", "admin"):
        raise Forbidden("break-glass reads are reviewed by auditors")
    svc = services(request)

    def read() -> list[dict[str, Any]]:
        study_hospitals: dict[str, str] = {}
        out: list[dict[str, Any]] = []
        for e in svc.audit.reads_via("break-glass"):
            uid = study_of(e.resource)
            if uid and uid not in study_hospitals:
                study = svc.index.get_study(uid)
                study_hospitals[uid] = study.hospital if study else ""
            out.append(
                {
                    "ts": e.ts,
                    "actor": e.actor,
                    "hospital": e.hospital,
                    "role": e.role,
                    "reason": e.via.split(":", 1)[1],
                    "study_uid": uid,
                    "study_hospital": study_hospitals.get(uid, ""),
                    "resource": e.resource.split("?", 1)[0],
                    "status": e.status,
                }
            )
        return out

    names = await hospital_names(request)
    found = await blocking(read)
    for r in found:
        r["hospital_name"] = names.get(r["hospital"], r["hospital"])
    return web.json_response(found, dumps=lambda o: json.dumps(o, ensure_ascii=False))

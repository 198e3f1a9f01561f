"""What a cloud-film link opens: the token checked, the link's state, its extraction code, and
the studies in its scope. Every handler under ``/film/{token}`` starts here.

A token with a wrong signature is refused before any database access. A link whose extraction
code has not been entered in this browser (no valid unlock cookie) opens nothing but the code
page.
"""

from __future__ import annotations

from aiohttp import web

from image_store.access_rules import Reader, decide_access
from image_store.records import PatientRef, StudyQuery, StudyRecord
from image_store.state.records import ShareLink
from viewer_api.context import ACTOR, blocking, services
from viewer_api.dicomweb.access import consent_for
from viewer_api.errors import Forbidden, NotFound

UNLOCK_COOKIE = "cf_film"


class LinkClosed(Exception):
    """The link opens nothing: ``kind`` names the page to show (see ``pages.MESSAGES``)."""

    def __init__(self, kind: str, status: int) -> None:
        super().__init__(kind)
        self.kind, self.status = kind, status


def film_base(token: str) -> str:
    return f"/film/{token}"


def unlocked(request: web.Request, link: ShareLink) -> bool:
    """True when the link has no code, or this browser entered it (a signed cookie)."""
    if not link.has_code:
        return True
    value = request.cookies.get(UNLOCK_COOKIE, "")
    return bool(value) and services(request).signer.unlock_pass_valid(link.id, value)


async def open_link(request: web.Request, *, need_code: bool = True) -> ShareLink:
    """The link of ``{token}``, active, its parent (for a doctor's link) active too, and its
    code entered unless ``need_code`` is False; LinkClosed otherwise."""
    svc = services(request)
    link_id = svc.signer.share_id(request.match_info["token"])
    if link_id is None:
        raise LinkClosed("invalid", 403)
    request[ACTOR] = f"share:{link_id}"
    link = await blocking(svc.shares.get, link_id)
    if link is None:
        raise LinkClosed("invalid", 403)
    now = svc.shares.clock()
    state = link.state(now)
    if state == "active" and link.parent_id is not None:
        parent = await blocking(svc.shares.get, link.parent_id)
        state = "revoked" if parent is None else parent.state(now)
        state = "revoked" if state == "blocked" else state
    if state != "active":
        raise LinkClosed(state, 403)
    if need_code and not unlocked(request, link):
        raise LinkClosed("code", 401)
    return link


def as_http_error(err: LinkClosed) -> Exception:
    """For JSON, images and downloads: 404 for what is not in the link, 403 otherwise."""
    if err.status == 404:
        return NotFound("not in this link")
    if err.kind == "code":
        return Forbidden("enter the link's extraction code first")
    return Forbidden(f"this link is {err.kind}")


async def open_link_or_error(request: web.Request) -> ShareLink:
    """:func:`open_link` for everything but the page: a JSON 403/404 instead of LinkClosed."""
    try:
        return await open_link(request)
    except LinkClosed as err:
        raise as_http_error(err) from None


async def link_studies(request: web.Request, link: ShareLink) -> list[StudyRecord]:
    """The studies the link opens, newest first. A patient link opens the patient's studies at
    the link's hospital and, for a person a trusted source linked in the master patient index,
    other hospitals' studies that the patient's consent lets that hospital read."""
    svc = services(request)
    if link.scope == "study":
        study = await blocking(svc.index.get_study, link.study_uid)
        return [] if study is None else [study]
    ref = PatientRef(link.hospital, link.patient_id, link.issuer)
    own = await blocking(
        svc.index.find_studies,
        StudyQuery(hospitals=frozenset({link.hospital}), patient_id=link.patient_id),
        limit=1000,
    )
    found = {s.study_uid: s for s in own if s.patient.issuer == link.issuer}
    person = await blocking(svc.index.person_link, ref)
    if person is not None and person.trusted:
        reader = Reader(link.hospital, "link")
        linked = await blocking(
            svc.index.find_studies, StudyQuery(person_key=person.person_key), limit=1000
        )
        for study in linked:
            if study.study_uid in found or study.hospital == link.hospital:
                continue
            consent_id = await consent_for(request, reader, study, person.person_key)
            if decide_access(reader, study.hospital, consent_id=consent_id) is not None:
                found[study.study_uid] = study
    return sorted(found.values(), key=lambda s: (s.study_date, s.study_time), reverse=True)


async def study_of_link(request: web.Request, link: ShareLink, study_uid: str) -> StudyRecord:
    """``study_uid`` if the link opens it; LinkClosed('missing', 404) otherwise (a study out of
    the link's scope is not told apart from one that does not exist)."""
    if link.scope == "study":
        if study_uid != link.study_uid:
            raise LinkClosed("missing", 404)
        study = await blocking(services(request).index.get_study, study_uid)
        if study is None:
            raise LinkClosed("missing", 404)
        return study
    for study in await link_studies(request, link):
        if study.study_uid == study_uid:
            return study
    raise LinkClosed("missing", 404)

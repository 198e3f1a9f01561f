"""The regional API as an aiohttp application: DICOMweb, share links, the cloud-film page."""

from __future__ import annotations

from aiohttp import web

from image_store.audit import SqliteAuditLog
from image_store.consents import SqliteConsents
from image_store.ingest import LocalIngest
from image_store.persons import PersonKeyer
from image_store.ports import Index, ObjectStore
from viewer_api import admin, film, film_patient, film_viewer, middlewares, openapi, patients
from viewer_api import reports as reports_api
from viewer_api.auth import TokenSigner
from viewer_api.context import SERVICES, Services, ViewerSettings
from viewer_api.dicomweb import qido, rendered, stow, wado
from viewer_api.registry import SqliteRegistry
from viewer_api.report_store import SqliteReports
from viewer_api.share import SqliteShareLinks

__all__ = ["ViewerSettings", "create_app"]

DW = "/dicom-web"
STUDY = DW + "/studies/{study}"
SERIES = STUDY + "/series/{series}"
INSTANCE = SERIES + "/instances/{instance}"


async def healthz(request: web.Request) -> web.Response:
    return web.json_response({"status": "ok"})


def create_app(
    settings: ViewerSettings,
    store: ObjectStore,
    index: Index,
    shares: SqliteShareLinks,
    audit: SqliteAuditLog,
    signer: TokenSigner,
    *,
    consents: SqliteConsents | None = None,
    persons: PersonKeyer | None = None,
    reports: SqliteReports | None = None,
    registry: SqliteRegistry | None = None,
) -> web.Application:
    app = web.Application(
        middlewares=[
            middlewares.audit,
            middlewares.errors,
            middlewares.cors_preflight,
            middlewares.authenticate,
        ]
    )
    app[SERVICES] = Services(
        settings,
        store,
        index,
        shares,
        audit,
        signer,
        LocalIngest(store, index, persons=persons),
        consents=consents,
        persons=persons,
        reports=reports,
        registry=registry,
    )
    app.on_response_prepare.append(middlewares.security_headers)
    r = app.router
    r.add_get("/healthz", healthz)
    r.add_get("/openapi.json", openapi.openapi_json)
    r.add_get(DW + "/studies", qido.search_studies)
    r.add_get(DW + "/series", qido.search_series)
    r.add_get(DW + "/instances", qido.search_instances)
    r.add_post(DW + "/studies", stow.store)
    r.add_post(STUDY, stow.store)
    r.add_get(STUDY, wado.retrieve)
    r.add_get(STUDY + "/metadata", wado.metadata)
    r.add_get(STUDY + "/series", qido.search_series)
    r.add_get(STUDY + "/instances", qido.search_instances)
    r.add_get(SERIES, wado.retrieve)
    r.add_get(SERIES + "/metadata", wado.metadata)
    r.add_get(SERIES + "/thumbnail", wado.thumbnail)
    r.add_get(SERIES + "/instances", qido.search_instances)
    r.add_get(INSTANCE, wado.retrieve)
    r.add_get(INSTANCE + "/metadata", wado.metadata)
    r.add_get(INSTANCE + "/frames/{frames}", wado.frames)
    r.add_get(INSTANCE + "/bulkdata/{tag}", wado.bulkdata)
    r.add_get(INSTANCE + "/rendered", rendered.instance_rendered)
    r.add_get(STUDY + "/rendered", rendered.many_rendered)
    r.add_get(SERIES + "/rendered", rendered.many_rendered)
    r.add_get(INSTANCE + "/frames/{frame}/rendered", rendered.frame_rendered)
    r.add_get(INSTANCE + "/thumbnail", rendered.instance_thumbnail)
    r.add_get(STUDY + "/thumbnail", rendered.study_thumbnail)
    r.add_get("/patients/{id}/studies", patients.patient_studies)
    r.add_post("/api/patients/links", patients.link_patient)
    r.add_delete("/api/patients/links", patients.unlink_patient)
    r.add_post("/api/patients/merge", patients.merge_persons)
    r.add_get("/api/patients/{id}/consents", patients.patient_consents)
    r.add_get("/api/patients/{id}/access-history", patients.access_history)
    r.add_post("/api/consents", patients.grant_consent)
    r.add_delete("/api/consents/{id}", patients.revoke_consent)
    r.add_post("/api/consent-requests", patients.request_consent)
    r.add_get("/api/patients/{id}/consent-requests", patients.consent_requests)
    r.add_get("/api/admin/identity-reviews", patients.identity_reviews)
    r.add_post(
        "/api/admin/identity-reviews/{id}/{action:approve|reject}",
        patients.decide_identity_review,
    )
    r.add_get("/api/audit/break-glass", patients.break_glass_reads)
    r.add_post("/api/studies/{study}/reports", reports_api.add_report)
    r.add_get("/api/studies/{study}/reports", reports_api.list_reports)
    r.add_get("/api/reports/{id}", reports_api.get_report)
    r.add_get("/api/admin/hospitals", admin.list_hospitals)
    r.add_post("/api/admin/hospitals", admin.add_hospital)
    r.add_get("/api/admin/users", admin.list_users)
    r.add_post("/api/admin/users", admin.add_user)
    r.add_post("/api/admin/users/{subject}/{action:enable|disable}", admin.set_user_enabled)
    r.add_post("/api/shares", film.create_share)
    r.add_delete("/api/shares/{id}", film.revoke_share)
    r.add_get("/api/shares/{id}", film.get_share)
    r.add_post("/api/shares/{id}/unlock", film.unlock_share)
    r.add_get("/api/shares/{id}/qr.{kind:png|svg}", film.share_qr)
    r.add_get("/static/{name}", film_viewer.static)
    f = "/film/{token}"
    r.add_get(f, film_viewer.film)
    r.add_post(f + "/code", film_viewer.enter_code)
    r.add_get(f + "/series/{series}/thumbnail", film_viewer.thumbnail)
    r.add_get(f + "/studies/{study}/manifest.json", film_viewer.manifest)
    r.add_get(
        f + "/studies/{study}/series/{series}/instances/{instance}/frames/{frame}/rendered",
        film_viewer.rendered,
    )
    r.add_get(f + "/studies/{study}/download.zip", film_viewer.download_zip)
    r.add_get(f + "/reports/{id}", film_viewer.report)
    r.add_get(f + "/api/links", film_patient.list_links)
    r.add_post(f + "/api/links", film_patient.create_link)
    r.add_delete(f + "/api/links/{id}", film_patient.revoke_link)
    r.add_get(f + "/api/links/{id}/qr.{kind:png|svg}", film_patient.link_qr)
    r.add_get(f + "/api/history", film_patient.history)
    r.add_get(f + "/api/consents", film_patient.consents)
    r.add_post(f + "/api/consents/{id}/revoke", film_patient.revoke_consent)
    r.add_post(f + "/api/consents", film_patient.grant)
    r.add_get(f + "/api/hospitals", film_patient.hospitals)
    r.add_get(f + "/api/me", film_patient.me)
    r.add_get(f + "/api/consent-requests", film_patient.consent_requests)
    r.add_post(
        f + "/api/consent-requests/{id}/{action:approve|decline}", film_patient.decide_request
    )
    r.add_post(f + "/api/consent-code", film_patient.consent_code)
    return app

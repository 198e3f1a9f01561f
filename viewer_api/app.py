"""The regional API as an aiohttp application: DICOMweb, share links, the cloud-film page;
its routes are the table in viewer_api/routes.py."""

from __future__ import annotations

from aiohttp import web

from image_store.ingest import LocalIngest
from image_store.persons import PersonKeyer
from image_store.ports import Index, ObjectStore
from image_store.state.ports import AuditLog, Consents, Registry, Reports, ShareLinks
from viewer_api import middlewares
from viewer_api.auth import TokenSigner
from viewer_api.context import SERVICES, Services, ViewerSettings
from viewer_api.route_table import add_routes
from viewer_api.routes import ROUTES

__all__ = ["ViewerSettings", "create_app"]


def create_app(
    settings: ViewerSettings,
    store: ObjectStore,
    index: Index,
    shares: ShareLinks,
    audit: AuditLog,
    signer: TokenSigner,
    *,
    consents: Consents,
    reports: Reports,
    registry: Registry,
    persons: PersonKeyer | None = None,
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
    add_routes(app, ROUTES)
    return app

"""The regional state's SQL implementations opened on one database, as the typed bundle the
API, the CLI and the gateway use (cloudfilm.stores.open_state adds the configured database and
the migration of an embedded install's old files)."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

from image_store.audit import SqlAuditLog
from image_store.consents import SqlConsents
from image_store.gateway_credentials import SqlGatewayCredentials
from image_store.state.db import StateDb, as_db
from image_store.state.ports import RegionalState
from image_store.state.revocations import SqlRevocations
from image_store.state.uploads import SqlUploadSessions
from viewer_api.registry import SqlRegistry
from viewer_api.report_store import SqlReports
from viewer_api.share import SqlShareLinks


def open_sql_state(
    db: StateDb | Path,
    *,
    audit_key: bytes | None = None,
    clock: Callable[[], float] = time.time,
) -> RegionalState:
    """Every kind of regional state on ``db`` (a SQLite file when given a path); ``clock`` is
    the time links, consents and revocations are checked against."""
    db = as_db(db)
    return RegionalState(
        db=db,
        shares=SqlShareLinks(db, clock=clock),
        consents=SqlConsents(db, clock=clock),
        registry=SqlRegistry(db),
        reports=SqlReports(db),
        audit=SqlAuditLog(db, head_key=audit_key),
        revocations=SqlRevocations(db, clock=clock),
        gateway_credentials=SqlGatewayCredentials(db),
        uploads=SqlUploadSessions(db),
    )

"""Opening the configured object store, index and regional state (module-level functions, so
child processes can be handed ``functools.partial(open_index, settings)``)."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

from cloudfilm.config import ConfigError, StackSettings
from image_store.errors import KeyConfigError
from image_store.objects.filesystem import FilesystemObjectStore
from image_store.ports import Index, ObjectStore
from image_store.state.db import StateDb
from image_store.state.ports import RegionalState


def open_object_store(settings: StackSettings) -> ObjectStore:
    store = _open_plain_store(settings)
    if settings.encryption is None:
        return store
    from image_store.key_providers import env_key_provider, file_key_provider
    from image_store.objects.encrypted import EncryptedObjectStore

    try:
        keys = (
            file_key_provider(Path(settings.encryption_key_file))
            if settings.encryption_key_file
            else env_key_provider()
        )
        return EncryptedObjectStore(store, keys, settings.encryption)
    except KeyConfigError as exc:
        raise ConfigError(f"encryption: {exc}") from exc


def _open_plain_store(settings: StackSettings) -> ObjectStore:
    if settings.object_store == "s3":
        from botocore.exceptions import BotoCoreError, ClientError

        from image_store.objects.s3 import S3ObjectStore, S3Settings, make_client

        s3 = S3Settings(
            bucket=settings.s3_bucket,
            prefix=settings.s3_prefix,
            endpoint_url=settings.s3_endpoint_url or None,
            region=settings.s3_region or None,
        )
        client = make_client(s3)
        try:
            client.head_bucket(Bucket=s3.bucket)
        except (ClientError, BotoCoreError) as exc:
            raise ConfigError(f"S3 bucket {s3.bucket!r} is not reachable: {exc}") from exc
        return S3ObjectStore(client, s3)
    return FilesystemObjectStore(settings.objects_dir, fsync=settings.fsync)


def open_index(settings: StackSettings) -> Index:
    if settings.index == "postgres":
        import psycopg

        from image_store.index.postgres import PostgresIndex

        try:
            return PostgresIndex(settings.postgres_dsn)
        except psycopg.Error as exc:
            raise ConfigError(f"PostgreSQL index is not reachable: {exc}") from exc
    from image_store.index.sqlite import SqliteIndex

    return SqliteIndex(settings.index_path)


def open_state_db(settings: StackSettings) -> StateDb:
    """The database the region's state lives in: the index's (its SQLite file, or the
    PostgreSQL DSN)."""
    if settings.index == "postgres":
        import psycopg

        from image_store.state.db import PostgresStateDb

        db = PostgresStateDb(settings.postgres_dsn)
        try:
            db.conn()
        except psycopg.Error as exc:
            raise ConfigError(f"PostgreSQL state database is not reachable: {exc}") from exc
        return db
    from image_store.state.db import SqliteStateDb

    return SqliteStateDb(settings.index_path)


def open_state(
    settings: StackSettings,
    *,
    audit_key: bytes | None,
    clock: Callable[[], float] = time.time,
    migrate: bool = True,
) -> RegionalState:
    """Every kind of regional state on the index's database, typed on the ports; an embedded
    install's per-process files are moved in on first open (``migrate``). ``audit_key`` seals
    the audit log (None: appends unsealed, verification fails closed)."""
    from image_store.state.migrate import LegacyFiles, migrate_legacy
    from viewer_api.state import open_sql_state

    state = open_sql_state(open_state_db(settings), audit_key=audit_key, clock=clock)
    if migrate:
        files = LegacyFiles(
            registry=settings.registry_path,
            shares=settings.shares_path,
            reports=settings.reports_path,
            consents=settings.consents_path,
            gateways=settings.gateways_path,
            audit=settings.audit_path,
            revoked_tokens=settings.revoked_tokens_path,
        )
        migrate_legacy(state.db, files, state.revocations)
    return state

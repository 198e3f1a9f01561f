"""Opening the configured object store and index (module-level functions, so child processes
can be handed ``functools.partial(open_index, settings)``)."""

from __future__ import annotations

from pathlib import Path

from cloudfilm.config import ConfigError, StackSettings
from image_store.errors import KeyConfigError
from image_store.objects.filesystem import FilesystemObjectStore
from image_store.ports import Index, ObjectStore


def open_object_store(settings: StackSettings) -> ObjectStore:
    store = _open_plain_store(settings)
    if settings.encryption == "none":
        return store
    from image_store.crypto import Algorithm
    from image_store.key_providers import env_key_provider, file_key_provider
    from image_store.objects.encrypted import EncryptedObjectStore

    try:
        keys = (
            file_key_provider(Path(settings.encryption_key_file))
            if settings.encryption_key_file
            else env_key_provider()
        )
        return EncryptedObjectStore(store, keys, Algorithm.from_name(settings.encryption))
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

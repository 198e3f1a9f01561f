"""The embedded all-in-one stack: gateway + store + index + API in one process.

It wires the same interfaces a region runs on several machines (filesystem store and SQLite
index here), so the demo and the end-to-end tests exercise the real code paths.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import signal
import socket
import ssl
import threading
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

from aiohttp import web

from cloudfilm.config import StackSettings
from cloudfilm.stores import open_index, open_object_store
from dicom_codecs.edge import UploadCompression
from dicom_codecs.render import render_thumbnail
from image_store.audit import SqliteAuditLog
from image_store.consents import SqliteConsents
from image_store.derived import series_thumbnail
from image_store.ingest import LocalIngest
from image_store.objects.filesystem import make_dirs
from image_store.persons import PersonKeyer
from image_store.ports import Index, ObjectStore
from pacs_gateway.metrics import RateMeter, StoreCounters, render_metrics
from pacs_gateway.process import GatewayProcess, GatewaySpec
from pacs_gateway.qr import QrSettings
from pacs_gateway.scp import ScpSettings, TlsSettings
from pacs_gateway.spool import Spool
from pacs_gateway.uploader import Uploader, UploaderSettings
from viewer_api.app import ViewerSettings, create_app
from viewer_api.auth import RevokedTokens, TokenSigner, load_or_create_secret
from viewer_api.registry import SqliteRegistry
from viewer_api.report_store import SqliteReports
from viewer_api.share import SqliteShareLinks

logger = logging.getLogger(__name__)

HTTP_SHUTDOWN_S = 2.0
"""How long a stopping API lets requests in flight finish (aiohttp's default is 60 s)."""
UPLOADER_STOP_S = 3.0
"""How long a stop waits for the uploader's workers, all together."""


@dataclass(slots=True)
class Stack:
    """The opened components; ``start`` binds the sockets, ``stop`` releases everything."""

    settings: StackSettings
    store: ObjectStore
    index: Index
    spool: Spool
    uploader: Uploader
    shares: SqliteShareLinks
    audit: SqliteAuditLog
    signer: TokenSigner
    consents: SqliteConsents
    persons: PersonKeyer
    reports: SqliteReports
    registry: SqliteRegistry
    runner: web.AppRunner | None = None
    gateway: GatewayProcess | None = None
    http_port: int = 0
    dicom_port: int = 0
    store_counters: StoreCounters = field(default_factory=StoreCounters)
    rate_meter: RateMeter = field(default_factory=RateMeter)

    @classmethod
    def open(cls, settings: StackSettings) -> Stack:
        make_dirs(settings.data_dir)  # 0700
        store = open_object_store(settings)
        index = open_index(settings)
        load_or_create_secret(settings.secret_path)
        # its own key: signing keys may be rotated, person keys are stored hashes and may not
        persons = PersonKeyer(
            load_or_create_secret(settings.person_key_path), settings.mpi_issuers.split(",")
        )
        spool = Spool(
            settings.spool_dir,
            high_water_bytes=settings.spool_high_water_mb * 1024**2,
            min_free_bytes=settings.spool_min_free_mb * 1024**2,
            fsync=settings.fsync,
            no_plaintext_after_upload=settings.encryption != "none",
        )

        def warm_thumbnails(series_uids: set[str]) -> None:
            for uid in sorted(series_uids):
                series_thumbnail(store, index, uid, render_thumbnail)

        uploader = Uploader(
            spool,
            LocalIngest(store, index, persons=persons, trusted_links=True),
            settings.hospital,
            UploaderSettings(
                workers=settings.upload_workers,
                batch_size=settings.upload_batch,
                compression=UploadCompression(settings.upload_compression),
                idle_poll_s=0.05,  # the SCP writes from another process: poll the spool
            ),
            on_idle=warm_thumbnails,
        )
        return cls(
            settings=settings,
            store=store,
            index=index,
            spool=spool,
            uploader=uploader,
            shares=SqliteShareLinks(settings.shares_path),
            audit=SqliteAuditLog(
                settings.audit_path, head_key=load_or_create_secret(settings.audit_key_path)
            ),
            # follows `cloudfilm keys rotate|retire` while it runs
            signer=TokenSigner.from_files(
                settings.secret_path, revoked=RevokedTokens(settings.revoked_tokens_path)
            ),
            consents=SqliteConsents(settings.consents_path),
            persons=persons,
            reports=SqliteReports(settings.reports_path),
            registry=SqliteRegistry(settings.registry_path),
        )

    def base_url(self) -> str:
        s = self.settings
        scheme = "https" if s.https_cert_file else "http"
        return s.public_base_url.rstrip("/") or f"{scheme}://{s.http_host}:{self.http_port}"

    async def start(self) -> None:
        s = self.settings
        # load the Numba kernels (from the on-disk JIT cache) before the first request needs them;
        # in a daemon thread, so a stop during a first-ever compilation does not wait for it
        await _in_daemon_thread(warm_codecs)
        sock = socket.create_server((s.http_host, s.http_port))
        self.http_port = int(sock.getsockname()[1])
        app = create_app(
            ViewerSettings(
                public_base_url=self.base_url(),
                share_ttl_s=s.share_ttl_hours * 3600,
                cors_origins=frozenset(o.strip() for o in s.cors_origins.split(",") if o.strip()),
                stow_max_part_bytes=s.stow_max_part_mb * 1024**2,
                stow_max_request_bytes=s.stow_max_request_mb * 1024**2,
                stow_tmp_dir=s.data_dir / "tmp",
            ),
            self.store,
            self.index,
            self.shares,
            self.audit,
            self.signer,
            consents=self.consents,
            persons=self.persons,
            reports=self.reports,
            registry=self.registry,
        )
        app.router.add_get("/metrics", self._metrics)
        self.runner = web.AppRunner(app, access_log=None, shutdown_timeout=HTTP_SHUTDOWN_S)
        await self.runner.setup()
        await web.SockSite(self.runner, sock, ssl_context=_https_context(s)).start()
        self.uploader.start()
        self.gateway = GatewayProcess(
            GatewaySpec(
                scp=gateway_scp_settings(s),
                spool_dir=s.spool_dir,
                high_water_bytes=self.spool.high_water_bytes,
                min_free_bytes=self.spool.min_free_bytes,
                fsync=s.fsync,
                log_level=logging.getLogger().getEffectiveLevel(),
                # encrypted at rest: no journal, whose segments keep instances past upload
                journal_bytes=0 if s.encryption != "none" else s.spool_journal_mb * 1024**2,
                qr=QrSettings(
                    ae_title=s.ae_title,
                    hospitals=s.qr_hospital_set(),
                    move_destinations=s.move_destination_map(),
                    hospital=s.hospital,
                    consents_path=s.consents_path,
                ),
                index_factory=functools.partial(open_index, s),
                store_factory=functools.partial(open_object_store, s),
                audit_factory=functools.partial(open_gateway_audit, s),
            ),
            self.spool.usage,
            self.store_counters,
            workers=s.dicom_workers,
        )
        self.dicom_port = await asyncio.to_thread(self.gateway.start)
        logger.info(
            "CloudFilm up: http %s, DICOM %s@%s:%d",
            self.base_url(),
            s.ae_title,
            s.dicom_host,
            self.dicom_port,
        )

    async def _metrics(self, request: web.Request) -> web.Response:
        text = await asyncio.to_thread(
            render_metrics, self.spool, self.uploader, self.store_counters, self.rate_meter
        )
        return web.Response(
            text=text,
            content_type="text/plain",
            charset="utf-8",
            headers={"Cache-Control": "no-store"},
        )

    async def stop(self) -> None:
        """Release everything within ~5 s: the gateway processes (SIGTERM, SIGKILL past their
        bound), the uploader (its batch in flight is redone at the next start: a spool entry
        goes only once stored and indexed) and the HTTP server (in-flight requests get
        ``HTTP_SHUTDOWN_S``), all at once; then the stores."""
        gateway, self.gateway = self.gateway, None
        workers = max(1, self.settings.upload_workers)
        parts = [asyncio.to_thread(self.uploader.stop, UPLOADER_STOP_S / workers)]
        if gateway is not None:
            parts.append(asyncio.to_thread(gateway.stop))
        if self.runner is not None:
            parts.append(self.runner.cleanup())
            self.runner = None
        await asyncio.gather(*parts)
        self.index.close()
        self.consents.close()
        self.reports.close()
        self.registry.close()


def open_gateway_audit(s: StackSettings) -> SqliteAuditLog:
    """The API's audit log, opened by a gateway process for its Query/Retrieve records."""
    return SqliteAuditLog(s.audit_path, head_key=load_or_create_secret(s.audit_key_path))


def gateway_scp_settings(s: StackSettings) -> ScpSettings:
    """The gateway's SCP settings: listener, TLS and the access policy of the DICOM port."""
    return ScpSettings(
        ae_title=s.ae_title,
        host=s.dicom_host,
        port=s.dicom_port,
        stream_to_disk=True,
        tls=_dicom_tls(s),
        maximum_associations=s.dicom_max_associations,
        maximum_associations_per_host=s.dicom_max_associations_per_host,
        acse_timeout_s=s.dicom_acse_timeout_s,
        network_timeout_s=s.dicom_idle_timeout_s,
        ae_rules=s.dicom_ae_rules(),
        open_rights=s.dicom_open_rights(),
        allowed_networks=s.dicom_network_list(),
    )


def _https_context(s: StackSettings) -> ssl.SSLContext | None:
    if not s.https_cert_file:
        return None
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.load_cert_chain(s.https_cert_file, s.https_key_file)
    return ctx


def _dicom_tls(s: StackSettings) -> TlsSettings | None:
    if not s.dicom_tls_cert_file:
        return None
    return TlsSettings(
        cert_file=Path(s.dicom_tls_cert_file),
        key_file=Path(s.dicom_tls_key_file),
        client_ca_file=Path(s.dicom_tls_ca_file) if s.dicom_tls_ca_file else None,
    )


async def _in_daemon_thread(fn: Callable[[], None]) -> None:
    loop = asyncio.get_running_loop()
    done: asyncio.Future[None] = loop.create_future()

    def run() -> None:
        try:
            fn()
        except BaseException as exc:  # handed to the awaiting coroutine
            loop.call_soon_threadsafe(_settle, done, exc)
        else:
            loop.call_soon_threadsafe(_settle, done, None)

    threading.Thread(target=run, name="warm-codecs", daemon=True).start()
    await done


def _settle(future: asyncio.Future[None], exc: BaseException | None) -> None:
    if future.done():
        return
    if exc is None:
        future.set_result(None)
    else:
        future.set_exception(exc)


def warm_codecs() -> None:
    """Load the cached JIT of the RLE and render kernels so no request pays for it (compiles
    and caches them the first time: scripts/setup.sh does that once after installing)."""
    from dicom_codecs import render
    from dicom_codecs.pydicom_plugin import register, warm_up

    register()
    warm_up()
    render.warm_up()


async def serve_until_signal(
    settings: StackSettings, on_ready: Callable[[Stack], Awaitable[bool]] | None = None
) -> int:
    """Run the stack until SIGINT/SIGTERM (or until ``on_ready`` returns False); exit code."""
    stack = Stack.open(settings)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    # index, store and render calls run in worker threads; S3 reads wait on the network, so
    # more threads than cores keep WADO-RS read-ahead busy (asyncio's default is cores + 4)
    loop.set_default_executor(ThreadPoolExecutor(max_workers=16, thread_name_prefix="io"))
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    code = 0
    try:
        starting = asyncio.create_task(stack.start())
        stopping = asyncio.create_task(stop.wait())
        await asyncio.wait({starting, stopping}, return_when=asyncio.FIRST_COMPLETED)
        if not starting.done():  # asked to stop while starting: give up the start
            starting.cancel()
            await asyncio.gather(starting, return_exceptions=True)
            return 0
        stopping.cancel()
        starting.result()
        if on_ready is not None:
            keep_serving = await on_ready(stack)
            if not keep_serving:
                return 0
        print(
            f"ready: http {stack.base_url()} dicom {settings.ae_title}@{settings.dicom_host}:"
            f"{stack.dicom_port}",
            flush=True,
        )
        await stop.wait()
    finally:
        await stack.stop()
    return code

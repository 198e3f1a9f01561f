"""The regional cloud (API, DICOMweb, film, the gateways' ingest endpoint) and the embedded
all-in-one stack.

``cloudfilm cloud`` runs the cloud alone: no DICOM listener, gateways deliver through
``POST /api/ingest/batch`` with their credentials. ``cloudfilm serve`` runs the same cloud plus
a hospital gateway node (cloudfilm.gateway) in one process, joined by the same HTTP wire on
127.0.0.1 with a credential of its own (``DATA/gateway/credential.json``), so the demo and the
end-to-end tests exercise the real paths. The cloud renders the thumbnails of the series the
ingest endpoint committed once commits pause.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import signal
import socket
import ssl
import threading
import time
from collections.abc import Awaitable, Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

from aiohttp import web

from cloudfilm.config import StackSettings
from cloudfilm.gateway import (
    GatewayNode,
    cloud_qr_sources,
    cloud_sink_settings,
    gateway_scp_settings,
    metrics_response,
)
from cloudfilm.stores import open_index, open_object_store, open_state, open_state_db
from dicom_codecs.render import render_thumbnail
from image_store.audit import SqlAuditLog
from image_store.derived import series_thumbnail
from image_store.fsutil import make_dirs
from image_store.gateway_assertion import TOKEN_PATH, CredentialFileError
from image_store.gateway_credentials import GatewayCredentials
from image_store.ingest import LocalIngest
from image_store.persons import PersonKeyer
from image_store.ports import Index, ObjectStore
from image_store.state.ports import AuditLog, Consents, RegionalState, Registry, Reports, ShareLinks
from pacs_gateway.cloud_sink import HttpIngestSink
from pacs_gateway.credential import GatewayCredential, load_credential
from pacs_gateway.spool import Spool
from pacs_gateway.uploader import Uploader
from viewer_api.app import ViewerSettings, create_app
from viewer_api.auth import TokenSigner, load_or_create_secret
from viewer_api.gateway_auth import GatewayAuth, issue_credential
from viewer_api.ingest_api import IngestCounters, IngestSettings, add_ingest_routes
from viewer_api.priors_api import add_priors_routes
from viewer_api.route_table import Auth, Route, add_routes
from viewer_api.upload_sessions import UploadSettings, add_upload_routes

__all__ = ["Stack", "gateway_scp_settings", "serve_until_signal"]

logger = logging.getLogger(__name__)

HTTP_SHUTDOWN_S = 2.0
"""How long a stopping API lets requests in flight finish (aiohttp's default is 60 s)."""
THUMBNAIL_QUIET_S = 1.0
"""The cloud renders thumbnails of committed series once no commit came for this long."""


class SeriesWarmer:
    """Renders the thumbnails of series the ingest endpoint committed, in one daemon thread,
    once commits pause for ``quiet_s`` (a study still arriving leaves the CPU to ingest)."""

    def __init__(self, warm: Callable[[set[str]], None], quiet_s: float = THUMBNAIL_QUIET_S):
        self._warm = warm
        self._quiet_s = quiet_s
        self._pending: set[str] = set()
        self._last = 0.0
        self._cond = threading.Condition()
        self._stopped = False
        self._thread = threading.Thread(target=self._run, name="thumbnails", daemon=True)
        self._thread.start()

    def add(self, series_uids: Iterable[str]) -> None:
        with self._cond:
            self._pending.update(series_uids)
            self._last = time.monotonic()
            self._cond.notify()

    def stop(self) -> None:
        with self._cond:
            self._stopped = True
            self._cond.notify()

    def _run(self) -> None:
        while True:
            with self._cond:
                while not self._stopped:
                    wait = self._last + self._quiet_s - time.monotonic()
                    if self._pending and wait <= 0:
                        break
                    self._cond.wait(wait if self._pending else None)
                if self._stopped:
                    return
                todo, self._pending = self._pending, set()
            try:
                self._warm(todo)
            except Exception:  # the edge of the thread: a thumbnail is redone on request
                logger.exception("warming thumbnails failed")


@dataclass(slots=True)
class Stack:
    """The opened components; ``start`` binds the sockets, ``stop`` releases everything."""

    settings: StackSettings
    store: ObjectStore
    index: Index
    shares: ShareLinks
    audit: AuditLog
    signer: TokenSigner
    consents: Consents
    persons: PersonKeyer
    reports: Reports
    registry: Registry
    state: RegionalState
    """Every kind of regional state, on the index's database (the fields above come from it)."""
    embedded_gateway: bool = True
    """``serve``: run a gateway node delivering to this cloud over HTTP on loopback."""
    runner: web.AppRunner | None = None
    gateway: GatewayNode | None = None
    gateway_credentials: GatewayCredentials | None = None
    warmer: SeriesWarmer | None = None
    ingest_counters: IngestCounters = field(default_factory=IngestCounters)
    http_port: int = 0
    dicom_port: int = 0

    @property
    def uploader(self) -> Uploader:
        """The embedded gateway's uploader (RuntimeError for a cloud without one)."""
        if self.gateway is None:
            raise RuntimeError("this stack runs no gateway")
        return self.gateway.uploader

    @property
    def spool(self) -> Spool:
        """The embedded gateway's spool (RuntimeError for a cloud without one)."""
        if self.gateway is None:
            raise RuntimeError("this stack runs no gateway")
        return self.gateway.spool

    @classmethod
    def open(cls, settings: StackSettings, *, embedded_gateway: bool = True) -> Stack:
        make_dirs(settings.data_dir)  # 0700
        store = open_object_store(settings)
        index = open_index(settings)
        load_or_create_secret(settings.secret_path)
        # its own key: signing keys may be rotated, person keys are stored hashes and may not
        persons = PersonKeyer(
            load_or_create_secret(settings.person_key_path), settings.mpi_issuers.split(",")
        )
        state = open_state(settings, audit_key=load_or_create_secret(settings.audit_key_path))
        return cls(
            settings=settings,
            store=store,
            index=index,
            shares=state.shares,
            audit=state.audit,
            # follows `cloudfilm keys rotate|retire` while it runs
            signer=TokenSigner.from_files(settings.secret_path, revoked=state.revocations),
            consents=state.consents,
            persons=persons,
            reports=state.reports,
            registry=state.registry,
            state=state,
            embedded_gateway=embedded_gateway,
        )

    def base_url(self) -> str:
        s = self.settings
        scheme = "https" if s.https_cert_file else "http"
        return s.public_base_url.rstrip("/") or f"{scheme}://{s.http_host}:{self.http_port}"

    def internal_url(self) -> str:
        """The URL this process's own gateway reaches the API at (loopback)."""
        s = self.settings
        scheme = "https" if s.https_cert_file else "http"
        wildcard = s.http_host in ("0.0.0.0", "", "localhost")  # noqa: S104 (a comparison)
        host = "127.0.0.1" if wildcard else s.http_host
        host = "[::1]" if host == "::" else (f"[{host}]" if ":" in host else host)
        return f"{scheme}://{host}:{self.http_port}"

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
        self._add_ingest(app)
        add_routes(
            app,
            [
                Route(
                    "GET",
                    "/metrics",
                    self._metrics,
                    "Prometheus metrics: the gateway's spool and uploads, ingest per hospital",
                    auth=Auth.NONE,
                    ok={"200": {"description": "text/plain"}},
                )
            ],
        )
        self.runner = web.AppRunner(app, access_log=None, shutdown_timeout=HTTP_SHUTDOWN_S)
        await self.runner.setup()
        await web.SockSite(self.runner, sock, ssl_context=_https_context(s)).start()
        if self.embedded_gateway:
            self.gateway = await asyncio.to_thread(self._open_gateway)
            self.dicom_port = await asyncio.to_thread(self.gateway.start)
            logger.info(
                "CloudFilm up: http %s, DICOM %s@%s:%d",
                self.base_url(),
                s.ae_title,
                s.dicom_host,
                self.dicom_port,
            )
        else:
            logger.info("CloudFilm cloud up: http %s", self.base_url())

    def _add_ingest(self, app: web.Application) -> None:
        """The gateways' ingest endpoint: credentials from the regional state; assertions
        must name this API's public token URL (or, for the embedded gateway, the loopback one)."""
        s = self.settings
        self.gateway_credentials = self.state.gateway_credentials
        audience = frozenset({self.base_url() + TOKEN_PATH, self.internal_url() + TOKEN_PATH})
        store, index = self.store, self.index

        def warm_thumbnails(series_uids: set[str]) -> None:
            for uid in sorted(series_uids):
                series_thumbnail(store, index, uid, render_thumbnail)

        self.warmer = SeriesWarmer(warm_thumbnails)
        self.ingest_counters = add_ingest_routes(
            app,
            GatewayAuth(self.gateway_credentials, audience),
            LocalIngest(self.store, self.index, persons=self.persons, trusted_links=True),
            settings=IngestSettings(
                max_part_bytes=s.stow_max_part_mb * 1024**2,
                max_request_bytes=s.stow_max_request_mb * 1024**2,
                tmp_dir=s.data_dir / "tmp",
            ),
            counters=self.ingest_counters,
            staff_verifier=self.signer.verify,
            on_committed=self.warmer.add,
        )
        add_upload_routes(
            app,
            UploadSettings(s.data_dir / "uploads", max_bytes=s.upload_session_max_mb * 1024**2),
            self.state.audit,
            self.state.uploads,
            self.store,
        )
        add_priors_routes(
            app,
            self.index,
            self.store,
            consents=self.state.consents,
            audit=self.state.audit,
        )

    def _open_gateway(self) -> GatewayNode:
        """The embedded gateway node, delivering to this API over the loopback wire."""
        s = self.settings
        credential = self._embedded_credential()
        ca_bundle = Path(s.cloud_ca_file or s.https_cert_file) if s.https_cert_file else None
        cloud = cloud_sink_settings(
            s,
            self.internal_url(),
            ca_bundle=ca_bundle,
            # HTTPS with the API's own certificate (and no CA named): trust exactly that one
            pinned_certificate=(
                Path(s.https_cert_file) if s.https_cert_file and not s.cloud_ca_file else None
            ),
        )
        sink = HttpIngestSink(credential, cloud)
        # the same wire as a hospital's gateway
        qr = cloud_qr_sources(
            s,
            credential,
            s.embedded_credential_path,
            cloud,
            audit_factory=functools.partial(open_gateway_audit, s),
        )
        return GatewayNode.open(s, sink, credential.hospital, qr=qr)

    def _embedded_credential(self) -> GatewayCredential:
        """The embedded gateway's credential (``DATA/gateway/credential.json``): issued on first
        start, the hospital registered if needed; issued anew if the file's credential is for
        another hospital, revoked or unknown here (the old one is revoked)."""
        s = self.settings
        path = s.embedded_credential_path
        creds = self.gateway_credentials
        assert creds is not None
        if path.is_file():
            try:
                cred = load_credential(path)
            except CredentialFileError:
                logger.warning("the embedded gateway's credential file is unreadable: reissued")
                cred = None
            known = creds.get(cred.credential_id) if cred is not None else None
            live = cred is not None and known is not None and not known.revoked
            if live and cred is not None and cred.hospital == s.hospital:
                return cred
            if cred is not None and known is not None:
                creds.revoke(cred.credential_id, at=time.time())
            path.unlink()
        if s.hospital not in self.registry.hospital_names():
            self.registry.add_hospital(s.hospital, s.hospital)
        make_dirs(path.parent)
        issue_credential(creds, self.registry, s.hospital, path)
        return load_credential(path)

    async def _metrics(self, request: web.Request) -> web.Response:
        gateway = self.gateway
        text = self.ingest_counters.render()
        if gateway is not None:
            text = await asyncio.to_thread(gateway.metrics_text) + text
        return metrics_response(text)

    async def stop(self) -> None:
        """Release everything within ~5 s: the gateway node (SCP processes: SIGTERM, SIGKILL past
        their bound; the uploader's batch in flight is redone at the next start: a spool entry
        goes only once stored and indexed) and the HTTP server (in-flight requests get
        ``HTTP_SHUTDOWN_S``), all at once; then the stores."""
        gateway, self.gateway = self.gateway, None
        parts = []
        if gateway is not None:
            parts.append(asyncio.to_thread(gateway.stop))
        if self.runner is not None:
            parts.append(self.runner.cleanup())
            self.runner = None
        await asyncio.gather(*parts)
        if self.warmer is not None:
            self.warmer.stop()
        self.index.close()
        self.state.close()


def open_gateway_audit(s: StackSettings) -> SqlAuditLog:
    """The region's audit log (one chain in the state database), opened by a gateway process
    for its Query/Retrieve records."""
    return SqlAuditLog(open_state_db(s), head_key=load_or_create_secret(s.audit_key_path))


def _https_context(s: StackSettings) -> ssl.SSLContext | None:
    if not s.https_cert_file:
        return None
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.load_cert_chain(s.https_cert_file, s.https_key_file)
    return ctx


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
    settings: StackSettings,
    on_ready: Callable[[Stack], Awaitable[bool]] | None = None,
    *,
    embedded_gateway: bool = True,
) -> int:
    """Run the stack (``embedded_gateway=False``: the cloud alone) until SIGINT/SIGTERM (or
    until ``on_ready`` returns False); exit code."""
    stack = Stack.open(settings, embedded_gateway=embedded_gateway)
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
        if embedded_gateway:
            print(
                f"ready: http {stack.base_url()} dicom {settings.ae_title}@"
                f"{settings.dicom_host}:{stack.dicom_port}",
                flush=True,
            )
        else:
            print(f"ready: cloud http {stack.base_url()}", flush=True)
        await stop.wait()
    finally:
        await stack.stop()
    return code

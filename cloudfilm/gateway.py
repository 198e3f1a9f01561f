"""The hospital side of the region: DICOM SCP processes, the spool, the uploader and /metrics.

``cloudfilm gateway run`` runs it alone, delivering to the regional cloud through its ingest API
(pacs_gateway.cloud_sink.HttpIngestSink, with the credential the region issued);
``cloudfilm serve`` runs the same node beside the cloud and delivers over HTTP on 127.0.0.1 the
same way. Its data directory holds the spool (and its journal) only: no signing key, person
key, key-encryption key, index or object store of the region.
"""

from __future__ import annotations

import asyncio
import logging
import signal
import socket
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

from aiohttp import web

from cloudfilm.config import ConfigError, StackSettings
from image_store.fsutil import make_dirs
from image_store.ingest import IngestSink
from image_store.ports import Index, ObjectStore
from pacs_gateway.cloud_sink import CloudSinkSettings, HttpIngestSink
from pacs_gateway.credential import GatewayCredential
from pacs_gateway.metrics import RateMeter, StoreCounters, render_metrics
from pacs_gateway.priors import PriorsSource
from pacs_gateway.priors_http import HttpPriorsFactory
from pacs_gateway.process import GatewayProcess, GatewaySpec
from pacs_gateway.qr import AuditLog, QrSettings
from pacs_gateway.scp import ScpSettings, TlsSettings
from pacs_gateway.spool import Spool
from pacs_gateway.uploader import OnIdle, Uploader, UploaderSettings

logger = logging.getLogger(__name__)

UPLOADER_STOP_S = 3.0
"""How long a stop waits for the uploader's workers, all together."""


class ClosableSink(IngestSink, Protocol):
    def close(self) -> None: ...


@dataclass(frozen=True, slots=True)
class QrSources:
    """Where the gateway's C-FIND/C-GET/C-MOVE read (picklable factories, opened in the SCP
    processes)."""

    settings: QrSettings
    priors_factory: Callable[[], PriorsSource] | None = None
    """The cloud's priors API (HttpPriorsFactory): what a gateway reads from."""
    index_factory: Callable[[], Index] | None = None
    store_factory: Callable[[], ObjectStore] | None = None
    """An index and store on this machine, read directly (when there is no priors factory)."""
    audit_factory: Callable[[], AuditLog] | None = None


@dataclass(slots=True)
class GatewayNode:
    """The opened hospital side; ``start`` (blocking) listens and uploads, ``stop`` ends both."""

    settings: StackSettings
    hospital: str
    spool: Spool
    uploader: Uploader
    sink: ClosableSink
    qr: QrSources | None = None
    processes: GatewayProcess | None = None
    dicom_port: int = 0
    store_counters: StoreCounters = field(default_factory=StoreCounters)
    rate_meter: RateMeter = field(default_factory=RateMeter)

    @classmethod
    def open(
        cls,
        settings: StackSettings,
        sink: ClosableSink,
        hospital: str,
        *,
        qr: QrSources | None = None,
        on_idle: OnIdle | None = None,
    ) -> GatewayNode:
        make_dirs(settings.data_dir)  # 0700
        spool = Spool(
            settings.spool_dir,
            high_water_bytes=settings.spool_high_water_mb * 1024**2,
            min_free_bytes=settings.spool_min_free_mb * 1024**2,
            fsync=settings.fsync,
            no_plaintext_after_upload=settings.encryption is not None,
        )
        uploader = Uploader(
            spool,
            sink,
            hospital,
            UploaderSettings(
                workers=settings.upload_workers,
                batch_size=settings.upload_batch,
                compression=settings.upload_compression,
                compress_processes=settings.upload_compress_processes,
                idle_poll_s=0.05,  # the SCP writes from another process: poll the spool
            ),
            on_idle=on_idle,
        )
        return cls(settings, hospital, spool, uploader, sink, qr)

    def start(self) -> int:
        """Start the uploader and the SCP processes (blocking); returns the DICOM port."""
        s = self.settings
        self.uploader.start()
        self.processes = GatewayProcess(
            GatewaySpec(
                scp=gateway_scp_settings(s),
                spool_dir=s.spool_dir,
                high_water_bytes=self.spool.high_water_bytes,
                min_free_bytes=self.spool.min_free_bytes,
                fsync=s.fsync,
                log_level=logging.getLogger().getEffectiveLevel(),
                # encrypted at rest: no journal, whose segments keep instances past upload
                journal_bytes=0 if s.encryption is not None else s.spool_journal_mb * 1024**2,
                qr=self.qr.settings if self.qr else None,
                index_factory=self.qr.index_factory if self.qr else None,
                store_factory=self.qr.store_factory if self.qr else None,
                audit_factory=self.qr.audit_factory if self.qr else None,
                priors_factory=self.qr.priors_factory if self.qr else None,
            ),
            self.spool.usage,
            self.store_counters,
            workers=s.dicom_workers,
        )
        self.dicom_port = self.processes.start()
        self.uploader.edge.wait_ready(60.0)
        return self.dicom_port

    def stop(self) -> None:
        """Stop the SCP processes and the uploader at once (a batch in flight is redone at the
        next start: a spool entry goes only once the cloud has committed it); close the sink."""
        processes, self.processes = self.processes, None
        workers = max(1, self.settings.upload_workers)
        threads = [
            threading.Thread(target=self.uploader.stop, args=(UPLOADER_STOP_S / workers,)),
        ]
        if processes is not None:
            threads.append(threading.Thread(target=processes.stop))
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        self.sink.close()

    def metrics_text(self) -> str:
        return render_metrics(self.spool, self.uploader, self.store_counters, self.rate_meter)


def cloud_sink_settings(
    s: StackSettings,
    cloud_url: str,
    *,
    ca_bundle: Path | None,
    pinned_certificate: Path | None = None,
) -> CloudSinkSettings:
    """How a gateway (``gateway run``, or ``serve``'s own) reaches the cloud at ``cloud_url``."""
    return CloudSinkSettings(
        cloud_url,
        ca_bundle=ca_bundle,
        connections=max(2, s.upload_workers),
        large_object_bytes=s.large_object_mb * 1024**2,
        large_chunk_bytes=s.large_chunk_mb * 1024**2,
        read_timeout_s=s.cloud_read_timeout_s,
        pinned_certificate=pinned_certificate,
    )


def cloud_qr_sources(
    s: StackSettings,
    credential: GatewayCredential,
    credential_file: Path,
    cloud: CloudSinkSettings,
    audit_factory: Callable[[], AuditLog] | None = None,
) -> QrSources:
    """Workstations' C-FIND/C-GET/C-MOVE answered through the cloud's priors API under this
    gateway's credential: the cloud applies the consent rule (own hospital, and other
    hospitals' studies the patient consented to) and audits each read."""
    return QrSources(
        QrSettings(
            ae_title=s.ae_title,
            hospitals=frozenset({credential.hospital}),
            move_destinations=s.move_destination_map(),
            hospital=credential.hospital,
        ),
        priors_factory=HttpPriorsFactory(credential_file, cloud),
        audit_factory=audit_factory,
    )


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


def _dicom_tls(s: StackSettings) -> TlsSettings | None:
    if not s.dicom_tls_cert_file:
        return None
    return TlsSettings(
        cert_file=Path(s.dicom_tls_cert_file),
        key_file=Path(s.dicom_tls_key_file),
        client_ca_file=Path(s.dicom_tls_ca_file) if s.dicom_tls_ca_file else None,
    )


def check_gateway_hospital(configured: str | None, credential: GatewayCredential) -> str:
    """The hospital the gateway delivers as: the credential's. ConfigError if the settings
    name another one (the cloud would store under the credential's anyway)."""
    if configured and configured != credential.hospital:
        raise ConfigError(
            f"this gateway is configured as hospital {configured!r} but its credential "
            f"{credential.credential_id} is for {credential.hospital!r}: refusing to start"
        )
    return credential.hospital


def metrics_response(text: str) -> web.Response:
    return web.Response(
        text=text, content_type="text/plain", charset="utf-8", headers={"Cache-Control": "no-store"}
    )


async def run_gateway_until_signal(
    settings: StackSettings, credential: GatewayCredential, *, metrics: bool
) -> int:
    """``cloudfilm gateway run``: the node delivering to ``settings.cloud_url`` (or the
    credential's) until SIGINT/SIGTERM; with ``metrics``, ``/metrics`` on the HTTP address."""
    cloud_url = settings.cloud_url or credential.file.cloud_url
    if not cloud_url:
        raise ConfigError("no cloud URL: give --cloud URL (the credential file names none)")
    ca_bundle = Path(settings.cloud_ca_file) if settings.cloud_ca_file else None
    cloud = cloud_sink_settings(settings, cloud_url, ca_bundle=ca_bundle)
    sink = HttpIngestSink(credential, cloud)
    qr = cloud_qr_sources(settings, credential, Path(settings.gateway_credential_file), cloud)
    node = GatewayNode.open(settings, sink, credential.hospital, qr=qr)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    runner: web.AppRunner | None = None
    try:
        port = await asyncio.to_thread(node.start)
        http = "-"
        if metrics:

            async def get_metrics(request: web.Request) -> web.Response:
                return metrics_response(await asyncio.to_thread(node.metrics_text))

            app = web.Application()
            app.router.add_get("/metrics", get_metrics)
            runner = web.AppRunner(app, access_log=None, shutdown_timeout=1.0)
            await runner.setup()
            sock = socket.create_server((settings.http_host, settings.http_port))
            await web.SockSite(runner, sock).start()
            http = f"http://{settings.http_host}:{sock.getsockname()[1]}"
        logger.info(
            "gateway %s up: DICOM %s@%s:%d delivering to %s as credential %s",
            credential.hospital,
            settings.ae_title,
            settings.dicom_host,
            port,
            cloud_url,
            credential.credential_id,
        )
        print(
            f"ready: gateway {credential.hospital} dicom {settings.ae_title}@"
            f"{settings.dicom_host}:{port} cloud {cloud_url} metrics {http}",
            flush=True,
        )
        await stop.wait()
    finally:
        parts = [asyncio.to_thread(node.stop)]
        if runner is not None:
            parts.append(runner.cleanup())
        await asyncio.gather(*parts)
    return 0

"""Settings of every ``cloudfilm`` process (serve, cloud, gateway run, demo and the admin
commands): one frozen dataclass, built once in the CLI.

Sources, later ones winning: defaults, a TOML file (``--config`` or ``DATA/cloudfilm.toml``),
environment variables ``CLOUDFILM_<FIELD>`` (upper case), then command-line flags.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import os
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from dicom_codecs.upload_compression import UploadCompression
from image_store.crypto import Algorithm
from image_store.errors import KeyConfigError
from image_store.keys import check_hospital
from pacs_gateway.access import AeRule, Rights, parse_ae_rules, parse_networks


class ConfigError(ValueError):
    """A setting with a bad value or an unknown name."""


@dataclass(frozen=True, slots=True)
class StackSettings:
    data_dir: Path = Path("cloudfilm-data")
    http_host: str = "127.0.0.1"
    http_port: int = 8080
    dicom_host: str = "127.0.0.1"
    dicom_port: int = 11112
    ae_title: str = "CLOUDFILM"
    hospital: str = "HOSP1"
    public_base_url: str = ""
    """The URL clients reach the API at; default http://HTTP_HOST:HTTP_PORT."""
    spool_high_water_mb: int = 20_480
    spool_min_free_mb: int = 512
    spool_journal_mb: int = 256
    """Write-ahead journal of each SCP process (one fdatasync per instance instead of two
    fsyncs; pacs_gateway/journal.py); 0 turns it off."""
    dicom_workers: int = 2
    """SCP processes sharing the DICOM port (parallel associations use several cores)."""
    upload_workers: int = 3
    """Uploader threads: each compresses a batch (in the edge worker processes) while the
    others send, so the uplink stays busy."""
    upload_batch: int = 32
    upload_compress_processes: int = 2
    """Processes that compress at the edge (started with the gateway, under SCHED_IDLE:
    pacs_gateway/edge_workers.py); 0 compresses in the uploader's threads."""
    upload_compression: UploadCompression = UploadCompression.HTJ2K
    """Lossless re-encoding of pixel data before upload, decoded again and compared
    bit-exact before it is sent: 'htj2k' (High-Throughput JPEG 2000), 'jpeg-ls' (about an
    eighth fewer bytes for about three times the CPU: for a slow uplink), 'rle' or 'none'
    (the bytes as received); colour frames are JPEG-LS under 'htj2k' too. Ratios and speeds:
    bench/codec_table.py, bench/region_ingest.py and the README."""
    fsync: bool = True
    share_ttl_hours: int = 720
    cors_origins: str = ""
    """Browser origins allowed to call DICOMweb (e.g. an OHIF viewer), comma-separated."""
    stow_max_part_mb: int = 512
    """Largest instance one STOW-RS part may carry (a bigger one fails alone)."""
    stow_max_request_mb: int = 2048
    """Largest STOW-RS request body (413 beyond it, nothing stored); parts are streamed to
    data_dir/tmp while a request lasts."""
    https_cert_file: str = ""
    """PEM certificate (chain) for the API; with https_key_file the API speaks HTTPS only."""
    https_key_file: str = ""
    dicom_tls_cert_file: str = ""
    """PEM certificate for DICOM TLS (PS3.15 B.1); with dicom_tls_key_file the SCP speaks TLS."""
    dicom_tls_key_file: str = ""
    dicom_tls_ca_file: str = ""
    """CA that modalities' client certificates must chain to (mutual TLS); empty: no client
    certificates asked for."""
    object_store: str = "filesystem"
    """'filesystem' (under data_dir/objects) or 's3'."""
    s3_bucket: str = ""
    s3_prefix: str = ""
    s3_endpoint_url: str = ""
    """Empty for AWS; e.g. http://127.0.0.1:8333 for SeaweedFS, http://host:9000 for MinIO.
    Credentials come from the usual boto3 sources (AWS_ACCESS_KEY_ID, ~/.aws, roles)."""
    s3_region: str = ""
    encryption: Algorithm | None = None
    """Encryption at rest of every object (envelope: a data key per object, wrapped by the
    hospital's key): 'none' (None), 'aes-256-gcm' or 'sm4-gcm' (GB/T 32907 SM4 in GCM mode)."""
    encryption_key_file: str = ""
    """JSON or TOML key file of hospital -> key ids and base64 keys (mode 0600); empty: keys
    from CLOUDFILM_KEK_<HOSPITAL> / CLOUDFILM_KEK environment variables."""
    index: str = "sqlite"
    """'sqlite' (data_dir/index.sqlite) or 'postgres' (postgres_dsn)."""
    postgres_dsn: str = ""
    """libpq connection string, e.g. 'host=db port=5432 dbname=cloudfilm user=cloudfilm'
    (password from PGPASSWORD or ~/.pgpass, never in the config file)."""
    mpi_issuers: str = "CN_RESIDENT_ID,CN_HEALTH_CARD"
    """Issuer of Patient ID values that name regional person identifiers (resident ID, health
    card): instances carrying one link their patient to the person (as a keyed hash)."""
    qr_hospitals: str = ""
    """Hospitals whose studies the gateway's C-FIND/C-GET/C-MOVE serve, comma-separated;
    empty: this hospital only."""
    move_destinations: str = ""
    """C-MOVE destinations, 'AE@HOST:PORT' comma-separated."""
    dicom_allowed_aes: str = ""
    """The calling-AE allow-list, comma-separated 'AE[:store|query|both][@HOST-or-CIDR[;...]]'
    (rights default to store). Empty: any AE may associate, with every right when the DICOM
    listener is loopback-only and store only otherwise (a warning is logged)."""
    dicom_allowed_networks: str = ""
    """Networks (CIDRs) peers may connect from, comma-separated; empty: any."""
    dicom_max_associations: int = 16
    """Established associations at once, per SCP process."""
    dicom_max_associations_per_host: int = 8
    """Open connections from one peer address, per SCP process."""
    dicom_acse_timeout_s: float = 10.0
    """Seconds a new connection has to send its A-ASSOCIATE-RQ."""
    dicom_idle_timeout_s: float = 60.0
    """Seconds an established association may stay silent before it is aborted."""
    cloud_url: str = ""
    """``gateway run``: the regional cloud's base URL (default: the credential file's)."""
    gateway_credential_file: str = ""
    """``gateway run``: the credential file the region issued (``cloudfilm gateway
    credential``); ``serve`` keeps its own in ``data_dir/gateway/credential.json``."""
    cloud_ca_file: str = ""
    """``gateway run``: PEM CA certificates the cloud's TLS certificate must chain to (a
    private CA); empty: the system's."""
    cloud_read_timeout_s: float = 120.0
    """Gateway: seconds to wait for the cloud's answer to a batch or a chunk before the upload
    is retried (the spool keeps the instances meanwhile)."""
    large_object_mb: int = 64
    """Gateway: instances from this size up go to the cloud through a resumable upload session
    (pacs_gateway/large_upload.py), in chunks of ``large_chunk_mb``; 0: always in batches."""
    large_chunk_mb: int = 8
    upload_session_max_mb: int = 4096
    """Cloud: the largest instance an upload session may declare (viewer_api/upload_sessions.py)."""

    def dicom_ae_rules(self) -> tuple[AeRule, ...]:
        return tuple(parse_ae_rules(self.dicom_allowed_aes).values())

    def dicom_network_list(self) -> tuple[str, ...]:
        items = tuple(n.strip() for n in self.dicom_allowed_networks.split(",") if n.strip())
        parse_networks(items, "dicom_allowed_networks")
        return items

    def dicom_open_rights(self) -> Rights:
        """What any calling AE may do while ``dicom_allowed_aes`` is empty: everything on a
        loopback-only listener (the demo, tests), C-STORE only on a reachable one (so nothing
        outside the allow-list can query or retrieve the hospital's studies)."""
        return Rights.BOTH if is_loopback(self.dicom_host) else Rights.STORE

    def qr_hospital_set(self) -> frozenset[str]:
        names = [h.strip() for h in self.qr_hospitals.split(",") if h.strip()]
        return frozenset(names or [self.hospital])

    def move_destination_map(self) -> dict[str, tuple[str, int]]:
        out: dict[str, tuple[str, int]] = {}
        for item in filter(None, (i.strip() for i in self.move_destinations.split(","))):
            ae, sep, addr = item.partition("@")
            if not sep or not 1 <= len(ae) <= 16:
                raise ConfigError(f"move destination must be AE@HOST:PORT, got {item!r}")
            out[ae] = parse_hostport(addr, "move destination")
        return out

    @property
    def objects_dir(self) -> Path:
        return self.data_dir / "objects"

    @property
    def index_path(self) -> Path:
        return self.data_dir / "index.sqlite"

    @property
    def spool_dir(self) -> Path:
        return self.data_dir / "spool"

    @property
    def shares_path(self) -> Path:
        return self.data_dir / "shares.sqlite"

    @property
    def registry_path(self) -> Path:
        return self.data_dir / "registry.sqlite"

    @property
    def reports_path(self) -> Path:
        return self.data_dir / "reports.sqlite"

    @property
    def consents_path(self) -> Path:
        return self.data_dir / "consents.sqlite"

    @property
    def audit_path(self) -> Path:
        return self.data_dir / "audit.sqlite"

    @property
    def audit_key_path(self) -> Path:
        """Signs the audit log's head (so a log cut short is detected)."""
        return self.data_dir / "secrets" / "audit.key"

    @property
    def revoked_tokens_path(self) -> Path:
        return self.data_dir / "secrets" / "revoked-tokens"

    @property
    def person_key_path(self) -> Path:
        """The master patient index's HMAC key: back it up; without it no identifier can be
        matched to the persons already linked."""
        return self.data_dir / "secrets" / "person.key"

    @property
    def secret_path(self) -> Path:
        return self.data_dir / "secrets" / "api.key"

    @property
    def gateways_path(self) -> Path:
        """The region's register of gateway credentials (public keys, token hashes)."""
        return self.data_dir / "gateways.sqlite"

    @property
    def embedded_credential_path(self) -> Path:
        """The credential ``serve``'s own gateway delivers with."""
        return self.data_dir / "gateway" / "credential.json"


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def parse_hostport(value: str, what: str) -> tuple[str, int]:
    """'HOST:PORT' -> (host, port); port 0 lets the OS choose."""
    host, sep, port = value.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise ConfigError(f"{what} must be HOST:PORT, got {value!r}")
    return host, int(port)


def _upload_compression(raw: Any) -> UploadCompression:
    try:
        return UploadCompression(str(raw))
    except ValueError:
        raise ConfigError(
            f"upload_compression must be jpeg-ls, htj2k, rle or none, got {str(raw)!r}"
        ) from None


def _encryption(raw: Any) -> Algorithm | None:
    if isinstance(raw, Algorithm):
        return raw
    if str(raw) == "none":
        return None
    try:
        return Algorithm.from_name(str(raw))
    except KeyConfigError:
        raise ConfigError(
            f"encryption must be none, aes-256-gcm or sm4-gcm, got {str(raw)!r}"
        ) from None


def _coerce(name: str, raw: Any, kind: Any) -> Any:
    if kind in (UploadCompression, "UploadCompression"):
        return _upload_compression(raw)
    if kind in ("Algorithm | None",):
        return _encryption(raw)
    try:
        if kind in (bool, "bool"):
            if isinstance(raw, bool):
                return raw
            text = str(raw).strip().lower()
            if text not in ("1", "0", "true", "false", "yes", "no", "on", "off"):
                raise ValueError(raw)
            return text in ("1", "true", "yes", "on")
        if kind in (int, "int"):
            return int(raw)
        if kind in (float, "float"):
            return float(raw)
        if kind in (Path, "Path"):
            return Path(raw)
        return str(raw)
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"setting {name} has a bad value {raw!r}") from exc


def load_settings(
    overrides: dict[str, Any], *, config_file: Path | None = None, env: dict[str, str] | None = None
) -> StackSettings:
    """Merge defaults, the TOML file, the environment and ``overrides`` (None values skipped)."""
    env = dict(os.environ) if env is None else env
    fields = {f.name: f.type for f in dataclasses.fields(StackSettings)}
    values: dict[str, Any] = {}
    data_dir = overrides.get("data_dir") or env.get("CLOUDFILM_DATA_DIR")
    if config_file is None and data_dir:
        candidate = Path(data_dir) / "cloudfilm.toml"
        config_file = candidate if candidate.is_file() else None
    if config_file is not None:
        try:
            with open(config_file, "rb") as fh:
                table = tomllib.load(fh)
        except (OSError, tomllib.TOMLDecodeError) as exc:
            raise ConfigError(f"cannot read config file {config_file}: {exc}") from exc
        for key, raw in table.items():
            if key not in fields:
                raise ConfigError(f"unknown setting {key!r} in {config_file}")
            values[key] = _coerce(key, raw, fields[key])
    for name, kind in fields.items():
        raw_env = env.get(f"CLOUDFILM_{name.upper()}")
        if raw_env is not None:
            values[name] = _coerce(name, raw_env, kind)
    for name, raw in overrides.items():
        if raw is None:
            continue
        if name not in fields:
            raise ConfigError(f"unknown setting {name!r}")
        values[name] = _coerce(name, raw, fields[name])
    settings = StackSettings(**values)
    try:
        check_hospital(settings.hospital)
    except ValueError as exc:
        raise ConfigError(str(exc)) from exc
    for h in settings.qr_hospital_set():
        try:
            check_hospital(h)
        except ValueError as exc:
            raise ConfigError(f"qr_hospitals: {exc}") from exc
    settings.move_destination_map()
    try:
        settings.dicom_ae_rules()
        settings.dicom_network_list()
    except ValueError as exc:
        raise ConfigError(str(exc)) from exc
    if min(settings.dicom_max_associations, settings.dicom_max_associations_per_host) < 1:
        raise ConfigError("dicom_max_associations(_per_host) must be 1 or more")
    if min(settings.dicom_acse_timeout_s, settings.dicom_idle_timeout_s) <= 0:
        raise ConfigError("dicom_acse_timeout_s and dicom_idle_timeout_s must be positive")
    if settings.index not in ("sqlite", "postgres"):
        raise ConfigError(f"index must be sqlite or postgres, got {settings.index!r}")
    if settings.index == "postgres" and not settings.postgres_dsn:
        raise ConfigError("index = postgres needs postgres_dsn")
    for cert, key, what in (
        (settings.https_cert_file, settings.https_key_file, "https"),
        (settings.dicom_tls_cert_file, settings.dicom_tls_key_file, "dicom_tls"),
    ):
        if bool(cert) != bool(key):
            raise ConfigError(f"{what}_cert_file and {what}_key_file go together")
        for path in filter(None, (cert, key)):
            if not Path(path).is_file():
                raise ConfigError(f"{what}: no such file {path}")
    if settings.cloud_ca_file and not Path(settings.cloud_ca_file).is_file():
        raise ConfigError(f"cloud_ca_file: no such file {settings.cloud_ca_file}")
    if settings.cloud_url and not settings.cloud_url.startswith(("http://", "https://")):
        raise ConfigError(f"cloud_url must be an http(s) URL, got {settings.cloud_url!r}")
    if settings.dicom_tls_ca_file and not settings.dicom_tls_cert_file:
        raise ConfigError("dicom_tls_ca_file needs dicom_tls_cert_file and dicom_tls_key_file")
    if settings.object_store not in ("filesystem", "s3"):
        raise ConfigError(f"object_store must be filesystem or s3, got {settings.object_store!r}")
    if settings.encryption_key_file and not Path(settings.encryption_key_file).is_file():
        raise ConfigError(f"encryption_key_file: no such file {settings.encryption_key_file}")
    if settings.object_store == "s3" and not settings.s3_bucket:
        raise ConfigError("object_store = s3 needs s3_bucket")
    if settings.upload_compress_processes < 0:
        raise ConfigError(
            f"upload_compress_processes must be 0 or more, got {settings.upload_compress_processes}"
        )
    if settings.spool_journal_mb < 0:
        raise ConfigError(f"spool_journal_mb must be 0 or more, got {settings.spool_journal_mb}")
    if not 1 <= len(settings.ae_title) <= 16:
        raise ConfigError(f"AE title must be 1-16 characters, got {settings.ae_title!r}")
    return settings

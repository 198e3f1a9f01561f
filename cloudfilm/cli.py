"""The one ``cloudfilm`` command.

Running: ``serve`` (the embedded stack: gateway, store, index and API in one process),
``cloud`` (the regional cloud alone: API, DICOMweb, ingest), ``gateway run`` (a hospital
gateway delivering to a regional cloud), ``demo`` (the stack plus a synthetic CT and its links).
Administering a region: ``init``, ``hospitals`` (add, list), ``users`` (add, disable, enable,
list), ``token``, ``keys`` (rotate, retire, revoke-token), ``audit`` (verify, export),
``store scrub``, ``gateway credential`` (issue or revoke a gateway's credential) and
``gateway backfill`` (copy an Orthanc PACS into the region). Test data: ``synth``.

The process runs with umask 077: everything it writes under the data directory is readable by
its own user only. Commands that read or change a region (token, keys, users, hospitals, audit,
store, gateway credential) refuse a directory that is not one (exit 2); ``init``, ``serve``,
``cloud`` and ``demo`` make one.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import logging
import os
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from cloudfilm.config import ConfigError, StackSettings, load_settings, parse_hostport
from viewer_api.auth import ROLES

logger = logging.getLogger("cloudfilm")


DEFAULT_HOSPITAL = StackSettings().hospital


class NoRegion(ConfigError):
    """A command that reads a region was pointed at a directory that holds none."""


def _region(data: str, config: Path | None = None, **overrides: Any) -> StackSettings:
    """The settings of the region in ``data``; NoRegion unless ``init``/``serve`` made it
    (its signing key exists). Nothing is created here."""
    settings = load_settings({"data_dir": data, **overrides}, config_file=config)
    if not settings.data_dir.is_dir() or not settings.secret_path.is_file():
        raise NoRegion(
            f"no CloudFilm region in {settings.data_dir} (create one with "
            f"`cloudfilm init --data {settings.data_dir}` or `cloudfilm serve`)"
        )
    return settings


def init_region(settings: StackSettings) -> None:
    """Create the data directory (mode 0700), its keys (0600) and the regional state's tables
    (in the index's database)."""
    from cloudfilm.stores import open_state
    from viewer_api.auth import load_or_create_secret

    settings.data_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    for key in (settings.secret_path, settings.audit_key_path, settings.person_key_path):
        load_or_create_secret(key)
    open_state(settings, audit_key=None).close()


def _add_stack_flags(p: argparse.ArgumentParser, *, data_default: str | None = None) -> None:
    p.add_argument("--data", default=data_default, help="data directory (store, index, spool)")
    p.add_argument("--http", metavar="HOST:PORT", help="HTTP API address (default 127.0.0.1:8080)")
    p.add_argument(
        "--dicom", metavar="HOST:PORT", help="DICOM SCP address (default 127.0.0.1:11112)"
    )
    p.add_argument("--ae", help="the gateway's AE title (default CLOUDFILM)")
    p.add_argument("--hospital", help="hospital id of this gateway (default HOSP1)")
    p.add_argument("--config", type=Path, help="TOML file of settings (see README)")


def _settings(args: argparse.Namespace) -> StackSettings:
    overrides: dict[str, Any] = {"data_dir": args.data, "ae_title": args.ae}
    overrides["hospital"] = getattr(args, "hospital", None)
    if args.http:
        overrides["http_host"], overrides["http_port"] = parse_hostport(args.http, "--http")
    if args.dicom:
        overrides["dicom_host"], overrides["dicom_port"] = parse_hostport(args.dicom, "--dicom")
    return load_settings(overrides, config_file=args.config)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="cloudfilm",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("synth", help="write a synthetic study (DICOM Part 10 files)")
    p.add_argument("out", type=Path)
    p.add_argument("--modality", choices=("CT", "MR", "DX", "US"), default="CT")
    p.add_argument("--images", type=int, default=50)
    p.add_argument("--frames", type=int, default=None, help="frames per image (US default 10)")
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--patient-id", default=None)
    p.add_argument("--calibration", action="store_true", help="CT: add a 50 mm +100 HU disc")

    p = sub.add_parser("serve", help="run the embedded stack (gateway + store + index + API)")
    _add_stack_flags(p)

    p = sub.add_parser("cloud", help="run the regional cloud alone (API, DICOMweb, ingest)")
    p.add_argument("--data", required=True, help="data directory of the region")
    p.add_argument("--http", metavar="HOST:PORT", help="HTTP API address (default 127.0.0.1:8080)")
    p.add_argument("--config", type=Path, help="TOML file of settings (see README)")

    p = sub.add_parser("init", help="create a region's data directory, keys and registry")
    p.add_argument("--data", required=True, help="data directory of the stack")

    p = sub.add_parser("token", help="print a bearer token for a registered, enabled user")
    p.add_argument("--data", required=True, help="data directory of the stack")
    p.add_argument("--hospital", required=True, help="the user's registered hospital")
    p.add_argument("--role", choices=ROLES, required=True, help="the user's registered role")
    p.add_argument(
        "--subject",
        required=True,
        help="the registered user the token is for (cloudfilm users add; shown in the audit)",
    )
    p.add_argument("--ttl-hours", type=int, default=24)
    p.add_argument("--config", type=Path)

    p = sub.add_parser("hospitals", help="the region's hospitals")
    hsub = p.add_subparsers(dest="hospitals_command", required=True)
    h = hsub.add_parser("add", help="add (or rename) a hospital")
    h.add_argument("id")
    h.add_argument("--name", required=True)
    h.add_argument("--data", required=True, help="data directory of the stack")
    h = hsub.add_parser("list", help="list the hospitals")
    h.add_argument("--data", required=True, help="data directory of the stack")

    p = sub.add_parser("users", help="staff who may hold tokens")
    usub = p.add_subparsers(dest="users_command", required=True)
    u = usub.add_parser("add", help="register a user at a hospital with a role")
    u.add_argument("subject")
    u.add_argument("--hospital", required=True)
    u.add_argument("--role", choices=ROLES, required=True)
    u.add_argument("--data", required=True, help="data directory of the stack")
    for action in ("disable", "enable"):
        u = usub.add_parser(action, help=f"{action} a user (a disabled user's tokens stop working)")
        u.add_argument("subject")
        u.add_argument("--data", required=True, help="data directory of the stack")
    u = usub.add_parser("list", help="list the users")
    u.add_argument("--data", required=True, help="data directory of the stack")

    p = sub.add_parser("keys", help="signing keys and bearer tokens")
    ksub = p.add_subparsers(dest="keys_command", required=True)
    k = ksub.add_parser("rotate", help="new signing key; the old one still verifies until retired")
    k.add_argument("--data", required=True, help="data directory of the stack")
    k = ksub.add_parser("retire", help="delete retired keys: what they signed stops working")
    k.add_argument("--data", required=True, help="data directory of the stack")
    k.add_argument("--older-than-days", type=float, required=True)
    k = ksub.add_parser("revoke-token", help="refuse a bearer token before it expires")
    k.add_argument("--data", required=True, help="data directory of the stack")
    k.add_argument("--token", required=True)

    p = sub.add_parser("audit", help="the access audit log")
    asub = p.add_subparsers(dest="audit_command", required=True)
    for name, text in (("verify", "check the hash chain"), ("export", "print as JSON lines")):
        a = asub.add_parser(name, help=text)
        a.add_argument("--data", required=True, help="data directory of the stack")

    p = sub.add_parser("store", help="the regional object store")
    ssub = p.add_subparsers(dest="store_command", required=True)
    sc = ssub.add_parser("scrub", help="re-read every object and verify its sha256")
    sc.add_argument("--data", required=True, help="data directory of the stack")
    sc.add_argument("--hospital", action="append", help="only this hospital (repeatable)")
    sc.add_argument("--config", type=Path)

    p = sub.add_parser("gateway", help="gateway tasks")
    gsub = p.add_subparsers(dest="gateway_command", required=True)
    b = gsub.add_parser("backfill", help="copy an existing Orthanc PACS into the cloud (resumable)")
    b.add_argument(
        "--orthanc",
        required=True,
        metavar="URL",
        help="Orthanc REST root, e.g. http://127.0.0.1:8042",
    )
    b.add_argument("--data", required=True, help="data directory of the stack")
    b.add_argument("--hospital", help="hospital the instances belong to (default: the stack's)")
    b.add_argument("--user", help="Orthanc user (password from CLOUDFILM_ORTHANC_PASSWORD)")
    b.add_argument("--batch", type=int, default=32)
    b.add_argument("--config", type=Path)
    r = gsub.add_parser("run", help="a hospital gateway delivering to a regional cloud")
    r.add_argument("--data", required=True, help="the gateway's data directory (its spool)")
    r.add_argument(
        "--dicom", metavar="HOST:PORT", help="DICOM SCP address (default 127.0.0.1:11112)"
    )
    r.add_argument("--ae", help="the gateway's AE title (default CLOUDFILM)")
    r.add_argument(
        "--cloud", metavar="URL", help="the cloud's base URL (default: the credential's)"
    )
    r.add_argument("--credential", type=Path, help="credential file (cloudfilm gateway credential)")
    r.add_argument("--cloud-ca", type=Path, help="PEM CA bundle the cloud's certificate chains to")
    r.add_argument("--hospital", help="must match the credential's hospital if given")
    r.add_argument("--http", metavar="HOST:PORT", help="serve /metrics here (default: none)")
    r.add_argument("--config", type=Path, help="TOML file of settings (see README)")
    c = gsub.add_parser("credential", help="issue or revoke a gateway's credential (region side)")
    c.add_argument("--data", required=True, help="data directory of the region")
    c.add_argument("--hospital", help="the registered hospital the gateway delivers for")
    c.add_argument("--out", type=Path, help="where to write the credential file (mode 0600)")
    c.add_argument("--cloud-url", default="", help="the cloud's URL, recorded in the file")
    c.add_argument("--revoke", metavar="ID", help="revoke this credential instead (at once)")

    p = sub.add_parser("demo", help="start the stack, send a synthetic CT, print the links")
    _add_stack_flags(p, data_default="cloudfilm-data")
    p.add_argument("--images", type=int, default=60, help="CT slices to synthesise and send")
    p.add_argument("--once", action="store_true", help="exit after printing the links")
    return parser


def cmd_synth(args: argparse.Namespace) -> int:
    from cloudfilm.synth import synthesize_study

    t0 = time.perf_counter()
    paths = synthesize_study(
        args.out,
        modality=args.modality,
        images=args.images,
        seed=args.seed,
        frames=args.frames,
        patient_id=args.patient_id,
        calibration=args.calibration,
    )
    size = sum(p.stat().st_size for p in paths)
    print(
        f"wrote {len(paths)} files, {size / 1e6:.1f} MB, to {args.out} "
        f"in {time.perf_counter() - t0:.1f} s"
    )
    return 0


def cmd_serve(args: argparse.Namespace) -> int:
    from cloudfilm.stack import serve_until_signal

    return asyncio.run(serve_until_signal(_settings(args)))


def cmd_init(args: argparse.Namespace) -> int:
    settings = load_settings({"data_dir": args.data})
    init_region(settings)
    print(f"region ready in {settings.data_dir}: add hospitals and users, then issue tokens")
    return 0


def cmd_token(args: argparse.Namespace) -> int:
    from cloudfilm.stores import open_state
    from viewer_api.auth import TokenSigner
    from viewer_api.registry import token_problem

    settings = _region(args.data, args.config, hospital=args.hospital)
    if not 1 <= args.ttl_hours <= 24 * 366:
        raise ConfigError(f"--ttl-hours must be 1..8784, got {args.ttl_hours}")
    subject = args.subject.strip()
    state = open_state(settings, audit_key=None)
    try:
        user = state.registry.user(subject) if subject else None
    finally:
        state.close()
    problem = token_problem(user, subject, settings.hospital, args.role)
    if problem is not None:
        hint = (
            f" (register it: cloudfilm users add {subject} --hospital {settings.hospital} "
            f"--role {args.role} --data {settings.data_dir})"
            if subject and user is None
            else ""
        )
        raise ConfigError(f"no token issued: {problem}{hint}")
    signer = TokenSigner.from_files(settings.secret_path)  # signs with the current key
    print(signer.issue(settings.hospital, args.role, subject=subject, ttl_s=args.ttl_hours * 3600))
    return 0


def cmd_registry(args: argparse.Namespace) -> int:
    from cloudfilm.stores import open_state
    from viewer_api.registry import RegistryError

    settings = _region(args.data)
    state = open_state(settings, audit_key=None)
    registry = state.registry
    try:
        if args.command == "hospitals":
            if args.hospitals_command == "add":
                h = registry.add_hospital(args.id, args.name)
                print(f"hospital {h.id}: {h.name}")
            for h in registry.hospitals() if args.hospitals_command == "list" else ():
                print(f"{h.id}\t{h.name}")
            return 0
        if args.users_command == "add":
            u = registry.add_user(args.subject, args.hospital, args.role)
            print(f"user {u.subject}: {u.role} at {u.hospital}")
        elif args.users_command in ("disable", "enable"):
            if not registry.set_enabled(args.subject, args.users_command == "enable"):
                print(f"cloudfilm users: no user {args.subject}", file=sys.stderr)
                return 2
            print(f"user {args.subject} {args.users_command}d")
        else:
            for u in registry.users():
                print(f"{u.subject}\t{u.hospital}\t{u.role}\t{'on' if u.enabled else 'off'}")
        return 0
    except RegistryError as exc:
        print(f"cloudfilm {args.command}: {exc}", file=sys.stderr)
        return 2
    finally:
        state.close()


def cmd_keys(args: argparse.Namespace) -> int:
    from cloudfilm.stores import open_state
    from viewer_api.auth import TokenSigner, retire_keys, rotate_key
    from viewer_api.errors import Unauthorized

    settings = _region(args.data)
    if args.keys_command == "rotate":
        old = rotate_key(settings.secret_path)
        print(f"new signing key in {settings.secret_path}, used by running APIs at once;")
        print(f"the old one ({old.name}) verifies until retired")
        return 0
    if args.keys_command == "retire":
        if args.older_than_days < 0:
            raise ConfigError("--older-than-days must not be negative")
        gone = retire_keys(settings.secret_path, args.older_than_days * 86400)
        print(f"{gone} retired key(s) deleted: running APIs refuse what they signed at once")
        return 0
    signer = TokenSigner.from_files(settings.secret_path)
    try:
        jti, exp = signer.token_id(args.token.strip())
    except Unauthorized as exc:
        print(f"cloudfilm keys revoke-token: not a token of this region: {exc}", file=sys.stderr)
        return 2
    state = open_state(settings, audit_key=None)
    try:
        state.revocations.revoke(jti, exp)
    finally:
        state.close()
    print(f"token {jti} revoked")
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    from cloudfilm.demo import DemoFailed, run_demo

    if args.images < 1:
        raise ConfigError(f"--images must be at least 1, got {args.images}")
    try:
        return asyncio.run(run_demo(_settings(args), images=args.images, once=args.once))
    except DemoFailed as exc:
        print(f"cloudfilm demo: failed: {exc}", file=sys.stderr)
        return 1


def cmd_cloud(args: argparse.Namespace) -> int:
    from cloudfilm.stack import serve_until_signal

    overrides: dict[str, Any] = {"data_dir": args.data}
    if args.http:
        overrides["http_host"], overrides["http_port"] = parse_hostport(args.http, "--http")
    settings = load_settings(overrides, config_file=args.config)
    return asyncio.run(serve_until_signal(settings, embedded_gateway=False))


def cmd_gateway_run(args: argparse.Namespace) -> int:
    from cloudfilm.gateway import check_gateway_hospital, run_gateway_until_signal
    from pacs_gateway.credential import load_credential

    overrides: dict[str, Any] = {"data_dir": args.data, "ae_title": args.ae}
    if args.dicom:
        overrides["dicom_host"], overrides["dicom_port"] = parse_hostport(args.dicom, "--dicom")
    if args.http:
        overrides["http_host"], overrides["http_port"] = parse_hostport(args.http, "--http")
    overrides["cloud_url"] = args.cloud
    overrides["gateway_credential_file"] = str(args.credential) if args.credential else None
    overrides["cloud_ca_file"] = str(args.cloud_ca) if args.cloud_ca else None
    settings = load_settings(overrides, config_file=args.config)
    if not settings.gateway_credential_file:
        raise ConfigError("a gateway needs --credential FILE (cloudfilm gateway credential)")
    credential = load_credential(Path(settings.gateway_credential_file))
    # a hospital named by the flag, the environment or the config file must be the credential's
    configured = args.hospital or (
        settings.hospital if settings.hospital != DEFAULT_HOSPITAL else None
    )
    hospital = check_gateway_hospital(configured, credential)
    settings = dataclasses.replace(settings, hospital=hospital)
    return asyncio.run(run_gateway_until_signal(settings, credential, metrics=bool(args.http)))


def cmd_gateway_credential(args: argparse.Namespace) -> int:

    from cloudfilm.stores import open_state
    from viewer_api.gateway_auth import issue_credential, revoke_credential
    from viewer_api.registry import RegistryError

    settings = _region(args.data)
    if args.revoke and (args.hospital or args.out):
        raise ConfigError("--revoke takes no --hospital or --out")
    if not args.revoke and (not args.hospital or not args.out):
        raise ConfigError("give --hospital H --out FILE (or --revoke ID)")
    state = open_state(settings, audit_key=None)  # the region's registry and credentials
    try:
        if args.revoke:
            if not revoke_credential(state.gateway_credentials, args.revoke):
                print(
                    f"cloudfilm gateway credential: no live credential {args.revoke}",
                    file=sys.stderr,
                )
                return 1
            print(f"credential {args.revoke} revoked: its tokens are refused at once")
            return 0
        try:
            cred_id = issue_credential(
                state.gateway_credentials,
                state.registry,
                args.hospital,
                args.out,
                cloud_url=args.cloud_url,
            )
        except RegistryError as exc:
            print(f"cloudfilm gateway credential: {exc}", file=sys.stderr)
            return 2
    finally:
        state.close()
    print(cred_id)
    return 0


def cmd_gateway(args: argparse.Namespace) -> int:
    import os
    import urllib.parse

    if args.gateway_command == "run":
        return cmd_gateway_run(args)
    if args.gateway_command == "credential":
        return cmd_gateway_credential(args)

    import orthanc_rest_client
    import requests

    from cloudfilm.stores import open_index, open_object_store
    from image_store.ingest import LocalIngest
    from pacs_gateway.backfill import Checkpoint, ProgressBar, backfill

    settings = load_settings(
        {"data_dir": args.data, "hospital": args.hospital}, config_file=args.config
    )
    url = urllib.parse.urlsplit(args.orthanc)
    if url.scheme not in ("http", "https") or not url.hostname:
        raise ConfigError(f"--orthanc must be an http(s) URL, got {args.orthanc!r}")
    if not 1 <= args.batch <= 1000:
        raise ConfigError(f"--batch must be 1..1000, got {args.batch}")
    auth = None
    if args.user:
        auth = requests.auth.HTTPBasicAuth(
            args.user, os.environ.get("CLOUDFILM_ORTHANC_PASSWORD", "")
        )
    client = orthanc_rest_client.Orthanc(args.orthanc.rstrip("/"), auth=auth, warn_insecure=False)
    index = open_index(settings)
    try:
        sink = LocalIngest(open_object_store(settings), index)
        name = f"{url.hostname}_{url.port or 0}".replace(":", "_")
        checkpoint = Checkpoint(settings.data_dir / "backfill" / f"{name}.done")
        report = backfill(
            client,
            sink,
            settings.hospital,
            checkpoint,
            batch_size=args.batch,
            progress=ProgressBar(sys.stderr),
        )
    except requests.RequestException as exc:
        print(f"cloudfilm gateway backfill: cannot read Orthanc: {exc}", file=sys.stderr)
        return 1
    finally:
        index.close()
    print(
        f"backfill: {report.total} instances in Orthanc, {report.copied} copied, "
        f"{report.already_done} already done, {len(report.refused)} refused"
    )
    for orthanc_id, reason in report.refused[:20]:
        print(f"  refused {orthanc_id}: {reason}")
    return 0 if not report.refused else 3


def cmd_audit(args: argparse.Namespace) -> int:
    import dataclasses
    import json

    from cloudfilm.stores import open_state

    settings = _region(args.data)
    try:
        head_key: bytes | None = settings.audit_key_path.read_bytes()  # never created here
    except FileNotFoundError:
        head_key = None
    regional = open_state(settings, audit_key=head_key)
    log = regional.audit
    try:
        if args.audit_command == "export":
            for event in log.iter_events():
                print(json.dumps(dataclasses.asdict(event), ensure_ascii=False))
            return 0
        verdict = log.check()
    finally:
        regional.close()
    if verdict.ok:
        print(f"audit log intact: {verdict.records} records, sealed by the signed head")
        return 0
    state = f"broken at record {verdict.bad_seq}" if verdict.bad_seq else "not verified"
    print(f"audit log {state}: {verdict.reason}", file=sys.stderr)
    if head_key is None:
        print(f"(the audit key {settings.audit_key_path} is missing)", file=sys.stderr)
    return 1


def cmd_store(args: argparse.Namespace) -> int:
    from cloudfilm.stores import open_index, open_object_store
    from image_store.scrub import scrub
    from pacs_gateway.backfill import ProgressBar

    settings = _region(args.data, args.config)
    index = open_index(settings)
    try:
        report = scrub(
            index,
            open_object_store(settings),
            hospitals=frozenset(args.hospital) if args.hospital else None,
            progress=ProgressBar(sys.stderr, "scrub"),
        )
    finally:
        index.close()
    print(
        f"scrub: {report.checked} objects, {report.bytes / 1e6:.1f} MB checked; "
        f"{len(report.missing)} missing, {len(report.corrupt)} corrupt, "
        f"{len(report.unreadable)} unreadable"
    )
    for key in report.missing[:50]:
        print(f"  missing  {key}")
    for key in report.corrupt[:50]:
        print(f"  corrupt  {key}")
    for key, reason in report.unreadable[:50]:
        print(f"  unreadable {key}: {reason}")
    return 0 if report.ok else 1


COMMANDS = {
    "synth": cmd_synth,
    "init": cmd_init,
    "serve": cmd_serve,
    "cloud": cmd_cloud,
    "token": cmd_token,
    "keys": cmd_keys,
    "hospitals": cmd_registry,
    "users": cmd_registry,
    "demo": cmd_demo,
    "gateway": cmd_gateway,
    "audit": cmd_audit,
    "store": cmd_store,
}


def main(argv: Sequence[str] | None = None) -> int:
    previous_umask = os.umask(0o077)  # data, keys, spool and logs: this user's only
    try:
        return _run(build_parser().parse_args(argv))
    finally:
        os.umask(previous_umask)  # matters only when called in-process (tests)


def _run(args: argparse.Namespace) -> int:
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    if not args.verbose:
        logging.getLogger("pynetdicom").setLevel(logging.WARNING)
        logging.getLogger("apiron").setLevel(logging.WARNING)  # orthanc-rest-client, per request
    try:
        return COMMANDS[args.command](args)
    except (ConfigError, ValueError, OSError) as exc:
        print(f"cloudfilm {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())

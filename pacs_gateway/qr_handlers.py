"""The Query/Retrieve SCP's pynetdicom event handlers: C-FIND, C-GET and C-MOVE answered
from a PriorsSource, every one audited. Errors become DIMSE statuses here, at the edge.

Every C-FIND, C-GET and C-MOVE is appended to the audit log (calling AE, peer host, level, the
names of the keys and the study UIDs, never patient names or IDs; how many matched and the
status); a retrieve writes one record per study, so it shows in the patient's access history.
"""

from __future__ import annotations

import functools
import logging
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from pydicom.dataset import Dataset
from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian
from pynetdicom.presentation import build_context

from dicom_codecs.errors import CodecError
from image_store.audit import AuditEvent
from image_store.consents import SqlConsents
from image_store.errors import ImageStoreError
from image_store.metadata import text_value
from image_store.ports import Index, ObjectStore
from image_store.priors import ConsentLookup
from image_store.records import InstanceSummary
from pacs_gateway.priors import LocalPriorsSource, PriorsSource
from pacs_gateway.qr_identifiers import BadIdentifier, audited_keys
from pacs_gateway.qr_match import find_matches, retrieve_matches
from pacs_gateway.qr_syntax import Accepted, accepted_contexts, load, send_syntax

logger = logging.getLogger(__name__)

_ANY_DESTINATION = [
    build_context(uid, [ExplicitVRLittleEndian, ImplicitVRLittleEndian])
    for uid in (
        "1.2.840.10008.1.1",  # Verification
        "1.2.840.10008.5.1.4.1.1.2",  # CT Image Storage
        "1.2.840.10008.5.1.4.1.1.4",  # MR Image Storage
        "1.2.840.10008.5.1.4.1.1.7",  # Secondary Capture Image Storage
    )
]
STATUS_PENDING = 0xFF00
STATUS_SUCCESS = 0x0000
STATUS_CANCEL = 0xFE00
STATUS_IDENTIFIER_MISMATCH = 0xA900
STATUS_FIND_FAILED = 0xC300
STATUS_MOVE_UNKNOWN_DESTINATION = 0xA801
STATUS_RETRIEVE_FAILED = 0xC400


class AuditLog(Protocol):
    def append(self, event: AuditEvent) -> None: ...


@dataclass(frozen=True, slots=True)
class QrSettings:
    ae_title: str
    hospitals: frozenset[str]
    """Hospitals whose studies workstations behind this gateway may find and retrieve without
    consent, when Q/R reads a local index (LocalPriorsSource); over HTTP the cloud decides."""
    move_destinations: dict[str, tuple[str, int]] = field(default_factory=dict)
    """C-MOVE destination AE title -> (host, port)."""
    hospital: str = ""
    """This gateway's hospital: other hospitals' studies are served when the patient has given
    it consent (a grant to the hospital as a whole, not to one clinician)."""
    consents_path: Path | None = None
    """The consents database a local source reads grants from (None: no consented priors)."""


@functools.lru_cache(maxsize=4)
def _consent_store(path: Path) -> SqlConsents:
    return SqlConsents(path)


def local_source(
    index: Index,
    store: ObjectStore,
    settings: QrSettings,
    consents: ConsentLookup | None = None,
) -> PriorsSource:
    """A source over an index and store on this machine, with the settings' hospitals and
    ``consents`` (by default the database at ``settings.consents_path``, if any)."""
    if consents is None and settings.consents_path is not None:
        consents = _consent_store(settings.consents_path)
    return LocalPriorsSource(
        index, store, settings.hospital, readable=settings.hospitals, consents=consents
    )


def _failure(status: int, comment: str) -> Dataset:
    """A failure status with its Error Comment (0000,0902: at most 64 characters)."""
    out = Dataset()
    out.Status = status
    out.ErrorComment = comment[:64]
    return out


@dataclass(slots=True)
class _Audit:
    """One Q/R operation's audit record, appended once its outcome is known."""

    log: AuditLog | None
    event: Any
    settings: QrSettings
    action: str
    level: str = ""
    keys: str = ""
    matched: int = 0
    studies: tuple[str, ...] = ()
    via: str = ""
    done: bool = False

    @classmethod
    def begin(cls, log: AuditLog | None, event: Any, settings: QrSettings, action: str) -> _Audit:
        audit = cls(log, event, settings, action)
        try:
            ds = event.identifier
            audit.keys = audited_keys(ds)
            audit.level = text_value(ds, "QueryRetrieveLevel").upper()[:8]
        except Exception:  # an identifier pydicom cannot decode: still audited
            audit.keys = "keys=?"
        return audit

    def finish(self, status: int) -> None:
        if self.done:
            return
        self.done = True
        if self.log is None:
            return
        assoc = self.event.assoc
        resource = f"/dicom/{self.action}?level={self.level}&{self.keys}&matched={self.matched}"
        events = [resource]
        if self.studies:  # one record per study read: the patient's access history lists them
            events = [
                f"/dicom/{self.action}/studies/{uid}?level={self.level}&matched={self.matched}"
                for uid in self.studies
            ]
        try:
            for resource in events:
                self.log.append(
                    AuditEvent(
                        ts=time.time(),
                        actor=str(assoc.requestor.ae_title).strip(),
                        hospital=self.settings.hospital,
                        role="dicom",
                        action=self.action,
                        resource=resource,
                        status=status,
                        remote=str(assoc.requestor.address),
                        via=self.via,
                    )
                )
        except Exception:
            logger.exception("cannot append the %s to the audit log", self.action)


def _audited(audit: _Audit, responses: Iterator[Any]) -> Iterator[Any]:
    """``responses``, with the audit record appended even when the association ends before
    the last of them (as cancelled)."""
    try:
        yield from responses
    finally:
        audit.finish(STATUS_CANCEL)  # a no-op once the handler recorded its outcome


def handle_find(
    event: Any, source: PriorsSource, settings: QrSettings, audit_log: AuditLog | None = None
) -> Iterator[tuple[int | Dataset, Dataset | None]]:
    audit = _Audit.begin(audit_log, event, settings, "C-FIND")
    return _audited(audit, _find(event, source, settings, audit))


def _find(
    event: Any, source: PriorsSource, settings: QrSettings, audit: _Audit
) -> Iterator[tuple[int | Dataset, Dataset | None]]:
    try:
        matches = list(find_matches(event.identifier, source, settings.ae_title))
    except BadIdentifier as exc:
        logger.warning("C-FIND refused: %s", exc)
        audit.finish(STATUS_IDENTIFIER_MISMATCH)
        yield _failure(STATUS_IDENTIFIER_MISMATCH, str(exc)), None
        return
    except Exception:
        logger.exception("C-FIND failed")
        audit.finish(STATUS_FIND_FAILED)
        yield STATUS_FIND_FAILED, None
        return
    audit.matched = len(matches)
    for match in matches:
        if event.is_cancelled:
            audit.finish(STATUS_CANCEL)
            yield STATUS_CANCEL, None
            return
        yield STATUS_PENDING, match
    audit.finish(STATUS_SUCCESS)


def _sub_operations(
    event: Any,
    source: PriorsSource,
    matches: list[InstanceSummary],
    accepted: Accepted | None,
    audit: _Audit,
) -> Iterator[tuple[int, Dataset | None]]:
    for inst in matches:
        if event.is_cancelled:
            audit.finish(STATUS_CANCEL)
            yield STATUS_CANCEL, None
            return
        try:
            ds = load(source, inst, accepted)
        except (ImageStoreError, CodecError, OSError, ValueError):
            logger.exception("cannot read instance %s for retrieve", inst.sop_uid)
            audit.finish(STATUS_RETRIEVE_FAILED)
            yield STATUS_RETRIEVE_FAILED, None
            return
        yield STATUS_PENDING, ds
    audit.finish(STATUS_SUCCESS)


def _retrieve(
    event: Any, source: PriorsSource, settings: QrSettings, audit: _Audit
) -> list[InstanceSummary]:
    """The matches of a C-GET/C-MOVE, noted in its audit record (BadIdentifier passes)."""
    matches = retrieve_matches(event.identifier, source)
    audit.matched = len(matches)
    audit.studies = tuple(dict.fromkeys(m.study_uid for m in matches))
    if any(m.hospital not in source.readable for m in matches):
        audit.via = "consent"
    return matches


def handle_get(
    event: Any,
    source: PriorsSource,
    settings: QrSettings,
    audit_log: AuditLog | None = None,
) -> Iterator[Any]:
    audit = _Audit.begin(audit_log, event, settings, "C-GET")
    return _audited(audit, _get(event, source, settings, audit))


def _get(event: Any, source: PriorsSource, settings: QrSettings, audit: _Audit) -> Iterator[Any]:
    try:
        matches = _retrieve(event, source, settings, audit)
    except BadIdentifier as exc:
        logger.warning("C-GET refused: %s", exc)
        audit.finish(STATUS_IDENTIFIER_MISMATCH)
        yield 1  # pynetdicom answers a count of 0 with Success: one, which fails
        yield _failure(STATUS_IDENTIFIER_MISMATCH, str(exc)), None
        return
    yield len(matches)
    yield from _sub_operations(event, source, matches, accepted_contexts(event), audit)


def handle_move(
    event: Any,
    source: PriorsSource,
    settings: QrSettings,
    audit_log: AuditLog | None = None,
) -> Iterator[Any]:
    audit = _Audit.begin(audit_log, event, settings, "C-MOVE")
    return _audited(audit, _move(event, source, settings, audit))


def _move(event: Any, source: PriorsSource, settings: QrSettings, audit: _Audit) -> Iterator[Any]:
    destination = settings.move_destinations.get(str(event.move_destination).strip())
    if destination is None:
        logger.warning("C-MOVE refused: unknown destination %r", event.move_destination)
        audit.finish(STATUS_MOVE_UNKNOWN_DESTINATION)
        yield None, None
        return
    try:
        matches = _retrieve(event, source, settings, audit)
    except BadIdentifier as exc:
        logger.warning("C-MOVE refused: %s", exc)
        audit.finish(STATUS_IDENTIFIER_MISMATCH)
        # pynetdicom opens the sub-association before it takes a status: a few common
        # contexts, so that it is accepted and the failure reaches the requestor
        yield destination[0], destination[1], {"contexts": _ANY_DESTINATION}
        yield 1  # pynetdicom answers a count of 0 with Success: one, which fails
        yield _failure(STATUS_IDENTIFIER_MISMATCH, str(exc)), None
        return
    # the sub-association is pynetdicom's: we cannot see what the destination accepted, so
    # instances go in the syntax they arrived in (uncompressed ones convert between VRs)
    contexts = sorted({(m.sop_class_uid, send_syntax(m, None)) for m in matches})
    requested = [
        build_context(c, list(dict.fromkeys([ts, ExplicitVRLittleEndian, ImplicitVRLittleEndian])))
        for c, ts in contexts
    ]
    yield destination[0], destination[1], {"contexts": requested[:128]}
    yield len(matches)
    yield from _sub_operations(event, source, matches, None, audit)

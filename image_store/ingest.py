"""Committing instances to the regional store: bytes to the object store, then one index batch.

This is the cloud side of the gateway's upload (and of STOW-RS). Each step is idempotent by SOP
Instance UID and content hash, so a batch replayed after a crash stores every instance once.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from enum import StrEnum
from typing import Protocol

from image_store.errors import ImageStoreError
from image_store.keys import check_hospital, instance_key, prior_version_key
from image_store.metadata import read_header
from image_store.persons import PersonKeyer, link_verdict
from image_store.ports import Index, ObjectStore
from image_store.records import (
    TRUSTED_INGEST_SOURCE,
    InstanceHeader,
    InstanceQuery,
    InstanceRecord,
    PatientInfo,
    PatientRef,
    StudyQuery,
)

logger = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class IngestOutcome:
    """What became of one instance: stored (ok) or refused for good with a reason."""

    ok: bool
    sop_uid: str = ""
    study_uid: str = ""
    series_uid: str = ""
    reason: str = ""
    replaced: bool = False


class IngestSink(Protocol):
    """Where a gateway delivers instances: the embedded store, or the regional ingest API.

    Returns one outcome per item. Raises OSError (or a subclass) for transient failures that
    the caller retries: nothing of the batch may then be assumed stored.
    """

    def ingest(self, hospital: str, items: Sequence[bytes]) -> list[IngestOutcome]: ...


class DuplicatePolicy(StrEnum):
    """What to do with an instance whose SOP Instance UID is stored with other bytes."""

    KEEP_NEWER = "keep-newer"
    """Store the new bytes; keep the old ones as a prior version (and log it)."""
    REJECT = "reject"
    """Refuse the new bytes; the stored instance stays as it is."""


class LocalIngest:
    """IngestSink writing straight into an ObjectStore and an Index."""

    def __init__(
        self,
        store: ObjectStore,
        index: Index,
        *,
        duplicates: DuplicatePolicy = DuplicatePolicy.KEEP_NEWER,
        persons: PersonKeyer | None = None,
        trusted_links: bool = False,
    ) -> None:
        self.store = store
        self.index = index
        self.duplicates = duplicates
        self.persons = persons
        """Turns the identifiers instances carry into person keys (with ``trusted_links``)."""
        self.trusted_links = trusted_links
        """True for a hospital's gateway: its deliveries link patients to regional persons.
        False (STOW-RS, any user's upload): no delivery creates or changes a person link."""

    def ingest(self, hospital: str, items: Sequence[bytes]) -> list[IngestOutcome]:
        check_hospital(hospital)
        parsed: list[tuple[int, InstanceHeader, str] | IngestOutcome] = []
        seen: set[str] = set()
        for i, data in enumerate(items):
            try:
                header = read_header(data)
                key = instance_key(hospital, header.study_uid, header.series_uid, header.sop_uid)
            except ImageStoreError as exc:
                parsed.append(IngestOutcome(ok=False, reason=str(exc)))
                continue
            if header.sop_uid in seen:
                # the same instance twice in one batch: commit the first part, then the rest
                return self._commit(hospital, items, parsed) + self.ingest(hospital, items[i:])
            seen.add(header.sop_uid)
            parsed.append((i, header, key))
        return self._commit(hospital, items, parsed)

    def _link_persons(self, hospital: str, headers: list[InstanceHeader]) -> None:
        """Link the patients of committed instances to their persons (once per patient and
        batch), for a trusted delivery only, by :func:`link_verdict`: a link that would move a
        record to another person or join conflicting demographics is held for review."""
        if self.persons is None or not self.trusted_links:
            return
        keys: dict[PatientRef, tuple[str, PatientInfo]] = {}
        for h in headers:
            ref = PatientRef(hospital, h.patient.patient_id, h.patient.issuer)
            if ref not in keys and h.person_ids:
                key = self.persons.first_key(h.person_ids)
                if key is not None:
                    keys[ref] = (key, h.patient)
        for ref, (key, info) in keys.items():
            current = self.index.person_link(ref)
            others: list[tuple[str, PatientInfo]] = []
            if current is None:
                found = self.index.find_studies(StudyQuery(person_key=key), limit=1000)
                others = [(s.hospital, s.patient) for s in found]
            verdict = link_verdict(current, key, info, others, hospital)
            if verdict.action == "apply":
                self.index.link_patient(ref, key, TRUSTED_INGEST_SOURCE)
            elif verdict.action == "review":
                held = self.index.hold_link(
                    ref,
                    key,
                    current.person_key if current else "",
                    TRUSTED_INGEST_SOURCE,
                    verdict.reason,
                )
                logger.warning("person link held for review %d: %s", held.id, verdict.reason)

    def _commit(
        self,
        hospital: str,
        items: Sequence[bytes],
        parsed: list[tuple[int, InstanceHeader, str] | IngestOutcome],
    ) -> list[IngestOutcome]:
        todo = [p for p in parsed if not isinstance(p, IngestOutcome)]
        uids = tuple(h.sop_uid for _, h, _ in todo)
        existing = (
            {
                s.sop_uid: s
                for s in self.index.find_instances(InstanceQuery(sop_uids=uids), limit=len(uids))
            }
            if uids
            else {}
        )
        recs: list[InstanceRecord] = []
        refused: dict[str, str] = {}
        fresh: set[str] = set()  # keys that held nothing before this batch
        for i, header, key in todo:
            data = items[i]
            digest = hashlib.sha256(data).hexdigest()
            old = existing.get(header.sop_uid)
            if old is not None and old.sha256 != digest and old.object_key == key:
                if self.duplicates is DuplicatePolicy.REJECT:
                    refused[header.sop_uid] = (
                        "SOP Instance UID already stored with different content (policy: reject)"
                    )
                    continue
                prior = prior_version_key(key, old.sha256)
                self.store.put(prior, self.store.get(key), sha256=old.sha256)
                logger.warning(
                    "instance %s received with new content; previous kept as %s",
                    header.sop_uid,
                    prior,
                )
            if old is None or old.object_key != key:
                self.store.put(key, data, sha256=digest)
                fresh.add(key)
            elif old.sha256 != digest:
                self.store.put(key, data, sha256=digest)
            recs.append(
                InstanceRecord(
                    hospital=hospital, header=header, object_key=key, size=len(data), sha256=digest
                )
            )
        result = self.index.add_instances(recs)
        refused.update(result.rejected)
        replaced = set(result.replaced_uids)
        outcomes: list[IngestOutcome] = []
        committed: list[InstanceHeader] = []
        for p in parsed:
            if isinstance(p, IngestOutcome):
                outcomes.append(p)
                continue
            _, h, key = p
            reason = refused.get(h.sop_uid)
            if reason is not None and key in fresh:
                self.store.delete(key)  # the index refused a new object: leave no orphan
            if reason is not None:
                logger.warning("instance %s refused: %s", h.sop_uid, reason)
            if reason is None:
                committed.append(h)
            outcomes.append(
                IngestOutcome(
                    ok=reason is None,
                    sop_uid=h.sop_uid,
                    study_uid=h.study_uid,
                    series_uid=h.series_uid,
                    reason=reason or "",
                    replaced=h.sop_uid in replaced,
                )
            )
        self._link_persons(hospital, committed)
        return outcomes

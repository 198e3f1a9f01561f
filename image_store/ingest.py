"""Committing instances to the regional store: bytes to the object store, then one index batch.

This is the cloud side of a gateway's upload (viewer_api/ingest_api.py commits each batch
through LocalIngest), of STOW-RS and of ``cloudfilm gateway backfill``. Each step is idempotent
by SOP Instance UID and content hash, so a batch replayed after a crash stores every instance
once. An item is the instance's bytes or a file holding them: a file is hashed and copied into
the object store in chunks (a multi-gigabyte instance is never held in memory). A multi-frame's
frame layout is recorded with it, so one frame is later read by its byte range.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import threading
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor, wait
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from typing import Protocol

from image_store.errors import ImageStoreError
from image_store.frame_layout import frame_layout
from image_store.keys import check_hospital, instance_key, prior_version_key
from image_store.metadata import read_header
from image_store.persons import PersonKeyer, link_verdict
from image_store.ports import Index, ObjectStore
from image_store.records import (
    TRUSTED_INGEST_SOURCE,
    InstanceHeader,
    InstanceQuery,
    InstanceRecord,
    InstanceSummary,
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
    """A different instance of the same SOP Instance UID was in the index and this one
    replaced its record."""
    duplicate: bool = False
    """The same bytes were stored under the same key already: nothing new was written."""


IngestItem = bytes | Path
"""An instance to ingest: its Part 10 bytes, or a file holding them (read, never moved)."""

_CHUNK = 1 << 20


def item_size(item: IngestItem) -> int:
    """The item's length in bytes."""
    return item.stat().st_size if isinstance(item, Path) else len(item)


def item_sha256(item: IngestItem) -> str:
    """The item's sha256 (hex), a file read in chunks."""
    if not isinstance(item, Path):
        return hashlib.sha256(item).hexdigest()
    digest = hashlib.sha256()
    with open(item, "rb") as fh:
        while chunk := fh.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


class IngestSink(Protocol):
    """Where instances are delivered: LocalIngest commits them to the region's ObjectStore and
    Index; pacs_gateway.cloud_sink.HttpIngestSink, the gateway's sink, sends them to the
    cloud's ingest API (viewer_api/ingest_api.py), which commits them through LocalIngest.

    Returns one outcome per item. Raises OSError (or a subclass) for transient failures that
    the caller retries: nothing of the batch may then be assumed stored.
    """

    def ingest(self, hospital: str, items: Sequence[IngestItem]) -> list[IngestOutcome]: ...


class DuplicatePolicy(StrEnum):
    """What to do with an instance whose SOP Instance UID is stored with other bytes."""

    KEEP_NEWER = "keep-newer"
    """Store the new bytes; keep the old ones as a prior version (and log it)."""
    REJECT = "reject"
    """Refuse the new bytes; the stored instance stays as it is."""


STORE_THREADS = 4
"""Objects written (and fsynced, or PUT to S3) at once: by one batch, and by all the batches
of the process together (one pool serves every LocalIngest)."""

_put_pool: ThreadPoolExecutor | None = None
_put_pool_lock = threading.Lock()


def _shared_put_pool() -> ThreadPoolExecutor:
    """The process's object-writing threads, started on first use."""
    global _put_pool
    with _put_pool_lock:
        if _put_pool is None:
            _put_pool = ThreadPoolExecutor(STORE_THREADS, thread_name_prefix="ingest-put")
        return _put_pool


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

    def ingest(self, hospital: str, items: Sequence[IngestItem]) -> list[IngestOutcome]:
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
        items: Sequence[IngestItem],
        parsed: list[tuple[int, InstanceHeader, str] | IngestOutcome],
    ) -> list[IngestOutcome]:
        """Store the objects of a parsed batch, commit its index records in one transaction,
        then settle each instance's outcome. If storing or committing fails (a full disk, the
        index unreachable), the objects this batch newly created that the index does not list
        are deleted before the error goes on (:meth:`_drop_unlisted`)."""
        todo = [p for p in parsed if not isinstance(p, IngestOutcome)]
        existing = self._stored_versions(todo)
        recs: list[InstanceRecord] = []
        refused: dict[str, str] = {}
        fresh: set[str] = set()  # keys that held nothing before this batch
        try:
            stored = self._store_objects(hospital, items, todo, existing, fresh)
            for (_, header, _), rec_or_reason in zip(todo, stored, strict=True):
                if isinstance(rec_or_reason, str):
                    refused[header.sop_uid] = rec_or_reason
                else:
                    recs.append(rec_or_reason)
            result = self.index.add_instances(recs)
        except Exception:
            self._drop_unlisted(fresh)
            raise
        refused.update(result.rejected)
        same = {
            r.header.sop_uid
            for r in recs
            if (old := existing.get(r.header.sop_uid)) is not None
            and (old.object_key, old.sha256) == (r.object_key, r.sha256)
        }
        outcomes, committed = self._settle(parsed, refused, fresh, set(result.replaced_uids), same)
        self._link_persons(hospital, committed)
        return outcomes

    def _store_objects(
        self,
        hospital: str,
        items: Sequence[IngestItem],
        todo: list[tuple[int, InstanceHeader, str]],
        existing: dict[str, InstanceSummary],
        fresh: set[str],
    ) -> list[InstanceRecord | str]:
        """:meth:`_store_object` for each parsed item, ``STORE_THREADS`` at a time (each
        object's write and fsync, or its S3 PUT, waits on I/O, not on the others); returns
        once every one has finished, raising the first error (``fresh`` then names all the
        objects that were created)."""
        if len(todo) == 1 or STORE_THREADS == 1:
            return [
                self._store_object(hospital, items[i], h, key, existing.get(h.sop_uid), fresh)
                for i, h, key in todo
            ]
        pool = _shared_put_pool()
        futures = [
            pool.submit(
                self._store_object, hospital, items[i], h, key, existing.get(h.sop_uid), fresh
            )
            for i, h, key in todo
        ]
        wait(futures)
        return [f.result() for f in futures]

    def _drop_unlisted(self, keys: set[str]) -> None:
        """Delete the objects under ``keys`` that no index row points at (another batch may
        have committed the same instance meanwhile: its object stays). If the index cannot
        be asked, every object stays: an unlisted object is only wasted space, a listed one
        without its bytes would be a lost instance."""
        if not keys:
            return
        sops = tuple(key.rsplit("/", 1)[1] for key in keys)
        try:
            found = self.index.find_instances(InstanceQuery(sop_uids=sops), limit=len(sops) * 4)
        except Exception:
            logger.warning("cannot ask the index; %d unlisted objects stay", len(keys))
            return
        for key in keys - {s.object_key for s in found}:
            with contextlib.suppress(Exception):  # best effort: the batch's error goes on
                self.store.delete(key)

    def _stored_versions(
        self, todo: list[tuple[int, InstanceHeader, str]]
    ) -> dict[str, InstanceSummary]:
        """What the index holds already for the SOP Instance UIDs of ``todo``: the record at
        the key the batch writes if there is one, else any record of that UID."""
        if not todo:
            return {}
        uids = tuple({h.sop_uid for _, h, _ in todo})
        keys = {key for _, _, key in todo}
        found = self.index.find_instances(InstanceQuery(sop_uids=uids), limit=len(uids) * 4)
        versions: dict[str, InstanceSummary] = {}
        for s in found:
            if s.sop_uid not in versions or s.object_key in keys:
                versions[s.sop_uid] = s
        return versions

    def _store_object(
        self,
        hospital: str,
        item: IngestItem,
        header: InstanceHeader,
        key: str,
        old: InstanceSummary | None,
        fresh: set[str],
    ) -> InstanceRecord | str:
        """Put one instance's bytes under ``key`` (keeping different earlier bytes as a prior
        version, or refusing them by policy); its index record, or the refusal's reason."""
        digest = item_sha256(item)
        if old is not None and old.sha256 != digest and old.object_key == key:
            if self.duplicates is DuplicatePolicy.REJECT:
                return "SOP Instance UID already stored with different content (policy: reject)"
            prior = prior_version_key(key, old.sha256)
            self.store.put(prior, self.store.get(key), sha256=old.sha256)
            logger.warning(
                "instance %s received with new content; previous kept as %s",
                header.sop_uid,
                prior,
            )
        if old is None or old.object_key != key:
            self._put(key, item, digest)
            fresh.add(key)
        elif old.sha256 != digest:
            self._put(key, item, digest)
        multiframe = (header.number_of_frames or 1) > 1
        return InstanceRecord(
            hospital=hospital,
            header=header,
            object_key=key,
            size=item_size(item),
            sha256=digest,
            frames=frame_layout(item) if multiframe else None,
        )

    def _put(self, key: str, item: IngestItem, digest: str) -> None:
        if isinstance(item, Path):
            with open(item, "rb") as fh:
                self.store.put(key, fh, sha256=digest)
        else:
            self.store.put(key, item, sha256=digest)

    def _settle(
        self,
        parsed: list[tuple[int, InstanceHeader, str] | IngestOutcome],
        refused: dict[str, str],
        fresh: set[str],
        replaced: set[str],
        same: set[str],
    ) -> tuple[list[IngestOutcome], list[InstanceHeader]]:
        """Each item's outcome in order, and the headers committed; a new object the index
        refused is deleted (no orphan)."""
        outcomes: list[IngestOutcome] = []
        committed: list[InstanceHeader] = []
        for p in parsed:
            if isinstance(p, IngestOutcome):
                outcomes.append(p)
                continue
            _, h, key = p
            reason = refused.get(h.sop_uid)
            if reason is not None:
                if key in fresh:
                    self.store.delete(key)
                logger.warning("instance %s refused: %s", h.sop_uid, reason)
            else:
                committed.append(h)
            outcomes.append(
                IngestOutcome(
                    ok=reason is None,
                    sop_uid=h.sop_uid,
                    study_uid=h.study_uid,
                    series_uid=h.series_uid,
                    reason=reason or "",
                    replaced=h.sop_uid in replaced,
                    duplicate=reason is None and h.sop_uid in same,
                )
            )
        return outcomes, committed

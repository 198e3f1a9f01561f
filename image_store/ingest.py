"""Committing instances to the regional store: bytes to the object store, then one index batch.

This is the cloud side of the gateway's upload (and of STOW-RS). Each step is idempotent by SOP
Instance UID and content hash, so a batch replayed after a crash stores every instance once.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

from image_store.errors import ImageStoreError
from image_store.keys import check_hospital, instance_key
from image_store.metadata import read_header
from image_store.ports import Index, ObjectStore
from image_store.records import InstanceRecord

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


class LocalIngest:
    """IngestSink writing straight into an ObjectStore and an Index."""

    def __init__(self, store: ObjectStore, index: Index) -> None:
        self.store = store
        self.index = index

    def ingest(self, hospital: str, items: Sequence[bytes]) -> list[IngestOutcome]:
        check_hospital(hospital)
        outcomes: list[IngestOutcome | None] = [None] * len(items)
        recs: list[InstanceRecord] = []
        positions: list[int] = []
        for i, data in enumerate(items):
            try:
                header = read_header(data)
                key = instance_key(hospital, header.study_uid, header.series_uid, header.sop_uid)
            except ImageStoreError as exc:
                outcomes[i] = IngestOutcome(ok=False, reason=str(exc))
                continue
            digest = hashlib.sha256(data).hexdigest()
            info = self.store.put(key, data, sha256=digest)
            recs.append(
                InstanceRecord(
                    hospital=hospital,
                    header=header,
                    object_key=key,
                    size=info.size,
                    sha256=info.sha256,
                )
            )
            positions.append(i)
        result = self.index.add_instances(recs)
        rejected = dict(result.rejected)
        replaced = set(result.replaced_uids)
        for pos, rec in zip(positions, recs, strict=True):
            h = rec.header
            reason = rejected.get(h.sop_uid)
            if reason is not None:
                self.store.delete(rec.object_key)
                logger.warning("index refused %s: %s", h.sop_uid, reason)
            elif h.sop_uid in replaced:
                logger.warning("instance %s replaced by different bytes", h.sop_uid)
            outcomes[pos] = IngestOutcome(
                ok=reason is None,
                sop_uid=h.sop_uid,
                study_uid=h.study_uid,
                series_uid=h.series_uid,
                reason=reason or "",
                replaced=h.sop_uid in replaced,
            )
        return [
            o if o is not None else IngestOutcome(ok=False, reason="not processed")
            for o in outcomes
        ]

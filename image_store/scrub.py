"""Scrub: re-read every object the index names and check it against its recorded sha256.

Through an EncryptedObjectStore the plaintext is checked (the index keeps its sha256); a sealed
object that does not authenticate is reported as corrupt, like a plaintext one whose hash differs.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from dataclasses import dataclass, field

from image_store.errors import ImageStoreError, IntegrityError, ObjectNotFound
from image_store.ports import Index, ObjectStore
from image_store.records import InstanceQuery

PAGE = 1000


@dataclass(slots=True)
class ScrubReport:
    checked: int = 0
    bytes: int = 0
    missing: list[str] = field(default_factory=list)
    corrupt: list[str] = field(default_factory=list)
    unreadable: list[tuple[str, str]] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not (self.missing or self.corrupt or self.unreadable)


def scrub(
    index: Index,
    store: ObjectStore,
    *,
    hospitals: frozenset[str] | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> ScrubReport:
    """Check every instance (of ``hospitals``, or all); the report lists object keys."""
    report = ScrubReport()
    total = index.count_instances()
    offset = 0
    while True:
        page = index.find_instances(InstanceQuery(hospitals=hospitals), limit=PAGE, offset=offset)
        if not page:
            return report
        offset += len(page)
        for inst in page:
            try:
                data = store.get(inst.object_key)
            except ObjectNotFound:
                report.missing.append(inst.object_key)
            except IntegrityError:  # an encrypted object that does not authenticate
                report.corrupt.append(inst.object_key)
            except (ImageStoreError, OSError) as exc:
                report.unreadable.append((inst.object_key, str(exc)))
            else:
                report.bytes += len(data)
                if len(data) != inst.size or hashlib.sha256(data).hexdigest() != inst.sha256:
                    report.corrupt.append(inst.object_key)
            report.checked += 1
            if progress is not None:
                progress(report.checked, total)

"""Where the gateway's Query/Retrieve SCP reads priors from: the ``PriorsSource`` port.

Two implementations: :class:`image_store.priors.IndexPriors` (re-exported here as
``LocalPriorsSource``) reads an Index and an ObjectStore on the same machine, and
:class:`pacs_gateway.priors_http.HttpPriorsSource` asks the regional cloud's priors endpoints
with the gateway's credential. Either way the source, not the SCP, decides which studies the
gateway's hospital may read (its own, and others' under the patient's consent).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

from image_store.priors import IndexPriors
from image_store.records import InstanceSummary, SeriesRecord, StudyQuery, StudyRecord

LocalPriorsSource = IndexPriors


class PriorsSource(Protocol):
    """Studies, series and instances the gateway's hospital may read, and their bytes."""

    @property
    def hospital(self) -> str: ...

    @property
    def readable(self) -> frozenset[str]:
        """Hospitals whose studies are read without consent (others' come under consent)."""
        ...

    def find_studies(self, q: StudyQuery, *, limit: int = ...) -> list[StudyRecord]:
        """Matches of ``q`` (its ``hospitals`` and ``person_key`` are the source's to set),
        then the consented priors of the person behind ``q.patient_id`` at this hospital."""
        ...

    def find_series(
        self,
        study_uid: str,
        *,
        series_uids: Sequence[str] = ...,
        modality: str = ...,
        limit: int = ...,
    ) -> list[SeriesRecord]: ...

    def find_instances(
        self,
        study_uid: str,
        series_uid: str = ...,
        *,
        sop_uids: Sequence[str] = ...,
        limit: int = ...,
    ) -> list[InstanceSummary]:
        """Instances of a readable study (without ``study_uid``: of the readable hospitals)."""
        ...

    def read(self, inst: InstanceSummary) -> bytes:
        """The instance's bytes as stored, checked against ``inst.sha256``."""
        ...

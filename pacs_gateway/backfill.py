"""Backfill: copy an existing Orthanc PACS into the cloud, resumably.

Instances are listed page by page through Orthanc's REST API (orthanc-rest-client), fetched as
the DICOM files Orthanc stored, and delivered in batches through an IngestSink (idempotent by
SOP Instance UID and content). Each committed batch appends its Orthanc ids to a checkpoint
file (fsynced), so an interrupted run resumes where it stopped.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from image_store.ingest import IngestSink

logger = logging.getLogger(__name__)


class OrthancClient(Protocol):
    """The part of orthanc_rest_client.Orthanc that backfill uses."""

    def get_instances(
        self, expand: bool = False, since: int = 0, limit: int | None = None
    ) -> Any: ...

    def get_instance_file(self, id_: str) -> Any: ...


@dataclass(slots=True)
class BackfillReport:
    total: int = 0
    copied: int = 0
    already_done: int = 0
    refused: list[tuple[str, str]] = field(default_factory=list)
    """(Orthanc instance id, reason) of instances the cloud refused."""


Progress = Callable[[int, int], None]


def list_instance_ids(client: OrthancClient, page: int = 1000) -> list[str]:
    ids: list[str] = []
    since = 0
    while True:
        chunk = list(client.get_instances(since=since, limit=page))
        ids += [str(i) for i in chunk]
        if len(chunk) < page:
            return ids
        since += page


def _fetch(client: OrthancClient, orthanc_id: str) -> bytes:
    body = client.get_instance_file(orthanc_id)
    if isinstance(body, bytes | bytearray):
        return bytes(body)
    return b"".join(bytes(chunk) for chunk in body)


class Checkpoint:
    """The Orthanc ids already committed, one per line, appended and fsynced per batch."""

    def __init__(self, path: Path) -> None:
        self.path = path
        path.parent.mkdir(parents=True, exist_ok=True)
        self.done: set[str] = set()
        if path.exists():
            self.done = {line.strip() for line in path.read_text().splitlines() if line.strip()}

    def add(self, ids: Iterable[str]) -> None:
        new = [i for i in ids if i not in self.done]
        if not new:
            return
        with open(self.path, "a", encoding="ascii") as fh:
            fh.write("".join(f"{i}\n" for i in new))
            fh.flush()
            os.fsync(fh.fileno())
        self.done.update(new)


def _batches(ids: Sequence[str], size: int) -> Iterator[Sequence[str]]:
    for start in range(0, len(ids), size):
        yield ids[start : start + size]


def backfill(
    client: OrthancClient,
    sink: IngestSink,
    hospital: str,
    checkpoint: Checkpoint,
    *,
    batch_size: int = 32,
    progress: Progress | None = None,
) -> BackfillReport:
    ids = list_instance_ids(client)
    report = BackfillReport(total=len(ids))
    todo = [i for i in ids if i not in checkpoint.done]
    report.already_done = len(ids) - len(todo)
    done = report.already_done
    if progress:
        progress(done, len(ids))
    for batch in _batches(todo, batch_size):
        datas = [_fetch(client, i) for i in batch]
        outcomes = sink.ingest(hospital, datas)
        committed = []
        for orthanc_id, outcome in zip(batch, outcomes, strict=True):
            if outcome.ok:
                committed.append(orthanc_id)
            else:
                report.refused.append((orthanc_id, outcome.reason))
                logger.warning("Orthanc instance %s refused: %s", orthanc_id, outcome.reason)
        checkpoint.add(committed)
        report.copied += len(committed)
        done += len(batch)
        if progress:
            progress(done, len(ids))
    return report


class ProgressBar:
    """A one-line text progress bar on a stream (a terminal or a log)."""

    def __init__(self, stream: Any, label: str = "backfill") -> None:
        self.stream = stream
        self.label = label
        self.t0 = time.monotonic()

    def __call__(self, done: int, total: int) -> None:
        width = 30
        frac = done / total if total else 1.0
        bar = "#" * int(frac * width)
        rate = done / max(1e-6, time.monotonic() - self.t0)
        end = "\n" if done >= total else ""
        self.stream.write(
            f"\r{self.label} [{bar:<{width}}] {done}/{total} {frac:6.1%} {rate:7.1f} inst/s{end}"
        )
        self.stream.flush()

"""Which transfer syntax a retrieved instance is sent in, and its dataset in that syntax."""

from __future__ import annotations

import io
from typing import Any

import pydicom
from pydicom.dataset import Dataset

from dicom_codecs.transcode import TARGETS, choose_syntax, transcode
from image_store.records import InstanceSummary
from pacs_gateway.priors import PriorsSource

Accepted = frozenset[tuple[str, str]]
"""(SOP Class UID, transfer syntax UID) pairs a peer accepted for storage."""


def send_syntax(inst: InstanceSummary, accepted: Accepted | None) -> str:
    """The transfer syntax to send an instance in: as stored if the peer takes it, else the
    first the peer takes of the arrival syntax and those we transcode into; without knowing
    what the peer took (C-MOVE), the syntax the instance arrived in."""
    stored = inst.transfer_syntax_uid
    arrival = inst.original_transfer_syntax_uid or stored
    if accepted is None:
        return arrival
    for syntax in (stored, arrival, *TARGETS):
        if (inst.sop_class_uid, syntax) in accepted and (
            syntax == stored or choose_syntax(stored, (syntax,)) == syntax
        ):
            return syntax
    return stored


def load(source: PriorsSource, inst: InstanceSummary, accepted: Accepted | None) -> Dataset:
    """The instance read from ``source`` (its hash checked: never damaged bytes), transcoded
    to the syntax :func:`send_syntax` picks."""
    data = source.read(inst)
    syntax = send_syntax(inst, accepted)
    if syntax != inst.transfer_syntax_uid:
        data = transcode(data, syntax)
    return pydicom.dcmread(io.BytesIO(data))


def accepted_contexts(event: Any) -> Accepted:
    """What the requestor of a C-GET accepted, from its association's contexts."""
    return frozenset(
        (str(cx.abstract_syntax), str(cx.transfer_syntax[0]))
        for cx in event.assoc.accepted_contexts
    )

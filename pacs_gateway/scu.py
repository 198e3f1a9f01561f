"""Sending instances by C-STORE (the demo's modality, and later C-MOVE to workstations)."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pydicom
from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian
from pynetdicom import AE

from pacs_gateway import pynetdicom_fixes

logger = logging.getLogger(__name__)
pynetdicom_fixes.install()


class AssociationFailed(ConnectionError):
    """The peer rejected or aborted the association, or could not be reached."""


def send_files(
    paths: Sequence[Path],
    *,
    host: str,
    port: int,
    called_ae: str,
    calling_ae: str = "CLOUDFILM-SCU",
) -> list[int]:
    """C-STORE every file over one association; returns the DIMSE status of each (0xFFFF when
    no response came). Each file is sent in its own transfer syntax."""
    headers = [pydicom.dcmread(p, stop_before_pixels=True) for p in paths]
    contexts = sorted({(str(h.SOPClassUID), str(h.file_meta.TransferSyntaxUID)) for h in headers})
    if len(contexts) > 128:
        raise ValueError(f"paths need {len(contexts)} presentation contexts, at most 128 fit")
    ae = AE(ae_title=calling_ae)
    for sop_class, ts in contexts:
        syntaxes = list(dict.fromkeys([ts, ExplicitVRLittleEndian, ImplicitVRLittleEndian]))
        ae.add_requested_context(sop_class, syntaxes)
    assoc: Any = ae.associate(host, port, ae_title=called_ae)
    if not assoc.is_established:
        raise AssociationFailed(f"association with {called_ae}@{host}:{port} was not established")
    statuses = []
    try:
        for p in paths:
            status = assoc.send_c_store(p)
            statuses.append(int(status.Status) if "Status" in status else 0xFFFF)
    finally:
        assoc.release()
    return statuses

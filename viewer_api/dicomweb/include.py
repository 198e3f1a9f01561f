"""QIDO-RS ``includefield``: attributes beyond the default ones, taken from the stored DICOM
JSON of a representative instance (the result itself at instance level, the first instance of
each series or study above it): one index read for the instances, two per series or study.

``includefield=all`` adds the attributes that belong to the level asked for (PS3.18 Table
10.6.1-5 style: patient and study attributes for studies, series attributes for series, all
non-bulk attributes for instances); attributes named explicitly are copied whatever their level.
"""

from __future__ import annotations

import json
from typing import Any

from image_store.ports import Index
from image_store.records import InstanceQuery
from viewer_api.dicomweb.json import JsonObject
from viewer_api.dicomweb.params import Paging

_STUDY_ALL = frozenset(
    {
        "00080020", "00080030", "00080050", "00080080", "00080081", "00080090", "00081030",
        "00081032", "00081060", "0020000D", "00200010", "00321032", "00321060",
    }
)  # fmt: skip
_SERIES_ALL = frozenset(
    {
        "00080021", "00080031", "00080060", "00080070", "0008103E", "00081090", "00180015",
        "00181030", "00185100", "0020000E", "00200011", "00200060", "00400244", "00400245",
    }
)  # fmt: skip


def _belongs(tag: str, level: str) -> bool:
    if level == "instance":
        return True
    if level == "study":
        return tag.startswith("0010") or tag in _STUDY_ALL
    return tag in _SERIES_ALL


def wants_more(page: Paging, docs: list[JsonObject]) -> bool:
    return bool(docs) and (page.include_all or any(t not in d for d in docs for t in page.include))


def representative_metadata(index: Index, level: str, uids: list[str]) -> dict[str, Any]:
    """uid -> the DICOM JSON of its representative instance (blocking: run in a thread)."""
    if level == "instance":
        sops = {u: u for u in uids}
    else:
        sops = {}
        for uid in uids:
            q = InstanceQuery(study_uid=uid) if level == "study" else InstanceQuery(series_uid=uid)
            found = index.find_instances(q, limit=1)
            if found:
                sops[found[0].sop_uid] = uid
    if not sops:
        return {}
    docs = index.instance_metadata(InstanceQuery(sop_uids=tuple(sops)))
    out: dict[str, Any] = {}
    for text in docs:
        doc = json.loads(text)
        sop = (doc.get("00080018", {}).get("Value") or [""])[0]
        if sop in sops:
            out[sops[sop]] = doc
    return out


def merge(docs: list[JsonObject], key: str, page: Paging, meta: dict[str, Any], level: str) -> None:
    """Add the asked-for attributes to each result from its representative's metadata."""
    for doc in docs:
        uid = (doc.get(key, {}).get("Value") or [""])[0]
        source = meta.get(uid)
        if not source:
            continue
        for tag, element in source.items():
            if tag in doc or not isinstance(element, dict):
                continue
            if "BulkDataURI" in element or "InlineBinary" in element:
                continue
            if tag in page.include or (page.include_all and _belongs(tag, level)):
                doc[tag] = element

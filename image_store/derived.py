"""Derived objects of a series (thumbnails), rendered once and kept in the object store."""

from __future__ import annotations

import logging
from collections.abc import Callable

from image_store.errors import ObjectNotFound
from image_store.frame_layout import first_frame_instance
from image_store.keys import thumbnail_key
from image_store.ports import Index, ObjectStore
from image_store.records import InstanceQuery, InstanceSummary

logger = logging.getLogger(__name__)

Renderer = Callable[[bytes], bytes]
"""DICOM Part 10 bytes -> JPEG bytes."""


def representative_instance(index: Index, series_uid: str) -> InstanceSummary | None:
    """The instance a series is shown by: the middle one in instance order."""
    found = index.find_instances(InstanceQuery(series_uid=series_uid), limit=100_000)
    if not found:
        return None
    found.sort(key=lambda i: (i.instance_number is None, i.instance_number or 0, i.sop_uid))
    return found[len(found) // 2]


def series_thumbnail(
    store: ObjectStore, index: Index, series_uid: str, render: Renderer
) -> bytes | None:
    """JPEG thumbnail of a series, from the store if rendered before; None if no instance.

    The key names the instance it was rendered from, so a series that grows gets a new one.
    """
    inst = representative_instance(index, series_uid)
    if inst is None:
        return None
    key = thumbnail_key(inst.hospital, inst.study_uid, inst.series_uid, inst.sop_uid)
    try:
        return store.get(key)
    except ObjectNotFound:
        pass
    layout = index.frame_layout(inst.sop_uid, inst.sha256)
    if layout is not None and (inst.number_of_frames or 1) > 1:
        jpeg = render(first_frame_instance(store, inst.object_key, layout))
    else:
        jpeg = render(store.get(inst.object_key))
    store.put(key, jpeg)
    return jpeg

"""Series thumbnails for the DICOMweb API and the cloud-film page.

The renderer (``dicom_codecs.render``, numpy and Pillow) is imported on first use, in the worker
thread that renders, so importing the app loads nothing heavy.
"""

from __future__ import annotations

from image_store.derived import series_thumbnail
from image_store.ports import Index, ObjectStore
from viewer_api.context import blocking
from viewer_api.errors import NotFound


def render_jpeg(data: bytes) -> bytes:
    """DICOM Part 10 bytes -> JPEG, through dicom_codecs (imported lazily)."""
    from dicom_codecs.render import render_thumbnail

    return render_thumbnail(data)


async def series_jpeg(store: ObjectStore, index: Index, series_uid: str) -> bytes:
    """The series' thumbnail (rendered once, then kept in the store), off the event loop."""
    jpeg = await blocking(series_thumbnail, store, index, series_uid, render_jpeg)
    if jpeg is None:
        raise NotFound(f"series {series_uid} has no instances")
    return jpeg

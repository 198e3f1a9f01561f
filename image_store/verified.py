"""Reading an object back as it was stored: its bytes checked against the sha256 the index
recorded at ingest, so damaged or replaced bytes raise instead of reaching a reader."""

from __future__ import annotations

import hashlib

from image_store.errors import IntegrityError
from image_store.ports import ObjectStore


def read_verified(store: ObjectStore, key: str, sha256: str) -> bytes:
    data = store.get(key)
    if hashlib.sha256(data).hexdigest() != sha256:
        raise IntegrityError(f"object {key} does not match its recorded sha256")
    return data

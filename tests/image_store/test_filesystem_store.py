from __future__ import annotations

from pathlib import Path

import pytest

from image_store.objects.filesystem import FilesystemObjectStore
from tests.contracts.object_store import KEY, ObjectStoreContract


class TestFilesystemObjectStore(ObjectStoreContract):
    @pytest.fixture
    def store(self, tmp_path: Path) -> FilesystemObjectStore:
        return FilesystemObjectStore(tmp_path / "objects")


def test_a_failed_put_leaves_no_partial_file(tmp_path: Path) -> None:
    store = FilesystemObjectStore(tmp_path)

    class Exploding:
        def __init__(self) -> None:
            self.calls = 0

        def read(self, n: int) -> bytes:
            self.calls += 1
            if self.calls > 2:
                raise OSError("disk went away")
            return b"x" * 1000

    with pytest.raises(OSError, match="disk went away"):
        store.put(KEY, Exploding())  # type: ignore[arg-type]
    assert [p for p in tmp_path.rglob("*") if p.is_file()] == []

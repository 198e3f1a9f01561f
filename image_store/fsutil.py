"""Filesystem helpers shared by every durable local writer (object store, spool, journal, key
files): create directories readable by their owner only and make directory entries durable."""

from __future__ import annotations

import contextlib
import os
from pathlib import Path

DIR_MODE = 0o700


def fsync_dir(path: Path) -> None:
    """Make a directory's entries (a created, renamed or removed file) durable."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def make_dirs(path: Path, mode: int = DIR_MODE) -> None:
    """``mkdir -p`` giving every directory it creates ``mode`` (pathlib's ``parents=True``
    creates the missing parents with the default mode)."""
    missing: list[Path] = []
    p = Path(path)
    while not p.is_dir():
        missing.append(p)
        if p.parent == p:
            break
        p = p.parent
    for d in reversed(missing):
        with contextlib.suppress(FileExistsError):  # another writer made it meanwhile
            d.mkdir(mode=mode)

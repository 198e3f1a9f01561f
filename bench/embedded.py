"""The embedded stack for the benches: a data directory loaded with a synthetic study, and
`cloudfilm serve` on it (a new process, on 127.0.0.1, ports chosen by the OS)."""

from __future__ import annotations

import re
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from cloudfilm.config import load_settings
from cloudfilm.stores import open_index, open_object_store
from cloudfilm.synth import synthesize_study
from image_store.ingest import LocalIngest

CLI = (sys.executable, "-m", "cloudfilm.cli")
READY = re.compile(r"ready: http (\S+) ")
HOSPITAL = "HOSP1"
LOOPBACK = ("--http", "127.0.0.1:0", "--dicom", "127.0.0.1:0")


def load_study(root: Path, *, modality: str, images: int, seed: int) -> tuple[Path, list[Path]]:
    """(data directory, the study's files): a synthetic study ingested straight into a fresh
    embedded store and index (no gateway), in batches of 50."""
    data = root / "data"
    paths = synthesize_study(root / "study", modality=modality, images=images, seed=seed)
    settings = load_settings({"data_dir": str(data), "hospital": HOSPITAL})
    data.mkdir()
    store, index = open_object_store(settings), open_index(settings)
    ingest = LocalIngest(store, index)
    for i in range(0, len(paths), 50):
        outcomes = ingest.ingest(HOSPITAL, [p.read_bytes() for p in paths[i : i + 50]])
        assert all(o.ok for o in outcomes), outcomes
    index.close()
    return data, paths


def token(data: Path, role: str, hospital: str = HOSPITAL, cwd: Path | None = None) -> str:
    """A token of the user ``bench.<role>``, registered at ``hospital`` first (the region is
    initialised if new; the API honours tokens of registered users only)."""
    subject = f"bench.{role}"

    def cli(*args: str, check: bool = True) -> str:
        done = subprocess.run(
            [*CLI, *args, "--data", str(data)], capture_output=True, text=True, check=check, cwd=cwd
        )
        return done.stdout.strip()

    cli("init")
    cli("hospitals", "add", hospital, "--name", hospital)
    cli("users", "add", subject, "--hospital", hospital, "--role", role, check=False)  # or known
    return cli("token", "--hospital", hospital, "--role", role, "--subject", subject)


@contextmanager
def serve(data: Path) -> Iterator[tuple[str, float]]:
    """(base URL, ms from process start to ready) of `cloudfilm serve` on ``data``."""
    t0 = time.perf_counter()
    proc = subprocess.Popen(
        [*CLI, "serve", "--data", str(data), "--hospital", HOSPITAL, *LOOPBACK],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    try:
        assert proc.stdout is not None
        for line in proc.stdout:
            if m := READY.match(line):
                yield m[1], (time.perf_counter() - t0) * 1000
                return
        raise RuntimeError("cloudfilm serve exited before it was ready")
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(30)

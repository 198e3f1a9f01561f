"""C-STORE ingest, side by side in one run: CloudFilm's gateway vs Orthanc vs DCMTK storescp.

    .venv/bin/python bench/ingest_compare.py [--slices 300] [--runs 3] [--associations 1 2]
                                             [--warmup 0]

Sends the same synthetic CT study (512x512 int16) with DCMTK storescu (TCP_NODELAY=1) to each
receiver and prints inst/s, MB/s and the ratio to Orthanc's default configuration. CloudFilm runs
durably (fsync on); its time is until storescu finishes (every instance acknowledged, i.e. on
disk), and the time until the whole study is indexed is reported beside it. Every receiver
is started fresh for each run. With ``--warmup N`` each first gets a study of its own (other
UIDs, N slices), stored and followed by a short pause, so the timed study meets a server in
its steady state rather than one in the first seconds of its life (CloudFilm's spool journal
allocates its segments during its first few hundred MB; Orthanc creates its SQLite index
and storage folders, and gains more from warming up).

Orthanc and storescp cannot bind to one address, so the bench re-runs itself in a private
network namespace with only loopback (root needed, as in CI): nothing listens outside 127.0.0.1.
Orthanc is measured when the Debian package is installed (`apt-get install orthanc`).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
WORK = Path(tempfile.gettempdir()) / "cloudfilm-bench"
SETTLE_S = 2.0


def ensure_netns() -> None:
    if os.environ.get("CLOUDFILM_BENCH_NETNS") or os.geteuid() != 0:
        return
    os.execvp(
        "unshare",
        ["unshare", "-n", "env", "CLOUDFILM_BENCH_NETNS=1", sys.executable, *sys.argv],
    )


def wait_echo(aec: str, port: int, proc: subprocess.Popen[bytes] | None = None) -> None:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"{aec} exited with {proc.returncode}")
        r = subprocess.run(
            ["echoscu", "-q", "-aec", aec, "127.0.0.1", str(port)], capture_output=True
        )
        if r.returncode == 0:
            return
        time.sleep(0.05)
    raise RuntimeError(f"{aec} did not answer C-ECHO")


def send(aec: str, port: int, groups: list[list[Path]]) -> float:
    """storescu every group over its own association, in parallel; seconds until all done."""
    env = {**os.environ, "TCP_NODELAY": "1"}
    t0 = time.perf_counter()
    procs = [
        subprocess.Popen(
            ["storescu", "-aet", "BENCHSCU", "-aec", aec, "127.0.0.1", str(port), *map(str, g)],
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )
        for g in groups
    ]
    for p in procs:
        _, err = p.communicate(timeout=600)
        if p.returncode != 0:
            raise RuntimeError(f"storescu failed: {err.decode()[-500:]}")
    return time.perf_counter() - t0


def stop(proc: subprocess.Popen[bytes]) -> None:
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(30)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


@contextmanager
def cloudfilm(tmp: Path) -> Iterator[tuple[str, int, Callable[[int], float]]]:
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "cloudfilm.cli",
            "serve",
            "--data",
            str(tmp),
            "--http",
            "127.0.0.1:0",
            "--dicom",
            "127.0.0.1:0",
            "--ae",
            "CLOUDFILM",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        cwd=ROOT,
    )
    assert proc.stdout is not None
    line = proc.stdout.readline().decode()
    if not line.startswith("ready:"):
        stop(proc)
        raise RuntimeError("cloudfilm serve did not start")
    port = int(line.rsplit(":", 1)[1])

    def indexed_after(n: int) -> float:
        import sqlite3

        t0 = time.perf_counter()
        while time.perf_counter() - t0 < 300:
            try:
                with sqlite3.connect(tmp / "index.sqlite") as db:
                    (count,) = db.execute("SELECT count(*) FROM instances").fetchone()
                if count >= n:
                    return time.perf_counter() - t0
            except sqlite3.Error:
                pass
            time.sleep(0.02)
        raise RuntimeError("not indexed within 300 s")

    try:
        yield "CLOUDFILM", port, indexed_after
    finally:
        stop(proc)


@contextmanager
def storescp(tmp: Path) -> Iterator[tuple[str, int, Callable[[int], float]]]:
    out = tmp / "out"
    out.mkdir()
    proc = subprocess.Popen(
        ["storescp", "-aet", "STORESCP", "+B", "-od", str(out), "11113"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        wait_echo("STORESCP", 11113, proc)
        yield "STORESCP", 11113, lambda n: 0.0
    finally:
        stop(proc)


def orthanc_config(tmp: Path) -> dict[str, object]:
    """Orthanc's default configuration but for storage under ``tmp``, loopback ports 8043 and
    4243, and stores accepted from any calling AE."""
    return {
        "Name": "BenchOrthanc",
        "StorageDirectory": str(tmp / "db"),
        "IndexDirectory": str(tmp / "db"),
        "HttpPort": 8043,
        "RemoteAccessAllowed": False,
        "DicomPort": 4243,
        "DicomAet": "ORTHANC",
        "DicomCheckCalledAet": False,
        "DicomAlwaysAllowStore": True,
        "DicomAlwaysAllowEcho": True,
        "Plugins": [],
    }


def orthanc(max_pdu: int | None) -> Callable[[Path], object]:
    @contextmanager
    def run(tmp: Path) -> Iterator[tuple[str, int, Callable[[int], float]]]:
        cfg = orthanc_config(tmp)
        if max_pdu:
            cfg["MaximumPduLength"] = max_pdu
        (tmp / "orthanc.json").write_text(json.dumps(cfg))
        proc = subprocess.Popen(
            ["Orthanc", str(tmp / "orthanc.json")],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )

        def stored(n: int) -> float:
            with urllib.request.urlopen("http://127.0.0.1:8043/statistics") as r:
                got = json.load(r)["CountInstances"]
            if got != n:
                raise RuntimeError(f"Orthanc holds {got} instances, expected {n}")
            return 0.0

        try:
            wait_echo("ORTHANC", 4243, proc)
            yield "ORTHANC", 4243, stored
        finally:
            stop(proc)

    return run


def prepare_study(slices: int, seed: int = 1) -> list[Path]:
    """Loopback up, TCP_NODELAY for every DCMTK peer, and the synthetic CT of ``slices`` slices
    (``seed``) in WORK, written once and shared by the benches; its files in order."""
    # DCMTK reads TCP_NODELAY on both ends (storescu and the DCMTK-based receivers): without it
    # Nagle's algorithm and delayed ACKs cap every DCMTK peer at about 20 instances/s.
    os.environ["TCP_NODELAY"] = "1"
    WORK.mkdir(parents=True, exist_ok=True)
    subprocess.run(["ip", "link", "set", "lo", "up"], check=False, capture_output=True)
    study = WORK / (f"ct-{slices}" if seed == 1 else f"ct-{slices}-seed{seed}")
    if not study.is_dir():
        synth = [sys.executable, "-m", "cloudfilm.cli", "synth", str(study)]
        subprocess.run(
            [*synth, "--modality", "CT", "--images", str(slices), "--seed", str(seed)],
            check=True,
            cwd=ROOT,
        )
    return sorted(study.glob("*.dcm"))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--slices", type=int, default=300)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--associations", type=int, nargs="+", default=[1, 2])
    ap.add_argument(
        "--warmup",
        type=int,
        default=0,
        help="slices of another study each receiver gets (and stores) before the timed one, "
        "for a steady-state figure (default 0: the timed study meets a fresh server)",
    )
    args = ap.parse_args()
    ensure_netns()
    files = prepare_study(args.slices)
    warm = prepare_study(args.warmup, seed=2) if args.warmup else []
    mb = sum(f.stat().st_size for f in files) / 1e6

    receivers: dict[str, Callable[[Path], object]] = {"cloudfilm (fsync)": cloudfilm}
    if shutil.which("Orthanc"):
        receivers["orthanc default"] = orthanc(None)
        receivers["orthanc pdu 131072"] = orthanc(131072)
    if shutil.which("storescp"):
        receivers["dcmtk storescp +B"] = storescp
    print(
        f"study: {len(files)} files, {mb:.1f} MB; storescu TCP_NODELAY=1; "
        f"median of {args.runs} interleaved runs; each receiver freshly started"
        + (
            f", then given a {len(warm)}-slice warm-up study (stored, then {SETTLE_S:g} s "
            "idle) before the timed one"
            if warm
            else ""
        )
    )

    for n_assoc in args.associations:
        groups = [files[i::n_assoc] for i in range(n_assoc)]
        times: dict[str, list[float]] = {k: [] for k in receivers}
        indexed: dict[str, list[float]] = {k: [] for k in receivers}
        for _ in range(args.runs):
            for name, factory in receivers.items():
                with (
                    tempfile.TemporaryDirectory(dir=WORK) as d,
                    factory(Path(d)) as (aec, port, after),  # type: ignore[attr-defined]
                ):
                    if warm:
                        send(aec, port, [warm])
                        after(len(warm))
                        time.sleep(SETTLE_S)
                    dt = send(aec, port, groups)
                    indexed[name].append(dt + after(len(warm) + len(files)))
                    times[name].append(dt)
        base = statistics.median(times.get("orthanc default") or [float("nan")])
        print(f"\n== {n_assoc} association(s)")
        print(f"{'receiver':22} {'inst/s':>8} {'MB/s':>8} {'x orthanc':>10} {'indexed s':>10}")
        for name, ts in times.items():
            t = statistics.median(ts)
            ix = statistics.median(indexed[name])
            print(f"{name:22} {len(files) / t:8.1f} {mb / t:8.1f} {base / t:10.2f} {ix:10.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

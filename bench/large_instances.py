"""One large multi-frame through DCMTK storescu: CloudFilm (`cloudfilm serve`) vs DCMTK storescp
and Orthanc.

    .venv/bin/python bench/large_instances.py [--mb 1024] [--max-peak-mb 128] [--keep]

Builds a US cine of 480x640 RGB frames (``cloudfilm synth``'s anatomy, four frames repeated)
of about ``--mb`` MB, sends it once with storescu to ``storescp +B`` (bit-preserving, to disk),
once to Debian's Orthanc (default configuration, storage in a temporary directory; skipped when
``Orthanc`` is not installed) and once to a fresh ``cloudfilm serve`` (durable: Success only
once the instance is on disk), and prints for each: MB/s until storescu ends and its ratio to
storescp's and Orthanc's, the peak resident memory of the receiver's processes above their idle
level (the whole process tree; for CloudFilm also the DICOM gateway process alone), and for
Orthanc and CloudFilm the seconds from storescu's start until the instance is retrievable (for
Orthanc its frame 0 through ``/instances/{id}/frames/0/raw``, for CloudFilm its frame 1 through
WADO-RS); for CloudFilm also the time to the first frame (one WADO-RS frames request of the last
frame once retrievable) plus the whole instance through WADO-RS (transfer-syntax=*).

Orthanc 1.10 cannot be told to listen on loopback only, so as root the bench re-runs itself in
a private network namespace that has only loopback (as bench/ingest_compare.py does).

The memory ceiling is a check: with ``--max-peak-mb`` the bench exits 1 when CloudFilm's peak
above idle exceeds it. Resident memory is sampled every 20 ms from /proc (VmRSS summed over
the tree); short spikes between samples can be missed, so each process's VmHWM (its own peak)
is printed too.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

FRAME_BYTES = 480 * 640 * 3


def _children(pid: int) -> list[int]:
    """``pid`` and its descendants, from one pass over /proc."""
    kids: dict[int, list[int]] = {}
    for p in os.listdir("/proc"):
        if not p.isdigit():
            continue
        try:
            ppid = int(Path(f"/proc/{p}/stat").read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, IndexError, ValueError):
            continue
        kids.setdefault(ppid, []).append(int(p))
    out = [pid]
    for p in out:
        out.extend(kids.get(p, []))
    return out


def _status(pid: int, field: str) -> float:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return 0.0


def tree_rss_mb(pid: int) -> float:
    return sum(_status(p, "VmRSS") for p in _children(pid))


class PeakMeter:
    """Samples a process tree's summed RSS in a thread; ``peak`` is the highest seen."""

    def __init__(self, pid: int, interval_s: float = 0.02) -> None:
        self.pid = pid
        self.peak = 0.0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, tree_rss_mb(self.pid))
            self._stop.wait(0.02)

    def __enter__(self) -> PeakMeter:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


def make_cine(out: Path, mb: int) -> Path:
    import pydicom

    from cloudfilm.synth import synthesize_study

    frames = max(2, mb * 1024 * 1024 // FRAME_BYTES)
    (src,) = synthesize_study(out / "src", modality="US", images=1, frames=4, seed=20)
    ds = pydicom.dcmread(src)
    four = bytes(ds.PixelData)
    ds.PixelData = four * (frames // 4) + four[: (frames % 4) * FRAME_BYTES]
    ds.NumberOfFrames = frames
    path = out / f"cine-{frames}.dcm"
    ds.save_as(path, enforce_file_format=True)
    shutil.rmtree(out / "src")
    return path


def storescu(port: int, ae: str, path: Path) -> float:
    t0 = time.perf_counter()
    subprocess.run(
        ["storescu", "-aec", ae, "127.0.0.1", str(port), str(path)],
        check=True,
        env={**os.environ, "TCP_NODELAY": "1"},
    )
    return time.perf_counter() - t0


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def run_storescp(work: Path, path: Path) -> dict[str, float]:
    out = work / "storescp"
    out.mkdir()
    port = free_port()
    proc = subprocess.Popen(["storescp", "-aet", "STORESCP", "+B", "-od", str(out), str(port)])
    try:
        time.sleep(0.5)
        idle = tree_rss_mb(proc.pid)
        with PeakMeter(proc.pid) as meter:
            seconds = storescu(port, "STORESCP", path)
        return {"s": seconds, "idle": idle, "peak_above_idle": meter.peak - idle}
    finally:
        proc.terminate()
        proc.wait(10)


def run_orthanc(work: Path, path: Path) -> dict[str, float] | None:
    """Orthanc's default configuration (16 KB PDUs, its SQLite index, no compression) with its
    storage and index under ``work``; None when Orthanc is not installed."""
    if shutil.which("Orthanc") is None:
        return None
    tmp = work / "orthanc"
    tmp.mkdir()
    http, dicom = free_port(), free_port()
    config = {
        "Name": "BenchOrthanc",
        "StorageDirectory": str(tmp / "db"),
        "IndexDirectory": str(tmp / "db"),
        "HttpPort": http,
        "RemoteAccessAllowed": False,
        "AuthenticationEnabled": False,
        "DicomPort": dicom,
        "DicomAet": "ORTHANC",
        "DicomCheckCalledAet": False,
        "DicomAlwaysAllowStore": True,
        "DicomAlwaysAllowEcho": True,
        "Plugins": [],
    }
    (tmp / "orthanc.json").write_text(json.dumps(config))
    log = (tmp / "orthanc.log").open("wb")
    proc = subprocess.Popen(["Orthanc", str(tmp / "orthanc.json")], stdout=log, stderr=log)
    rest = f"http://127.0.0.1:{http}"

    def retrievable() -> bool:
        try:
            with urllib.request.urlopen(f"{rest}/instances", timeout=30) as r:
                ids = json.load(r)
            if not ids:
                return False
            with urllib.request.urlopen(
                f"{rest}/instances/{ids[0]}/frames/0/raw", timeout=600
            ) as r:
                r.read()
        except OSError:
            return False
        return True

    try:
        deadline = time.monotonic() + 60
        while subprocess.run(
            ["echoscu", "-q", "-aec", "ORTHANC", "127.0.0.1", str(dicom)], capture_output=True
        ).returncode:
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"Orthanc did not start (see {tmp / 'orthanc.log'})")
            time.sleep(0.05)
        time.sleep(1.0)
        idle = tree_rss_mb(proc.pid)
        with PeakMeter(proc.pid) as meter:
            t0 = time.perf_counter()
            seconds = storescu(dicom, "ORTHANC", path)
            _until(retrievable, 900)
            ready = time.perf_counter() - t0
        return {
            "s": seconds,
            "idle": idle,
            "peak_above_idle": meter.peak - idle,
            "hwm": _status(proc.pid, "VmHWM"),
            "ready_s": ready,
        }
    finally:
        proc.terminate()
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log.close()


def _get(url: str, token: str, accept: str = "") -> bytes:
    headers = {"Authorization": f"Bearer {token}"}
    if accept:
        headers["Accept"] = accept
    with urllib.request.urlopen(urllib.request.Request(url, headers=headers), timeout=600) as r:
        return bytes(r.read())


def _until(check: Callable[[], bool], timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while not check():
        if time.monotonic() > deadline:
            raise TimeoutError("the instance never became retrievable")
        time.sleep(0.05)


def run_cloudfilm(work: Path, path: Path, ready_timeout_s: float) -> dict[str, float]:
    import pydicom

    from tests.e2e.conftest import start_server, stop_server

    ds = pydicom.dcmread(path, stop_before_pixels=True)
    data = work / "cloudfilm"
    data.mkdir()
    # the cloud's part limit sized to the instance (its default, 512 MB, refuses a 1 GB one)
    limit_mb = max(512, 2 * path.stat().st_size // 1024**2)
    proc, server = start_server(
        data, work / "serve.log", {"CLOUDFILM_STOW_MAX_PART_MB": str(limit_mb)}
    )
    try:
        token = server.token()
        time.sleep(2.0)  # settle: the gateway's children and the journal's first segments
        pids = _children(proc.pid)
        idle = tree_rss_mb(proc.pid)
        gateway_idle = {p: _status(p, "VmRSS") for p in pids}
        base = (
            f"{server.base}/dicom-web/studies/{ds.StudyInstanceUID}/series/"
            f"{ds.SeriesInstanceUID}/instances/{ds.SOPInstanceUID}"
        )

        def retrievable() -> bool:
            if any((data / "spool" / "failed").glob("*.reason")):
                raise RuntimeError(f"the gateway gave the instance up (see {work}/serve.log)")
            try:
                _get(f"{base}/frames/1", token)
            except OSError:
                return False
            return True

        nan = float("nan")
        ready = first_frame = whole_s = nan
        whole = b""
        with PeakMeter(proc.pid) as meter:
            t0 = time.perf_counter()
            seconds = storescu(server.dicom_port, server.ae, path)
            try:
                _until(retrievable, ready_timeout_s)
            except (TimeoutError, RuntimeError) as exc:
                print(f"CloudFilm: not retrievable: {exc}", file=sys.stderr)
            else:
                ready = time.perf_counter() - t0
                t1 = time.perf_counter()
                _get(f"{base}/frames/{int(ds.NumberOfFrames)}", token)
                first_frame = time.perf_counter() - t1
            time.sleep(1.0)
            ingest_peak = meter.peak
            if ready == ready:  # retrievable: the whole instance through WADO-RS
                t2 = time.perf_counter()
                whole = _get(
                    base, token, 'multipart/related; type="application/dicom"; transfer-syntax=*'
                )
                whole_s = time.perf_counter() - t2
                time.sleep(1.0)
        hwm = {p: _status(p, "VmHWM") for p in pids}
        # the DICOM gateway process: the child that listens for C-STORE (its cmdline: spawn)
        gateway = max(
            (p for p in pids if p != proc.pid and "spawn_main" in _cmdline(p)),
            key=lambda p: hwm[p] - gateway_idle.get(p, 0.0),
            default=proc.pid,
        )
        return {
            "s": seconds,
            "idle": idle,
            "peak_above_idle": meter.peak - idle,
            "ingest_peak_above_idle": ingest_peak - idle,
            "gateway_idle": gateway_idle.get(gateway, 0.0),
            "gateway_hwm_above_idle": hwm[gateway] - gateway_idle.get(gateway, 0.0),
            "main_hwm": hwm[proc.pid],
            "ready_s": ready,
            "first_frame_ms": first_frame * 1000,
            "whole_s": whole_s,
            "whole_mb": len(whole) / 1e6,
        }
    finally:
        stop_server(proc)


def _cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_text().replace("\0", " ")
    except OSError:
        return ""


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--mb", type=int, default=1024)
    ap.add_argument("--max-peak-mb", type=float, default=0.0)
    ap.add_argument(
        "--ready-timeout",
        type=float,
        default=600.0,
        help="seconds to wait for CloudFilm to serve the instance (then reported as nan)",
    )
    ap.add_argument("--keep", action="store_true", help="keep the work directory")
    ap.add_argument("--no-orthanc", action="store_true", help="leave Orthanc out (quick runs)")
    args = ap.parse_args()
    from bench.ingest_compare import ensure_netns

    ensure_netns()
    subprocess.run(["ip", "link", "set", "lo", "up"], check=False, capture_output=True)
    os.environ.setdefault("NUMBA_CACHE_DIR", str(ROOT / ".venv" / "numba-cache"))
    work = Path(tempfile.mkdtemp(prefix="cloudfilm-large-"))
    try:
        path = make_cine(work, args.mb)
        size_mb = path.stat().st_size / 1e6
        print(f"instance: {path.name}, {size_mb:.0f} MB")
        scp = run_storescp(work, path)
        orthanc = None if args.no_orthanc else run_orthanc(work, path)
        cf = run_cloudfilm(work, path, args.ready_timeout)
        scp_rate = size_mb / scp["s"]
        orthanc_rate = size_mb / orthanc["s"] if orthanc else float("nan")
        cf_rate = size_mb / cf["s"]
        print("| receiver | MB/s | peak RSS above idle (MB) | idle RSS (MB) | retrievable (s) |")
        print("| --- | --- | --- | --- | --- |")
        print(
            f"| storescp +B | {scp_rate:.0f} | {scp['peak_above_idle']:.0f} | {scp['idle']:.0f} | |"
        )
        if orthanc:
            print(
                f"| Orthanc (default) | {orthanc_rate:.0f} ({orthanc_rate / scp_rate:.2f}x "
                f"storescp) | {orthanc['peak_above_idle']:.0f} (VmHWM {orthanc['hwm']:.0f}) | "
                f"{orthanc['idle']:.0f} | {orthanc['ready_s']:.1f} |"
            )
        else:
            print("| Orthanc | not measured (not installed) | | | |")
        print(
            f"| CloudFilm (whole stack) | {cf_rate:.0f} ({cf_rate / scp_rate:.2f}x storescp, "
            f"{cf_rate / orthanc_rate:.2f}x Orthanc) | "
            f"{cf['peak_above_idle']:.0f} | {cf['idle']:.0f} | {cf['ready_s']:.1f} |"
        )
        print(
            f"| CloudFilm, until the first frame is served | | "
            f"{cf['ingest_peak_above_idle']:.0f} | | |"
        )
        print(
            f"| CloudFilm gateway process | | {cf['gateway_hwm_above_idle']:.0f} (VmHWM) | "
            f"{cf['gateway_idle']:.0f} | |"
        )
        if orthanc:
            print(
                f"CloudFilm / Orthanc: peak RSS above idle "
                f"{cf['peak_above_idle'] / max(orthanc['peak_above_idle'], 1.0):.2f}x, "
                f"seconds until retrievable {cf['ready_s'] / orthanc['ready_s']:.2f}x"
            )
        print(
            f"retrievable {cf['ready_s']:.1f} s after storescu started; last frame through "
            f"WADO-RS frames {cf['first_frame_ms']:.1f} ms; whole instance "
            f"({cf['whole_mb']:.0f} MB) through WADO-RS in {cf['whole_s']:.1f} s; "
            f"main process VmHWM {cf['main_hwm']:.0f} MB"
        )
        if args.max_peak_mb and cf["peak_above_idle"] > args.max_peak_mb:
            print(f"FAIL: peak {cf['peak_above_idle']:.0f} MB above idle > {args.max_peak_mb}")
            return 1
        return 0
    finally:
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())

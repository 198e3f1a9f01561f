"""The region's wire, side by side in one run: a modality → `cloudfilm gateway run` → HTTP →
`cloudfilm cloud`, against Orthanc A forwarding to Orthanc B (/work/shared/lab/orthanc_forward.sh
or scripts' copy: OnStoredInstance → SendToModality).

    .venv/bin/python bench/region_ingest.py [--slices 300] [--orthanc-script PATH]
                                            [--uplink-mbit 100 --uplink-delay-ms 20]
                                            [--compression jpeg-ls,htj2k] [--repeat 3]

DCMTK storescu (TCP_NODELAY=1) sends the synthetic CT over one association. Reported: inst/s at
the modality (the gateway's Success is durable: journal + fdatasync), the bytes that crossed the
wire (the parts the cloud received, after the gateway's lossless edge compression) against the
raw files, and the seconds from the last Success until the whole study is queryable at the
cloud (QIDO-RS lists every instance) and the first slice's rendered frame is served. Loopback
only, in a private network namespace when run as root (as bench/ingest_compare.py does).

With ``--uplink-mbit`` the gateway reaches the cloud through an emulated WAN link instead of
straight over loopback: :class:`Link`, a TCP relay on 127.0.0.1 that gives each direction its
own ``--uplink-mbit`` of bandwidth (serialisation at that rate, a bounded bottleneck queue, so
TCP's flow control works as over a real link) and ``--uplink-delay-ms`` of one-way delay (the
kernel here has no netem qdisc). The bench's own queries go to the cloud directly (a viewer
near the cloud). Reported besides: the seconds from the last Success until the study is
viewable (every instance queryable and the first rendered frame served) against the ideal,
the bytes that crossed the link divided by its rate (every byte must cross it, and the
modality sends faster than the link carries), and their ratio.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import itertools
import json
import os
import re
import shutil
import socket
import statistics
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections import deque
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.ingest_compare import ROOT, WORK, ensure_netns, prepare_study, send, stop

CLI = (sys.executable, "-m", "cloudfilm.cli")
ORTHANC_SCRIPT = Path("/work/shared/lab/orthanc_forward.sh")


def _get(url: str, token: str) -> tuple[int, bytes]:
    req = urllib.request.Request(url, headers={"Authorization": f"Bearer {token}"})
    try:
        with urllib.request.urlopen(req, timeout=30) as r:
            return r.status, r.read()
    except urllib.error.HTTPError as e:
        return e.code, e.read()


def _ready(proc: subprocess.Popen[str], pattern: str) -> re.Match[str]:
    assert proc.stdout is not None
    for line in proc.stdout:
        if m := re.match(pattern, line):
            return m
    raise RuntimeError(f"{proc.args!r} exited before it was ready")


def _tree_cpu_s(pid: int) -> float:
    """CPU seconds (user + system) used so far by a process and its live descendants."""
    total = 0.0
    todo = [pid]
    tick = os.sysconf("SC_CLK_TCK")
    while todo:
        p = todo.pop()
        try:
            fields = Path(f"/proc/{p}/stat").read_text().rsplit(")", 1)[1].split()
            total += (int(fields[11]) + int(fields[12])) / tick
            for task in Path(f"/proc/{p}/task").iterdir():
                todo += [int(c) for c in (task / "children").read_text().split()]
        except (OSError, ValueError, IndexError):
            continue  # gone meanwhile
    return total


def _cli(*args: str) -> str:
    done = subprocess.run([*CLI, *args], capture_output=True, text=True, check=True, cwd=ROOT)
    return done.stdout.strip()


class Link:
    """A full-duplex WAN link emulated in user space: connections to ``127.0.0.1:port`` are
    relayed to ``target_port``; each direction carries ``mbit`` Mbit/s in all, shared by every
    connection (a chunk leaves the bottleneck once the ones before it, of any connection, have,
    at that rate) and delivers ``delay_ms`` after it left. Each connection may queue at most
    one bandwidth-delay product plus 256 KiB at the bottleneck: a sender faster than the link
    waits on its socket, as behind a router. Runs its own event loop in a thread;
    ``bytes_up`` counts what crossed towards ``target_port``."""

    def __init__(self, target_port: int, mbit: float, delay_ms: float) -> None:
        self.target_port = target_port
        self.rate = mbit * 1e6 / 8  # bytes per second
        self.delay = delay_ms / 1000
        self.queue_bytes = int(self.rate * self.delay) + 256 * 1024
        self._free_at = {True: 0.0, False: 0.0}
        """When each direction's bottleneck has sent everything queued before (its connections
        share it)."""
        self.bytes_up = 0
        self.port = 0
        self._loop = asyncio.new_event_loop()
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True, name="wan-link")

    def __enter__(self) -> Link:
        self._thread.start()
        if not self._ready.wait(10):
            raise RuntimeError("the link emulator did not start")
        return self

    def __exit__(self, *exc: object) -> None:
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)

    def _run(self) -> None:
        asyncio.set_event_loop(self._loop)
        server = self._loop.run_until_complete(
            asyncio.start_server(self._relay, "127.0.0.1", 0, limit=1 << 20)
        )
        self.port = int(server.sockets[0].getsockname()[1])
        self._ready.set()
        try:
            self._loop.run_forever()
        finally:
            server.close()
            self._loop.close()

    async def _relay(self, down_r: asyncio.StreamReader, down_w: asyncio.StreamWriter) -> None:
        try:
            up_r, up_w = await asyncio.open_connection("127.0.0.1", self.target_port)
        except OSError:
            down_w.close()
            return
        await asyncio.gather(
            self._direction(down_r, up_w, upstream=True),
            self._direction(up_r, down_w, upstream=False),
            return_exceptions=True,
        )
        for w in (up_w, down_w):
            w.close()

    async def _direction(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, *, upstream: bool
    ) -> None:
        loop = asyncio.get_running_loop()
        held: deque[tuple[float, bytes]] = deque()  # (delivery time, chunk)
        queued = 0
        changed = asyncio.Event()
        done = False

        async def deliver() -> None:
            nonlocal queued
            while True:
                while not held:
                    if done:
                        if writer.can_write_eof():
                            writer.write_eof()
                        return
                    changed.clear()
                    await changed.wait()
                at, chunk = held[0]
                wait = at - loop.time()
                if wait > 0:
                    await asyncio.sleep(wait)
                held.popleft()
                writer.write(chunk)
                await writer.drain()
                queued -= len(chunk)
                changed.set()

        sender = asyncio.ensure_future(deliver())
        try:
            while chunk := await reader.read(64 * 1024):
                while queued >= self.queue_bytes:  # the bottleneck's buffer is full
                    changed.clear()
                    await changed.wait()
                # one bottleneck per direction, shared by every connection (a real uplink)
                start = max(loop.time(), self._free_at[upstream])
                self._free_at[upstream] = start + len(chunk) / self.rate
                held.append((self._free_at[upstream] + self.delay, chunk))
                queued += len(chunk)
                if upstream:
                    self.bytes_up += len(chunk)
                changed.set()
        finally:
            done = True
            changed.set()
            await sender


def cloudfilm_region(
    files: list[Path],
    work: Path,
    link: tuple[float, float] | None = None,
    compression: str = "",
) -> dict[str, float]:
    import pydicom

    cloud_dir, gw_dir = work / "cloud", work / "gateway"
    gw_dir.mkdir(parents=True, mode=0o700)
    gateway = cloud = None
    with contextlib.ExitStack() as stack:
        try:
            wan = None
            http_port = 0
            env = dict(os.environ)
            if link is not None:
                # the gateway reaches the cloud only through the link, and its credential's
                # audience is the URL it reaches the cloud by: the cloud's public URL
                with socket.socket() as probe:
                    probe.bind(("127.0.0.1", 0))
                    http_port = probe.getsockname()[1]
                wan = stack.enter_context(Link(http_port, *link))
                env["CLOUDFILM_PUBLIC_BASE_URL"] = f"http://127.0.0.1:{wan.port}"
            cloud = subprocess.Popen(
                [*CLI, "cloud", "--data", str(cloud_dir), "--http", f"127.0.0.1:{http_port}"],
                stdout=subprocess.PIPE,
                stderr=subprocess.DEVNULL,
                text=True,
                cwd=ROOT,
                env=env,
            )
            url = _ready(cloud, r"ready: cloud http (\S+)")[1]  # its public URL
            gateway_url = url
            if wan is not None:  # the bench itself asks the cloud directly
                url = f"http://127.0.0.1:{http_port}"
            _cli("hospitals", "add", "H1", "--name", "H1", "--data", str(cloud_dir))
            _cli("users", "add", "bench.clin", "--hospital", "H1", "--role", "clinician",
                 "--data", str(cloud_dir))  # fmt: skip
            token = _cli("token", "--data", str(cloud_dir), "--hospital", "H1",
                         "--role", "clinician", "--subject", "bench.clin")  # fmt: skip
            cred = work / "cred.json"
            _cli("gateway", "credential", "--data", str(cloud_dir), "--hospital", "H1",
                 "--out", str(cred), "--cloud-url", gateway_url)  # fmt: skip
            gw_env = dict(os.environ)
            if compression:
                gw_env["CLOUDFILM_UPLOAD_COMPRESSION"] = compression
            gateway = subprocess.Popen(
                [*CLI, "gateway", "run", "--data", str(gw_dir), "--dicom", "127.0.0.1:0",
                 "--ae", "GATEWAY", "--cloud", gateway_url, "--credential", str(cred)],
                stdout=subprocess.PIPE,
                stderr=subprocess.DEVNULL,
                text=True,
                cwd=ROOT,
                env=gw_env,
            )  # fmt: skip
            port = int(_ready(gateway, r"ready: gateway \S+ dicom \S+@[\d.]+:(\d+)")[1])
            first = pydicom.dcmread(files[0], stop_before_pixels=True)
            study = f"{url}/dicom-web/studies/{first.StudyInstanceUID}"
            frame = f"{study}/series/{first.SeriesInstanceUID}/instances/{first.SOPInstanceUID}"
            up_before = wan.bytes_up if wan else 0  # the gateway's start-up requests
            t_start = time.perf_counter()
            send_s = send("GATEWAY", port, [files])
            t_success = time.perf_counter()
            cpu_at_success = (_tree_cpu_s(gateway.pid), _tree_cpu_s(cloud.pid))
            up_at_success = wan.bytes_up if wan else 0
            queryable = rendered = 0.0
            deadline = t_success + 600
            count_url = f"{url}/dicom-web/studies?StudyInstanceUID={first.StudyInstanceUID}"
            while time.perf_counter() < deadline:
                # the study's instance count (one row) until it is complete, then the whole
                # list once: listing 300 instances every 20 ms would load the cloud itself
                status, body = _get(count_url, token)
                rows = json.loads(body) if status == 200 else []
                count = int(rows[0]["00201208"]["Value"][0]) if rows else 0
                if count >= len(files):
                    status, body = _get(f"{study}/instances?limit={len(files) + 1}", token)
                    if status == 200 and len(json.loads(body)) >= len(files):
                        queryable = time.perf_counter() - t_success
                        break
                time.sleep(0.02)
            while time.perf_counter() < deadline:
                status, _ = _get(f"{frame}/frames/1/rendered", token)
                if status == 200:
                    rendered = time.perf_counter() - t_success
                    break
                time.sleep(0.02)
            if not (queryable and rendered):
                raise RuntimeError(
                    f"the study was not viewable in the cloud within 600 s "
                    f"(queryable {queryable:.2f} s, rendered {rendered:.2f} s)"
                )
            cpu_gateway = _tree_cpu_s(gateway.pid) - cpu_at_success[0]
            cpu_cloud = _tree_cpu_s(cloud.pid) - cpu_at_success[1]
            with urllib.request.urlopen(f"{url}/metrics") as r:
                metrics = r.read().decode()
            m = re.search(r'cloudfilm_ingest_received_bytes_total\{hospital="H1"\} (\d+)', metrics)
            wire = int(m[1]) if m else 0
            raw = sum(p.stat().st_size for p in files)
            out = {
                "inst_s": len(files) / send_s,
                "wire_pct": 100 * wire / raw,
                "queryable_s": queryable,
                "rendered_s": rendered,
                "send_s": t_success - t_start,
                "cpu_gateway_s": cpu_gateway,
                "cpu_cloud_s": cpu_cloud,
            }
            if wan is not None:
                out["link_bytes"] = wan.bytes_up - up_before
                out["link_bytes_before_success"] = up_at_success - up_before
                out["ideal_s"] = out["link_bytes"] / wan.rate
            return out
        finally:
            for proc in (gateway, cloud):
                if proc is not None:
                    stop(proc)  # type: ignore[arg-type]


def orthanc_forward(study: Path, script: Path) -> tuple[float, float] | str:
    """Orthanc A's ingest rate (inst/s) and B's completion after A's last Success (s), or
    why they were not measured."""
    if not script.is_file() or shutil.which("Orthanc") is None:
        return "Orthanc A → B: not measured (no Orthanc or no script)"
    done = subprocess.run(
        ["bash", str(script), str(study)],
        capture_output=True,
        text=True,
        env={**os.environ, "CF_NETNS": os.environ.get("CLOUDFILM_BENCH_NETNS", "")},
        timeout=900,
    )
    line = (done.stdout.strip().splitlines() or [done.stderr[-300:]])[-1]
    m = re.search(r"ingest ([\d.]+) inst/s .* B complete ([\d.]+) s", line)
    return (float(m[1]), float(m[2])) if m else f"Orthanc A → B: {line}"


def _settle() -> None:
    """Let the previous run's deletions and writeback reach the disk before the next run
    (its fdatasyncs would otherwise wait behind them)."""
    os.sync()
    time.sleep(1.0)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--slices", type=int, default=300)
    ap.add_argument("--orthanc-script", type=Path, default=ORTHANC_SCRIPT)
    ap.add_argument(
        "--uplink-mbit",
        type=float,
        default=0.0,
        help="also run the region through an emulated WAN link of this rate (Mbit/s)",
    )
    ap.add_argument("--uplink-delay-ms", type=float, default=20.0, help="one-way delay")
    ap.add_argument(
        "--compression",
        default="",
        help="the gateway's upload_compression values to run, comma-separated "
        "(default: its configured default only)",
    )
    ap.add_argument("--repeat", type=int, default=1, help="runs of each configuration")
    args = ap.parse_args()
    ensure_netns()
    files = prepare_study(args.slices)
    work = WORK / "region"
    runs: list[tuple[str, tuple[float, float] | None]] = [("loopback", None)]
    if args.uplink_mbit:
        link = (args.uplink_mbit, args.uplink_delay_ms)
        runs.append((f"{args.uplink_mbit:g} Mbit/s, {args.uplink_delay_ms:g} ms uplink", link))
    raw_mb = sum(p.stat().st_size for p in files) / 1e6
    print(f"study: {len(files)} CT slices, {raw_mb:.0f} MB raw, storescu TCP_NODELAY=1")
    codecs = [c.strip() for c in args.compression.split(",") if c.strip()] or [""]
    configs = list(itertools.product(runs, codecs))
    results: dict[int, list[dict[str, float]]] = {n: [] for n in range(len(configs))}
    orthanc: list[tuple[float, float]] = []
    orthanc_note = ""
    for _ in range(args.repeat):  # interleaved: the machine's noise falls on every config
        for n, ((_name, link_args), codec) in enumerate(configs):
            shutil.rmtree(work, ignore_errors=True)
            work.mkdir(parents=True)
            _settle()
            try:
                results[n].append(cloudfilm_region(files, work, link_args, codec))
            finally:
                shutil.rmtree(work, ignore_errors=True)
        _settle()
        anchor = orthanc_forward(files[0].parent, args.orthanc_script)
        if isinstance(anchor, str):
            orthanc_note = anchor
        else:
            orthanc.append(anchor)
    if args.repeat > 1:
        print(f"medians of {args.repeat} interleaved runs (viewable: min-max)")
    for n, ((name, _link), codec) in enumerate(configs):
        r = {key: statistics.median(run[key] for run in results[n]) for key in results[n][0]}
        views = [max(run["queryable_s"], run["rendered_s"]) for run in results[n]]
        spread = f" (viewable {min(views):.2f}-{max(views):.2f} s)" if len(views) > 1 else ""
        label = f"{name}, {codec}" if codec else name
        ratio = ""
        if len(orthanc) == len(results[n]):  # each run against the anchor of its round
            ratios = [run["inst_s"] / o[0] for run, o in zip(results[n], orthanc, strict=True)]
            ratio = f" ({statistics.median(ratios):.2f}x Orthanc A's, {min(ratios):.2f}-"
            ratio += f"{max(ratios):.2f}x)" if len(ratios) > 1 else ")"
            ratio = ratio.replace("-)", ")")
        print(
            f"CloudFilm gateway → HTTP → cloud, {label}: {r['inst_s']:.0f} inst/s at the "
            f"modality{ratio}; wire {r['wire_pct']:.0f} % of raw; queryable "
            f"{r['queryable_s']:.2f} s and first rendered frame {r['rendered_s']:.2f} s after "
            f"the last Success{spread}; "
            f"CPU meanwhile: gateway {r['cpu_gateway_s']:.2f} s, cloud {r['cpu_cloud_s']:.2f} s"
        )
        if "ideal_s" in r:
            viewable = statistics.median(views)
            print(
                f"  over the link: {r['link_bytes'] / 1e6:.1f} MB crossed it (requests, "
                f"parts, headers), {r['link_bytes_before_success'] / 1e6:.1f} MB of it before "
                f"the last Success; ideal {r['ideal_s']:.2f} s at its rate; the modality sent "
                f"for {r['send_s']:.2f} s; viewable {viewable:.2f} s after the last Success, "
                f"{r['send_s'] + viewable:.2f} s after the first byte: "
                f"{viewable / r['ideal_s']:.2f}x ideal from the last Success, "
                f"{(r['send_s'] + viewable) / r['ideal_s']:.2f}x from the first byte "
                f"(target ≤ 1.2x)"
            )
    if orthanc:
        rates = [o[0] for o in orthanc]
        print(
            f"Orthanc A forwarding to B per instance (Lua), one run per round: ingest "
            f"{statistics.median(rates):.1f} inst/s at A ({min(rates):.1f}-{max(rates):.1f}); "
            f"B complete {statistics.median(o[1] for o in orthanc):.2f} s after the last "
            f"Success at A"
        )
    if orthanc_note:
        print(orthanc_note)
    return 0


if __name__ == "__main__":
    sys.exit(main())

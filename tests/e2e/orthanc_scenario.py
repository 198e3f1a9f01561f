"""Run inside a private network namespace (``unshare -n``): a real Orthanc on loopback, filled
with a synthetic study, backfilled into a CloudFilm data directory twice (the second run finds
new instances and resumes past the old ones). Prints a JSON report on stdout."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from cloudfilm.synth import synthesize_study

PORT = 8042


def upload(paths: list[Path]) -> None:
    for p in paths:
        req = urllib.request.Request(
            f"http://127.0.0.1:{PORT}/instances", data=p.read_bytes(), method="POST"
        )
        with urllib.request.urlopen(req, timeout=30) as r:
            assert r.status == 200


def backfill(data: Path) -> tuple[str, str]:
    """The backfill's (stdout, stderr)."""
    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "cloudfilm.cli",
            "gateway",
            "backfill",
            "--orthanc",
            f"http://127.0.0.1:{PORT}",
            "--data",
            str(data),
            "--batch",
            "2",
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    if out.returncode != 0:
        raise SystemExit(f"backfill failed ({out.returncode}): {out.stdout}{out.stderr}")
    return out.stdout, out.stderr


def main() -> None:
    work = Path(sys.argv[1])
    subprocess.run(["ip", "link", "set", "lo", "up"], check=True)
    cfg = {
        "Name": "TestOrthanc",
        "StorageDirectory": str(work / "orthanc"),
        "IndexDirectory": str(work / "orthanc"),
        "HttpPort": PORT,
        "DicomServerEnabled": False,
        "RemoteAccessAllowed": False,
        "AuthenticationEnabled": False,
        "Plugins": [],
    }
    (work / "orthanc.json").write_text(json.dumps(cfg))
    log = open(work / "orthanc.log", "w")  # noqa: SIM115 - closed below
    orthanc = subprocess.Popen(["Orthanc", str(work / "orthanc.json")], stdout=log, stderr=log)
    try:
        for _ in range(300):
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{PORT}/system", timeout=1).close()
                break
            except OSError:
                time.sleep(0.1)
        first = synthesize_study(work / "s1", modality="MR", images=5, seed=31)
        upload(first)
        run1, log1 = backfill(work / "data")
        second = synthesize_study(work / "s2", modality="CT", images=3, seed=32)
        upload(second)
        run2, _ = backfill(work / "data")
    finally:
        orthanc.send_signal(signal.SIGTERM)
        orthanc.wait(30)
        log.close()
    files = sorted(str(p) for p in [*first, *second])
    print(json.dumps({"run1": run1, "run2": run2, "log1": log1, "files": files}))


if __name__ == "__main__":
    main()

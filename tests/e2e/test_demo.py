"""`cloudfilm demo` as a newcomer meets it: what it prints is followed to the letter (the patient's
link opened, every printed curl and storescu line run) and does what the printout promises."""

from __future__ import annotations

import json
import os
import re
import shlex
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pydicom

from tests.e2e.conftest import http
from tests.viewer_api.test_film import manifest_of

CLI = [sys.executable, "-m", "cloudfilm.cli"]
FLAGS = ["--http", "127.0.0.1:0", "--dicom", "127.0.0.1:0", "--images", "3"]
ENV = {**os.environ, "PYTHONUTF8": "1"}
CURL = re.compile(r"^  (?:curl: +|Their consents as JSON: )(curl .+)$", re.M)


def _run_demo(data: Path, *extra: str) -> str:
    out = subprocess.run(
        [*CLI, "demo", "--data", str(data), *FLAGS, *extra],
        capture_output=True,
        text=True,
        timeout=300,
        env=ENV,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    return out.stdout


def _start_demo(data: Path, log: Path) -> tuple[subprocess.Popen[str], str]:
    """`cloudfilm demo` serving (no --once): its printout, once it says it serves."""
    with open(log, "w") as log_fh:
        proc = subprocess.Popen(
            [*CLI, "demo", "--data", str(data), *FLAGS],
            stdout=subprocess.PIPE,
            stderr=log_fh,
            text=True,
            env=ENV,
        )
    assert proc.stdout is not None
    lines: list[str] = []
    deadline = time.monotonic() + 300  # a liveness bound
    while time.monotonic() < deadline:
        line = proc.stdout.readline()
        if not line:
            break
        lines.append(line)
        if line.startswith("Serving until Ctrl-C."):
            return proc, "".join(lines)
    _stop(proc)
    raise AssertionError(f"the demo did not come up:\n{''.join(lines)}\n{log.read_text()[-3000:]}")


def _stop(proc: subprocess.Popen[str]) -> None:
    if proc.poll() is None:
        os.kill(proc.pid, signal.SIGTERM)
    try:
        proc.wait(30)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(5)
    if proc.stdout is not None:
        proc.stdout.close()


def _sh(command: str) -> str:
    """A printed command, run as the newcomer would paste it (the venv's cloudfilm: ours)."""
    command = command.replace(".venv/bin/cloudfilm", " ".join(map(shlex.quote, CLI)))
    out = subprocess.run(
        ["bash", "-c", command], capture_output=True, text=True, timeout=120, env=ENV
    )
    assert out.returncode == 0, f"{command}\n{out.stderr[-2000:]}"
    return out.stdout


def _json(command: str) -> Any:
    return json.loads(_sh(command))


def _token(command: str) -> str:
    m = re.search(r"Bearer (\S+?)'", command)
    assert m is not None, command
    return m[1]


def _wait_for_study(base: str, token: str, study_uid: str) -> None:
    deadline = time.monotonic() + 120  # a liveness bound
    while time.monotonic() < deadline:
        r = http(f"{base}/dicom-web/studies?StudyInstanceUID={study_uid}", token=token)
        if r.status == 200 and r.body and r.json():
            return
        time.sleep(0.2)
    raise AssertionError(f"study {study_uid} never reached the cloud")


def test_the_demo_prints_a_region_whose_links_and_commands_do_what_it_says(
    tmp_path: Path,
) -> None:
    proc, out = _start_demo(tmp_path / "data", tmp_path / "demo.log")
    try:
        base = re.search(r"A demo region at (\S+) ", out)[1]  # type: ignore[index]
        link = re.search(r"Cloud film: (\S+)", out)[1]  # type: ignore[index]
        assert "▀" in out or "▄" in out  # the link's QR code, in the terminal
        # the wire: what the gateways sent is what the cloud received, well under the raw size
        wire = re.search(r"went up as ([\d.]+) MB \((\d+) %\)", out)
        assert wire is not None and 0 < int(wire[2]) < 60, out
        metrics = http(f"{base}/metrics").body.decode()
        received = sum(
            float(line.rsplit(" ", 1)[1])
            for line in metrics.splitlines()
            if line.startswith("cloudfilm_ingest_received_bytes_total{")
        )
        assert abs(received / 1e6 - float(wire[1])) <= 0.1, metrics
        commands = CURL.findall(out)
        consents, one_click, report, withheld, glass, dicomweb = commands

        # the patient's own link opens on both hospitals' studies: the patient consented
        page = http(link)
        assert page.status == 200
        studies = manifest_of(page.body.decode())["studies"]
        assert sorted(s["hospital"] for s in studies) == ["华山医院", "瑞金医院"]
        assert [c["grantee_hospital"] for c in _json(consents) if c["active"]] == ["HOSP1"]

        # the clinician at the first hospital: both studies, the other one under consent
        seen = _json(one_click)
        access = {s["hospital_name"]: s["access"] for s in seen["studies"]}
        assert access == {"瑞金医院": "own", "华山医院": "consent"} and seen["withheld"] == 0
        ct = next(s for s in seen["studies"] if s["hospital"] == "HOSP1")
        assert ct["report_status"] == "final" and ct["mutual_recognition"] is True
        assert "演示用合成报告" in http(_json(report)[0]["url"], token=_token(report)).body.decode()

        # the clinician at the second hospital: the CT withheld, then shown by break-glass
        other = _json(withheld)
        assert [s["hospital"] for s in other["studies"]] == ["HOSP2"] and other["withheld"] == 1
        glassed = _json(glass)
        assert {s["hospital"]: s["access"] for s in glassed["studies"]}["HOSP1"] == "break-glass"
        assert "emergency room" in http(f"{link}/api/history").body.decode()
        # attacker: that clinician's valid token opens no CT without break-glass, nor does a
        # forged link
        ct_uid = ct["study_uid"]
        meta = http(f"{base}/dicom-web/studies/{ct_uid}/metadata", token=_token(withheld))
        assert meta.status == 404
        assert http(link[:-2] + ("AA" if not link.endswith("AA") else "BB")).status == 403

        found = _json(dicomweb)
        assert ct_uid in {s["0020000D"]["Value"][0] for s in found}

        # one's own DICOM: synthesised by the printed command, sent by each printed storescu
        synth = re.search(r"No DICOM at hand: (.+)$", out, re.M)[1]  # type: ignore[index]
        sends = re.findall(r"^  (TCP_NODELAY=1 storescu .+?)\s+# to (\S+)$", out, re.M)
        assert [to for _, to in sends] == ["瑞金医院", "华山医院"]
        tokens = {"瑞金医院": _token(one_click), "华山医院": _token(withheld)}
        for n, (send, to) in enumerate(sends):
            own = tmp_path / f"own{n}"
            _sh(synth.replace("YOUR_DIR", str(own)).replace("--seed 7", f"--seed {20 + n}"))
            _sh(send.replace("YOUR_DIR", str(own)))
            study_uid = pydicom.dcmread(next(own.glob("*.dcm"))).StudyInstanceUID
            _wait_for_study(base, tokens[to], str(study_uid))
    finally:
        _stop(proc)
    assert proc.returncode == 0


def test_the_demo_once_runs_again_on_its_data_and_prints_how_to_serve_it(tmp_path: Path) -> None:
    data = tmp_path / "data"
    first = _run_demo(data, "--once")
    assert "--once: the server stops now" in first
    again = _run_demo(data, "--once")  # a second run reuses the region
    serve = re.search(r"^  (\.venv/bin/cloudfilm serve .+)$", again, re.M)[1]  # type: ignore[index]
    link = re.search(r"Cloud film: (\S+)", again)[1]  # type: ignore[index]
    one_click = CURL.findall(again)[1]
    with open(tmp_path / "serve.log", "w") as log_fh:
        proc = subprocess.Popen(
            ["bash", "-c", "exec " + serve.replace(".venv/bin/cloudfilm", shlex.join(CLI))],
            stdout=subprocess.PIPE,
            stderr=log_fh,
            text=True,
            env=ENV,
        )
    try:
        assert proc.stdout is not None
        assert proc.stdout.readline().startswith("ready: http")
        assert http(link).status == 200
        consents = http(f"{link}/api/consents").json()
        assert [c["grantee_hospital"] for c in consents] == ["HOSP1"]  # type: ignore[union-attr]
        seen = _json(one_click)
        assert len(seen["studies"]) == 2
        ct = next(s for s in seen["studies"] if s["hospital"] == "HOSP1")
        reports = http(ct["reports_url"], token=_token(one_click)).json()
        assert len(reports) == 1  # type: ignore[arg-type]
    finally:
        _stop(proc)

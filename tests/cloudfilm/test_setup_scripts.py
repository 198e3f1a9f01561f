"""scripts/venv-check.sh: scripts/setup.sh rebuilds a .venv made by another Python."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
CHECK = ROOT / "scripts" / "venv-check.sh"


def _check(venv: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["bash", str(CHECK), str(venv)], capture_output=True, text=True)


def _fake_venv(root: Path, version: str) -> Path:
    python = root / "bin" / "python"
    python.parent.mkdir(parents=True)
    python.write_text(f"#!/bin/sh\necho {version}\n")
    python.chmod(0o755)
    return root


def test_a_venv_made_by_python_3_12_is_reported_for_rebuilding(tmp_path: Path) -> None:
    done = _check(_fake_venv(tmp_path / "venv", "3.12"))
    assert done.returncode == 1
    assert "made by Python 3.12, CloudFilm needs 3.11: rebuilding" in done.stderr


def test_a_venv_whose_python_does_not_run_is_reported_for_rebuilding(tmp_path: Path) -> None:
    (tmp_path / "venv" / "bin").mkdir(parents=True)
    done = _check(tmp_path / "venv")
    assert done.returncode == 1
    assert "made by Python none" in done.stderr


def test_the_projects_own_venv_passes() -> None:
    done = _check(Path(sys.prefix))
    assert done.returncode == 0, done.stderr

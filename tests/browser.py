"""Debian's headless Chromium, driven by Playwright, for the page tests (and the page bench).

Chromium comes from Debian's package (``scripts/setup.sh --dev`` installs it), not from
Playwright's download; the flags keep it off the network (this machine's network is closed, and
the page must need nothing but the server on 127.0.0.1).
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Any

CHROMIUM = os.environ.get("CLOUDFILM_CHROMIUM", "/usr/bin/chromium")
FLAGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-dev-shm-usage",
]
PHONE = {
    "viewport": {"width": 390, "height": 844},
    "device_scale_factor": 3,
    "is_mobile": True,
    "has_touch": True,
    "locale": "zh-CN",
    "user_agent": (
        "Mozilla/5.0 (Linux; Android 14; Pixel 8) AppleWebKit/537.36 (KHTML, like Gecko) "
        "Chrome/156.0.0.0 Mobile Safari/537.36"
    ),
}


def chromium_path() -> str:
    path = shutil.which(CHROMIUM) or CHROMIUM
    if not Path(path).exists():
        raise RuntimeError(
            f"{CHROMIUM} not found: run scripts/setup.sh --dev (installs Debian's chromium)"
        )
    return path


def launch(playwright: Any) -> Any:
    return playwright.chromium.launch(executable_path=chromium_path(), headless=True, args=FLAGS)


def artifacts_dir(kind: str) -> Path:
    """Where screenshots are kept: $CLOUDFILM_ARTIFACTS or test-artifacts/ in the checkout."""
    default = Path(__file__).parent.parent / "test-artifacts"
    root = Path(os.environ.get("CLOUDFILM_ARTIFACTS", default))
    out = root / kind
    out.mkdir(parents=True, exist_ok=True)
    return out

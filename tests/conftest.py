"""Suite-wide hooks: with ``CLOUDFILM_NO_SKIPS=1`` (set by scripts/test.sh, so in CI) a skipped
test fails the run: every test is expected to run on a machine set up by scripts/setup.sh, and a
skip there means a missing dependency or a broken import, not a passing test.

The tests' own pynetdicom clients (modalities, workstations) run with the same pynetdicom fixes
as the gateway (pacs_gateway.pynetdicom_fixes), whatever the tests imported before them."""

from __future__ import annotations

import os

import pytest

from pacs_gateway import pynetdicom_fixes

pynetdicom_fixes.install()

_skipped: list[str] = []


def pytest_runtest_logreport(report: pytest.TestReport) -> None:
    if report.skipped:
        _skipped.append(report.nodeid)


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    if os.environ.get("CLOUDFILM_NO_SKIPS") == "1" and _skipped and exitstatus == 0:
        session.exitstatus = pytest.ExitCode.TESTS_FAILED


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    if os.environ.get("CLOUDFILM_NO_SKIPS") == "1" and _skipped:
        terminalreporter.write_line(
            f"CLOUDFILM_NO_SKIPS=1: {len(_skipped)} test(s) skipped, which fails the run: "
            + ", ".join(_skipped[:20]),
            red=True,
        )

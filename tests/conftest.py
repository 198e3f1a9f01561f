"""Suite-wide hooks: with ``CLOUDFILM_NO_SKIPS=1`` (set by scripts/test.sh, so in CI) a skipped
test fails the run: every test is expected to run on a machine set up by scripts/setup.sh, and a
skip there means a missing dependency or a broken import, not a passing test."""

from __future__ import annotations

import os

import pytest

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

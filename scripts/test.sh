#!/usr/bin/env bash
# The test command: installs what the tests need (Debian packages, virtualenv), then runs the
# linters, the type checker and the test suite (where a skipped test fails the run: the set-up
# installs everything every test needs). Extra arguments go to pytest.
set -euo pipefail
cd "$(dirname "$(realpath "$0")")/.."
bash scripts/setup.sh --dev
export NUMBA_CACHE_DIR="${NUMBA_CACHE_DIR:-$PWD/.venv/numba-cache}"
echo "== ruff";   .venv/bin/ruff check .
echo "== ruff format --check"; .venv/bin/ruff format --check .
echo "== mypy";   .venv/bin/mypy
echo "== pytest"; CLOUDFILM_NO_SKIPS=1 .venv/bin/python -m pytest "$@"

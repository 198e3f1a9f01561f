#!/usr/bin/env bash
# The main job: installs CloudFilm into .venv, then runs the embedded demo (a small region: see
# README, "The demo").
# Extra arguments go to `cloudfilm demo` (e.g. --once, --http 127.0.0.1:8080).
set -euo pipefail
cd "$(dirname "$(realpath "$0")")/.."
bash scripts/setup.sh
export NUMBA_CACHE_DIR="${NUMBA_CACHE_DIR:-$PWD/.venv/numba-cache}"
exec .venv/bin/cloudfilm demo "$@"

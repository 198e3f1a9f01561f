#!/usr/bin/env bash
# Installs everything CloudFilm needs on a fresh Debian 12 machine (run as root, or with sudo):
#   scripts/setup.sh          the runtime: a virtualenv in .venv with the project installed
#   scripts/setup.sh --dev    also the Debian packages and Python tools the test suite uses
# Idempotent: a second run only checks.
set -euo pipefail
cd "$(dirname "$(realpath "$0")")/.."
dev=0; [ "${1:-}" = "--dev" ] && dev=1

apt_pkgs=()
python3 -c 'import venv, ensurepip' 2>/dev/null || apt_pkgs+=(python3-venv)
if [ "$dev" = 1 ]; then
  command -v storescu >/dev/null || apt_pkgs+=(dcmtk)          # modality / workstation tests
  command -v Orthanc >/dev/null || apt_pkgs+=(orthanc)         # backfill test, ingest bench
  [ -e /usr/share/orthanc/plugins/libOrthancDicomWeb.so ] || apt_pkgs+=(orthanc-dicomweb)  # bench
  command -v openssl >/dev/null || apt_pkgs+=(openssl)         # DICOM TLS test certificates
  command -v ip >/dev/null || apt_pkgs+=(iproute2)             # loopback in private netns
  ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || apt_pkgs+=(postgresql)  # index tests
  [ -x /usr/bin/chromium ] || apt_pkgs+=(chromium)              # cloud-film page tests
  [ -d /usr/share/fonts/opentype/noto ] || apt_pkgs+=(fonts-noto-cjk)  # Chinese on the page
  command -v npm >/dev/null || apt_pkgs+=(npm)                   # fetches the OHIF Viewer
  command -v tinyproxy >/dev/null || apt_pkgs+=(tinyproxy)       # a hospital's HTTPS proxy
fi
if [ "${#apt_pkgs[@]}" -gt 0 ]; then
  echo "setup: installing Debian packages: ${apt_pkgs[*]}"
  SUDO=""; [ "$(id -u)" = 0 ] || SUDO=sudo
  export DEBIAN_FRONTEND=noninteractive
  $SUDO apt-get update -q
  $SUDO apt-get install -y -q --no-install-recommends "${apt_pkgs[@]}"
  # the packages' own services are not wanted: tests start these themselves on loopback
  for svc in orthanc postgresql tinyproxy; do
    if command -v systemctl >/dev/null && systemctl is-active --quiet "$svc" 2>/dev/null; then
      $SUDO systemctl stop "$svc"
    fi
  done
fi

# CloudFilm needs Python 3.11 (pyproject.toml); a .venv made by another Python (or a broken one)
# is rebuilt rather than left to fail every later run
if [ -e .venv ] && ! bash scripts/venv-check.sh .venv; then rm -rf .venv; fi
if [ ! -x .venv/bin/python ]; then
  py=$(command -v python3.11 || command -v python3)
  if [ "$("$py" -c 'import sys; print("%d.%d" % sys.version_info[:2])')" != 3.11 ]; then
    echo "setup: CloudFilm needs Python 3.11; $py is $("$py" --version 2>&1)" >&2
    exit 1
  fi
  echo "setup: creating .venv with $("$py" --version 2>&1)"
  "$py" -m venv .venv
fi
stamp=.venv/.cloudfilm-installed-$dev
if [ ! -f "$stamp" ] || [ pyproject.toml -nt "$stamp" ]; then
  echo "setup: installing CloudFilm and its Python packages into .venv (first time: about a minute)"
  .venv/bin/python -m pip install -q --upgrade pip
  # pip's own lines (each package it collects, downloads, builds and installs), not its chatter
  if [ "$dev" = 1 ]; then extra='.[dev]'; else extra='.'; fi
  set +e
  .venv/bin/python -m pip install -e "$extra" 2>&1 \
    | grep -E --line-buffered -v "^(Requirement already satisfied|  |WARNING: Location '.*' is ignored)"
  status=${PIPESTATUS[0]}
  set -e
  [ "$status" = 0 ] || { echo "setup: pip failed (exit $status), see above" >&2; exit 1; }
  touch "$stamp"
fi
if [ "$dev" = 1 ]; then bash scripts/fetch-ohif.sh; fi   # the OHIF Viewer, for its e2e test
# compile the Numba kernels once into their on-disk cache (later starts only load them)
echo "setup: the image kernels (Numba: compiled the first time, then loaded from .venv/numba-cache)"
.venv/bin/python -c 'from cloudfilm.stack import warm_codecs; warm_codecs()'

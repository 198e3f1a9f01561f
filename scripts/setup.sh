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
fi
if [ "${#apt_pkgs[@]}" -gt 0 ]; then
  echo "setup: installing Debian packages: ${apt_pkgs[*]}"
  SUDO=""; [ "$(id -u)" = 0 ] || SUDO=sudo
  export DEBIAN_FRONTEND=noninteractive
  $SUDO apt-get update -q
  $SUDO apt-get install -y -q --no-install-recommends "${apt_pkgs[@]}"
  # the orthanc package's own service is not wanted: tests start Orthanc themselves on loopback
  for svc in orthanc postgresql; do
    if command -v systemctl >/dev/null && systemctl is-active --quiet "$svc" 2>/dev/null; then
      $SUDO systemctl stop "$svc"
    fi
  done
fi

[ -x .venv/bin/python ] || python3 -m venv .venv
stamp=.venv/.cloudfilm-installed-$dev
if [ ! -f "$stamp" ] || [ pyproject.toml -nt "$stamp" ]; then
  .venv/bin/python -m pip install -q --upgrade pip
  if [ "$dev" = 1 ]; then .venv/bin/python -m pip install -q -e '.[dev]'; else .venv/bin/python -m pip install -q -e .; fi
  touch "$stamp"
fi
if [ "$dev" = 1 ]; then bash scripts/fetch-ohif.sh; fi   # the OHIF Viewer, for its e2e test
# compile the Numba kernels once into their on-disk cache (later starts only load them)
.venv/bin/python -c 'from cloudfilm.stack import warm_codecs; warm_codecs()'

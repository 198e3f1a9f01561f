#!/usr/bin/env bash
# Exit 0 when .venv (or the folder given) runs the Python CloudFilm needs (pyproject.toml's
# requires-python: 3.11); else say why on stderr and exit 1, so scripts/setup.sh rebuilds it.
set -u
venv=${1:-.venv}
want=3.11
[ -e "$venv" ] || { echo "setup: no $venv yet" >&2; exit 1; }
have=$("$venv/bin/python" -c 'import sys; print("%d.%d" % sys.version_info[:2])' 2>/dev/null) || have=none
if [ "$have" != "$want" ]; then
  echo "setup: $venv was made by Python $have, CloudFilm needs $want: rebuilding it" >&2
  exit 1
fi

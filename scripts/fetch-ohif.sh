#!/usr/bin/env bash
# The OHIF Viewer (v3, pre-built: @ohif/app's dist/) for the OHIF end-to-end test, from the npm
# registry, checked against its published sha1, unpacked into .venv/ohif-<version>/dist.
# Idempotent. Needs npm (scripts/setup.sh --dev installs it when missing).
set -euo pipefail
cd "$(dirname "$(realpath "$0")")/.."
version=3.13.2
sha1=26a51ffcc1704c30fff403258a1d7392e9a991f3
dest=.venv/ohif-$version
[ -f "$dest/dist/index.html" ] && exit 0
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
echo "setup: fetching the OHIF Viewer $version (npm @ohif/app, 50 MB)"
(cd "$tmp" && npm pack --silent "@ohif/app@$version" >/dev/null 2>&1)
tgz="$tmp/ohif-app-$version.tgz"
echo "$sha1  $tgz" | sha1sum -c --quiet -
mkdir -p "$dest"
tar xzf "$tgz" -C "$tmp"
mv "$tmp/package/dist" "$dest/dist"

#!/usr/bin/env bash
# Install everything the tests need (./.venv, and as root the Debian packages) and run the whole suite.
# Extra arguments go to pytest, e.g. ./test.sh -k gunicorn
set -euo pipefail
cd "$(dirname "$0")"
PY=${PYTHON:-python3}
need=()
command -v chromium >/dev/null || need+=(chromium)
command -v redis-server >/dev/null || need+=(redis-server)
command -v nginx >/dev/null || need+=(nginx-light)
if [ ${#need[@]} -gt 0 ]; then
  if [ "$(id -u)" = 0 ]; then
    apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q "${need[@]}"
  else
    echo "Missing Debian packages: ${need[*]} (install them as root, then re-run)" >&2; exit 1
  fi
fi
[ -x .venv/bin/python ] || "$PY" -m venv .venv
.venv/bin/pip install -q --disable-pip-version-check -r requirements-dev.txt
exec .venv/bin/python -m pytest "$@"

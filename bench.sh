#!/usr/bin/env bash
# Install what the benchmarks need (./.venv, and as root Debian's nginx-light) and run them all;
# writes docs/bench/results.md and the charts (the committed results: this is how to refresh them).
# Pass --quick for a short smoke run; it writes build/bench/ (git-ignored) and leaves docs/ alone.
set -euo pipefail
cd "$(dirname "$0")"
PY=${PYTHON:-python3}
if ! PATH="$PATH:/usr/sbin:/sbin" command -v nginx >/dev/null && [ "$(id -u)" = 0 ]; then
  apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q nginx-light
fi
[ -x .venv/bin/python ] || "$PY" -m venv .venv
.venv/bin/pip install -q --disable-pip-version-check -r requirements-dev.txt -r bench/requirements.txt
exec .venv/bin/python -m bench.run "$@"

#!/usr/bin/env bash
# Install everything the tests need (./.venv, and as root the Debian packages) and run the whole suite.
# Not root and a Debian package missing: the tests that need it are skipped (CI_REQUIRE_ALL=1 fails them).
# Extra arguments go to pytest (then only that one pass runs), e.g. ./test.sh -k gunicorn or
# ./test.sh -m "not browser"
set -euo pipefail
cd "$(dirname "$0")"
PY=${PYTHON:-python3}
need=()
has() { PATH="$PATH:/usr/sbin:/sbin" command -v "$1" >/dev/null; }  # nginx lives in /usr/sbin
has chromium || need+=(chromium)
has redis-server || need+=(redis-server)
has nginx || need+=(nginx-light)
if [ ${#need[@]} -gt 0 ]; then
  if [ "$(id -u)" = 0 ]; then
    apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q "${need[@]}"
  else
    echo "Missing Debian packages: ${need[*]} (not root, so not installing them); the tests that need them will be skipped." >&2
  fi
fi
[ -x .venv/bin/python ] || "$PY" -m venv .venv
.venv/bin/pip install -q --disable-pip-version-check -r requirements-dev.txt
.venv/bin/python -m pytest "$@"
if [ $# -eq 0 ]; then
  # A full run also repeats the real-server tests (gunicorn, streaming, browser) under the worker class
  # that is not the default, so neither rots.
  echo "--- the real-server tests again with GUNICORN_WORKER_CLASS=gthread ---"
  TEST_WORKER_CLASS=gthread .venv/bin/python -m pytest -q tests/browser tests/test_gunicorn.py tests/test_turns_redis.py \
    tests/test_streaming.py tests/test_operations.py
fi

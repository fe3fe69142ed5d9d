#!/usr/bin/env bash
# Install (into ./.venv) and start the chat app on http://127.0.0.1:8000 with the embedded file store.
# Settings come from the environment or a .env file; see README.md.
set -euo pipefail
cd "$(dirname "$0")"
PY=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$PY" -m venv .venv
.venv/bin/pip install -q --disable-pip-version-check -r requirements.txt
exec .venv/bin/gunicorn wsgi:app -c gunicorn.conf.py "$@"

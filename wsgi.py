"""What gunicorn imports: `gunicorn wsgi:app` (settings in gunicorn.conf.py)."""

import sys

from webapp import create_app
from webapp.settings import SettingsError

try:
    app = create_app()
except SettingsError as exc:
    # One clear line for the operator instead of a traceback. Exit status 3 is gunicorn's
    # "worker failed to boot": the arbiter stops instead of respawning the worker forever.
    print(f"Configuration error: {exc}", file=sys.stderr)
    sys.exit(3)

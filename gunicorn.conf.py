"""gunicorn settings for the chat app: `gunicorn wsgi:app` picks this file up from the working directory.

A chat turn spends seconds to minutes waiting on the model, doing no work. gunicorn's default `sync`
worker would hold one such turn per process, so 2 cores would serve a handful of users. The `gthread`
worker gives each process a pool of threads; a waiting turn costs one mostly idle thread (the GIL is
released while it waits on the socket). Threads rather than gevent: no monkey-patching, `requests` and
the file locks behave as written, and the streaming reader threads are ordinary threads.

Every value can be overridden with the usual GUNICORN_CMD_ARGS or the environment variables below.
"""

import os
import sys

from dotenv import load_dotenv

from webapp.settings import SettingsError, describe, from_env, server_from_env

# Check the app's settings and gunicorn's own once, in the master, so a bad value stops startup with
# one clear line instead of a traceback (or every worker failing to boot with one).
load_dotenv(os.path.join(os.getcwd(), ".env"))
try:
    from_env()
    server = server_from_env()  # BIND, WEB_CONCURRENCY, GUNICORN_THREADS, GUNICORN_GRACEFUL_TIMEOUT
except SettingsError as exc:
    sys.exit(f"Configuration error: {exc}")

bind = server["bind"]
worker_class = "gthread"
# One process per core; all of them share the conversation store and its locks.
workers = server["workers"]
# Turns in flight per process. 2 workers x 512 = 1,024 concurrent turns by default; threads start
# lazily, and a waiting thread costs tens of KB of resident memory (see docs/bench/results.md).
threads = server["threads"]
# The gthread worker heartbeats from its main loop, so a long turn does not trip `timeout`;
# it only catches a stuck process.
timeout = 60
# On restart or shutdown, give in-flight turns this long to finish and be stored before workers are killed.
graceful_timeout = server["graceful_timeout"]
keepalive = 5
accesslog = "-"
# The query string never holds secrets here, but keep the log to method, path, status and time.
access_log_format = '%(h)s "%(m)s %(U)s" %(s)s %(B)s %(M)sms'
# %(U)s is the decoded path: this logger escapes control characters, quotes and non-ASCII bytes as \xNN
# (a %0a cannot forge a log line) and logs /turns/<id> as /turns/… (see webapp/accesslog.py).
# (A custom logger class also means statsd_host no longer switches gunicorn to its statsd logger.)
logger_class = "webapp.accesslog.AccessLogger"
# gunicorn 25.1+ opens a control socket by default at $HOME/.gunicorn/gunicorn.ctl (or
# $XDG_RUNTIME_DIR/gunicorn.ctl): one path shared by every gunicorn this user runs, which each instance
# takes over on start and unlinks on shutdown, whoever owns it. Nothing here uses `gunicornc`, so
# don't open it; the usual signals (HUP, TERM, TTIN/TTOU) still manage the server.
control_socket_disable = True


def post_worker_init(worker):
    """One line per worker saying what it serves (no key or password): model, upstream, store, size."""
    app = worker.wsgi
    worker.log.info(describe(app.config, worker.cfg.workers, worker.cfg.threads, app.instance_path))

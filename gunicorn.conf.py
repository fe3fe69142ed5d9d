"""gunicorn settings for the chat app: `gunicorn wsgi:app` picks this file up from the working directory.

A chat turn spends seconds to minutes waiting on the model, doing no work. gunicorn's default `sync`
worker would hold one such turn per process, so 2 cores would serve a handful of users. The default
here is gevent's worker: each connection and each streaming reader is a greenlet (a few KB) rather
than a thread, with every blocking call (sockets, `time.sleep`, locks) monkey-patched by gunicorn when
the worker starts; Flask, `requests`, `redis` and the file locks are used as written. Measured against
`gthread` in the same run (docs/bench/results.md), it finishes more of 1,000 waiting chats with less
CPU and memory per turn. `GUNICORN_WORKER_CLASS=gthread` selects the thread pool instead (a waiting
turn costs one mostly idle thread; the GIL is released while it waits on the socket); the tests run
under both.

Every value can be overridden with the usual GUNICORN_CMD_ARGS or the environment variables below.
"""

import gc
import os
import sys
import time

from dotenv import load_dotenv

# Only webapp/settings.py (standard library) is imported here, in gunicorn's master: webapp/__init__.py
# imports nothing heavy, so a gevent worker still patches sockets and ssl before Flask, `requests` or
# urllib3 are imported (in the worker, when it loads wsgi:app).
from webapp.settings import SettingsError, describe, from_env, server_from_env

load_dotenv(os.path.join(os.getcwd(), ".env"))
try:
    from_env()
    # BIND, WEB_CONCURRENCY, GUNICORN_THREADS, GUNICORN_WORKER_CLASS, GUNICORN_WORKER_CONNECTIONS,
    # GUNICORN_GRACEFUL_TIMEOUT
    server = server_from_env()
except SettingsError as exc:
    sys.exit(f"Configuration error: {exc}")

bind = server["bind"]
worker_class = server["worker_class"]
worker_connections = server["worker_connections"]
# gthread: a pool of GUNICORN_THREADS threads per process; gevent: one greenlet per connection, at
# most GUNICORN_WORKER_CONNECTIONS (default 1000) per process. gthread also caps its open connections
# (waiting keep-alive ones included) at worker_connections.
# One process per core; all of them share the conversation store and its locks.
workers = server["workers"]
# Turns in flight per process. 2 workers x 512 = 1,024 concurrent turns by default; threads start
# lazily, and a waiting thread costs tens of KB of resident memory (see docs/bench/results.md).
threads = server["threads"]
# The gthread worker heartbeats from its main loop, so a long turn does not trip `timeout`;
# it only catches a stuck process (so does the gevent worker, from its own greenlet).
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


# The garbage collector, per worker once the app is loaded: gc.freeze() moves everything made so far
# (modules, the app, compiled templates) out of every later collection, and a first generation of
# 7,000 allocations instead of 700 collects a tenth as often while a burst of turns allocates.
# Measured over 1,000 streamed turns (./bench.sh --profile, section 4): collection time per worker
# about a third of the default's, and the longest pause a quarter (every stream in the worker waits it out).
GC_THRESHOLD = (7000, 10, 10)


def tune_gc():
    gc.collect()  # what is garbage now would otherwise be frozen with the rest, for good
    gc.freeze()
    gc.set_threshold(*GC_THRESHOLD)


def post_worker_init(worker):
    """One line per worker saying what it serves (no key or password): model, upstream, store, size."""
    tune_gc()
    app = worker.wsgi
    if worker.cfg.worker_class_str == "gevent":
        # A gevent worker has greenlets, not threads: say how many connections each process takes.
        line = describe(app.config, None, None, app.instance_path)
        count = worker.cfg.workers
        line += (f", {count} gevent worker{'' if count == 1 else 's'} × "
                 f"{worker.cfg.worker_connections} connections")
    else:
        line = describe(app.config, worker.cfg.workers, worker.cfg.threads, app.instance_path)
    worker.log.info(line)
    from webapp.factory import ChatApp, startup_warnings  # loaded by now: the worker has built the app

    if isinstance(app, ChatApp):  # (the benchmark's floor app runs under this file too)
        for warning in startup_warnings(app.config):
            worker.log.warning(warning)


def worker_exit(server, worker):
    """On a graceful stop or reload, wait (up to graceful_timeout) for the replies this worker is still
    writing, so each one is stored whole. Not left to the interpreter's join of non-daemon threads:
    under gevent a thread started from a request greenlet inherits daemon=True from its dummy thread,
    and the process would exit under it (webapp/turns/runner.py passes daemon=False too)."""
    turns = sys.modules.get("webapp.turns")
    if turns is None:
        return
    deadline = time.monotonic() + worker.cfg.graceful_timeout
    for running in list(turns.LIVE.values()):
        running.wait(max(0.0, deadline - time.monotonic()))

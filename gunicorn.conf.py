"""gunicorn settings for the chat app: `gunicorn wsgi:app` picks this file up from the working directory.

A chat turn spends seconds to minutes waiting on the model, doing no work. gunicorn's default `sync`
worker would hold one such turn per process, so 2 cores would serve a handful of users. The `gthread`
worker gives each process a pool of threads; a waiting turn costs one mostly idle thread (the GIL is
released while it waits on the socket). Threads rather than gevent: no monkey-patching, `requests` and
the file locks behave as written, and the streaming reader threads are ordinary threads.

`GUNICORN_WORKER_CLASS=gevent` selects gevent's worker instead: each connection and each streaming
reader is a greenlet (a few KB) rather than a thread, with every blocking call (sockets, `time.sleep`,
locks) monkey-patched by gunicorn when the worker starts. See docs/bench/results.md for the two side
by side.

Every value can be overridden with the usual GUNICORN_CMD_ARGS or the environment variables below.
"""

import importlib.util
import os
import sys
import time

from dotenv import load_dotenv

HERE = os.path.dirname(os.path.abspath(__file__))


def _standalone(name):
    """webapp/<name>.py loaded on its own, without running webapp/__init__.py.

    This file runs in gunicorn's master, before any worker forks. Importing `webapp.settings` the
    usual way would import the whole package (Flask, requests, urllib3, which bind `ssl.SSLContext`
    at import time), and the forked gevent worker would inherit them unpatched: gunicorn's gevent
    worker monkey-patches only when it starts, so HTTPS to OpenRouter would then block the worker (or
    recurse in `ssl`). settings.py and accesslog.py import only the standard library and gunicorn;
    the worker imports the real package itself, after patching, when it loads `wsgi:app`."""
    spec = importlib.util.spec_from_file_location(f"_chat_conf_{name}",
                                                  os.path.join(HERE, "webapp", f"{name}.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


_settings = _standalone("settings")
if "webapp" not in sys.modules:
    # gunicorn imports `logger_class` by name in the master: give it accesslog.py without the package
    # (post_fork removes it again, so the worker imports the real package after patching).
    sys.modules["webapp.accesslog"] = _standalone("accesslog")
SettingsError, describe, from_env, server_from_env = (
    _settings.SettingsError, _settings.describe, _settings.from_env, _settings.server_from_env)

WORKER_CLASSES = ("gthread", "gevent")


def _worker_model(env):
    """GUNICORN_WORKER_CLASS and GUNICORN_WORKER_CONNECTIONS, checked like webapp/settings.py's."""
    chosen = env.get("GUNICORN_WORKER_CLASS", "").strip().lower() or "gthread"
    if chosen not in WORKER_CLASSES:
        raise SettingsError(f"GUNICORN_WORKER_CLASS must be 'gthread' or 'gevent', "
                            f"got {env.get('GUNICORN_WORKER_CLASS')!r}")
    if chosen == "gevent":
        # Installed? (Not imported here: patching is the worker's job.) gunicorn 27's gevent worker
        # also checks gevent's version with `packaging`.
        for package in ("gevent", "packaging"):
            if importlib.util.find_spec(package) is None:
                raise SettingsError(f"GUNICORN_WORKER_CLASS=gevent needs the '{package}' package "
                                    f"(pip install -r requirements.txt)")
    raw = env.get("GUNICORN_WORKER_CONNECTIONS", "").strip()
    connections = 1000
    if raw:
        try:
            connections = int(raw)
        except ValueError:
            raise SettingsError(f"GUNICORN_WORKER_CONNECTIONS must be a whole number, got {raw!r}") from None
        if connections < 1:
            raise SettingsError(f"GUNICORN_WORKER_CONNECTIONS must be at least 1, got {connections}")
    return chosen, connections

# Check the app's settings and gunicorn's own once, in the master, so a bad value stops startup with
# one clear line instead of a traceback (or every worker failing to boot with one).
load_dotenv(os.path.join(os.getcwd(), ".env"))
try:
    from_env()
    server = server_from_env()  # BIND, WEB_CONCURRENCY, GUNICORN_THREADS, GUNICORN_GRACEFUL_TIMEOUT
    worker_class, worker_connections = _worker_model(os.environ)
except SettingsError as exc:
    sys.exit(f"Configuration error: {exc}")

bind = server["bind"]
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


def post_worker_init(worker):
    """One line per worker saying what it serves (no key or password): model, upstream, store, size."""
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


def post_fork(server, worker):
    """In the new worker, before it patches (gevent) and loads the app: forget the stand-alone
    webapp.accesslog the master loaded, so `import webapp` brings in the whole package for real."""
    module = sys.modules.get("webapp.accesslog")
    if module is not None and module.__name__.startswith("_chat_conf_"):
        del sys.modules["webapp.accesslog"]


def worker_exit(server, worker):
    """On a graceful stop or reload, wait (up to graceful_timeout) for the replies this worker is still
    writing, so each one is stored whole. Not left to the interpreter's join of non-daemon threads:
    under gevent a thread started from a request greenlet inherits daemon=True from its dummy thread,
    and the process would exit under it (webapp/turns.py should pass daemon=False too)."""
    turns = sys.modules.get("webapp.turns")
    if turns is None:
        return
    deadline = time.monotonic() + worker.cfg.graceful_timeout
    for relay in list(turns.LIVE.values()):
        relay.wait(max(0.0, deadline - time.monotonic()))

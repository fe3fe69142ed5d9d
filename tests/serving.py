"""Start the real app under a real gunicorn (the production config) for integration and browser tests."""

import os
import shutil
import socket
import subprocess
import sys
import time

import re
from urllib.parse import urlsplit

import requests

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


# Where Debian puts programs that a non-root PATH often leaves out (nginx lives in /usr/sbin).
SYSTEM_DIRS = "/usr/local/sbin:/usr/sbin:/sbin"


def find_program(name):
    """The path of the program `name` (on PATH, or in the sbin directories), or None."""
    return shutil.which(name) or shutil.which(name, path=SYSTEM_DIRS)


def require_program(name, package):
    """The path of the program `name`, from Debian's `package`, for a test that needs it.

    Missing, the test is skipped with the reason, so a contributor without root can run the rest;
    with CI_REQUIRE_ALL=1 (CI sets it) it fails with the same reason instead, so nothing is skipped
    silently there."""
    import pytest  # here, not at the top: bench/ imports this module without pytest

    path = find_program(name)
    if path:
        return path
    reason = f"{name} is not installed (apt-get install {package} as root, or run ./test.sh as root)"
    if os.environ.get("CI_REQUIRE_ALL", "").strip() not in ("", "0"):
        pytest.fail(f"{reason}; CI_REQUIRE_ALL is set, so every test must run", pytrace=False)
    pytest.skip(reason)


def free_port():
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def stop_process(proc, timeout=10):
    """Ask `proc` to stop (SIGTERM), give it `timeout` seconds, then kill it."""
    if proc and proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def served_env(fake, path, secret, **extra):
    """The environment of an app under test: on `fake` upstream, its own store in `path`."""
    return {"OPENROUTER_API_KEY": fake.api_key, "OPENROUTER_BASE_URL": fake.base_url,
            "SECRET_KEY": secret, "SESSION_DIR": str(path / "sessions"),
            "OPENROUTER_READ_TIMEOUT": "20", **extra}


class Gunicorn:
    """`gunicorn wsgi:app -c gunicorn.conf.py` in a child process; its output goes to `log_path`."""

    def __init__(self, env, log_path, workers=2, threads=None, worker_class=None, app="wsgi:app",
                 config="gunicorn.conf.py", cwd=ROOT):
        self.port, self.cwd = free_port(), cwd  # cwd: another checkout of the app (bench/ab.py)
        # The benchmarks also serve bench.floor_app:app, and with bench/gc_probe.conf.py
        self.app, self.config = app, config
        self.url = f"http://127.0.0.1:{self.port}"
        # Every test server is reached from one address by many tests: the per-address limit has
        # tests of its own (tests pass RATE_LIMIT_PER_ADDRESS to override this).
        self.env = {"PATH": os.environ["PATH"], "BIND": f"127.0.0.1:{self.port}",
                    "HOME": os.environ.get("HOME", "/root"), "RATE_LIMIT_PER_ADDRESS": "off", **env}
        if workers:  # None: gunicorn.conf.py's own default, as in production
            self.env["WEB_CONCURRENCY"] = str(workers)
        if threads:
            self.env["GUNICORN_THREADS"] = str(threads)
        # None: gunicorn.conf.py's default (gthread), or TEST_WORKER_CLASS, to run every real-gunicorn
        # test under another worker class (TEST_WORKER_CLASS=gevent ./test.sh).
        worker_class = worker_class or os.environ.get("TEST_WORKER_CLASS")
        if worker_class:
            self.env["GUNICORN_WORKER_CLASS"] = worker_class
        self.log_path = log_path
        self.proc = None

    def start(self, timeout=20):
        self.log = open(self.log_path, "ab")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "gunicorn", self.app, "-c", self.config],
            cwd=self.cwd, env=self.env, stdout=self.log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"gunicorn exited: {self.output()}")
            try:
                requests.get(self.url + "/static/app.css", timeout=1)
                return self
            except (requests.ConnectionError, requests.Timeout):
                # Timeout: the socket is the master's, and a worker still booting on a busy machine
                # has not answered yet; keep waiting until the deadline.
                time.sleep(0.1)
        self.stop()  # not left running behind the failed test
        raise RuntimeError(f"gunicorn did not start: {self.output()}")

    def stop(self):
        stop_process(self.proc, timeout=30)
        if self.proc:
            self.log.close()

    def output(self):
        with open(self.log_path, "rb") as f:
            return f.read().decode(errors="replace")

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.stop()


CSRF_FIELD = re.compile(r'name="csrf_token" value="([^"]+)"')


def csrf_token_in(html):
    match = CSRF_FIELD.search(html)
    return match.group(1) if match else None


class Browser(requests.Session):
    """A cookie jar that posts like the app's own pages do: every POST carries the CSRF token of a page
    it loaded from that server (in the form and in the X-CSRFToken header, as static/app.js does).
    `csrf=False` posts without one, as a forged request would."""

    def __init__(self):
        super().__init__()
        self.tokens = {}

    def token(self, url):
        parts = urlsplit(url)
        base = f"{parts.scheme}://{parts.netloc}"
        if base not in self.tokens:
            self.tokens[base] = csrf_token_in(super().request("GET", base + "/", timeout=30).text)
        return self.tokens[base]

    def request(self, method, url, *args, csrf=True, **kwargs):
        if method.upper() == "POST" and csrf:
            token = self.token(url)
            data = kwargs.get("data")
            if data is None or isinstance(data, dict):
                kwargs["data"] = {"csrf_token": token, **(data or {})}
            kwargs["headers"] = {"X-CSRFToken": token, **(kwargs.get("headers") or {})}
        return super().request(method, url, *args, **kwargs)

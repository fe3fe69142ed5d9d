"""Fixtures: the fake OpenRouter (real HTTP on loopback), an app wired to it, and helpers to read pages."""

import ast
import os
import re
import subprocess
import sys
import textwrap
import time
from html import unescape

import pytest
from flask.testing import FlaskClient

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from tests.fake_openrouter import FakeOpenRouter  # noqa: E402
from tests.serving import Gunicorn, csrf_token_in, free_port, require_program, served_env  # noqa: E402
from webapp import create_app  # noqa: E402

API_KEY = "sk-or-v1-test-0123456789abcdef"


@pytest.fixture(autouse=True)
def histories_never_changed_in_place(monkeypatch):
    """Every in-process test checks that no code edits a loaded history in place (each process
    keeps decoded histories and reuses them while the stored bytes are unchanged)."""
    from webapp.store import Store

    monkeypatch.setattr(Store, "check_decoded", True)


@pytest.fixture(scope="session")
def fake_server():
    with FakeOpenRouter(api_key=API_KEY) as server:
        yield server


@pytest.fixture
def fake(fake_server, request):
    """The fake upstream, reset for this test. Afterwards it checks that the app never sent a request
    the real API would reject (tests about rejections opt out with @pytest.mark.rejections_expected)."""
    fake_server.reset()
    yield fake_server
    if not request.node.get_closest_marker("rejections_expected"):
        assert fake_server.rejections == []


def app_config(fake, tmp_path, **overrides):
    config = {
        "OPENROUTER_API_KEY": fake.api_key,
        "OPENROUTER_BASE_URL": fake.base_url,
        "SESSION_DIR": str(tmp_path / "sessions"),
        "SECRET_KEY": "test-secret",
        "OPENROUTER_READ_TIMEOUT": 5.0,
        "TESTING": True,
        # Every test in this process shares Flask-Limiter's in-memory counters and one address;
        # the limits have tests of their own (test_guards.py).
        "RATE_LIMIT_PER_ADDRESS": None,
    }
    config.update(overrides)
    return config


@pytest.fixture
def make_app(fake, tmp_path):
    """Build an app on the fake; call again with the same tmp_path to 'restart' it."""

    def make(**overrides):
        app = create_app(app_config(fake, tmp_path, **overrides), env={})
        app.test_client_class = PageClient
        return app

    return make


class PageClient(FlaskClient):
    """Flask's test client, posting like the app's own pages: each POST carries the CSRF token of a
    page it loaded (`csrf=False` posts without one, as a forged request would)."""

    def post(self, *args, csrf=True, **kwargs):
        if csrf:
            token = csrf_token_in(self.get("/", follow_redirects=True).get_data(as_text=True))
            data = kwargs.get("data")
            if data is None or isinstance(data, dict):
                kwargs["data"] = {"csrf_token": token, **(data or {})}
            kwargs["headers"] = {"X-CSRFToken": token, **(kwargs.get("headers") or {})}
        return super().post(*args, **kwargs)


@pytest.fixture
def app(make_app):
    return make_app()


@pytest.fixture
def client(app):
    return app.test_client()


def messages(html):
    """The (role, text) pairs a user sees, read from the stable `data-role` hooks."""
    found = re.findall(r'data-role="(user|assistant)">(.*?)</div>', html, re.S)
    # Assistant replies are rendered markdown: compare the text a reader sees, without the tags.
    return [(role, unescape(re.sub(r"<[^>]+>", "", text)).strip()) for role, text in found]


def textarea(html):
    match = re.search(r'<textarea[^>]*name="message"[^>]*>(.*?)</textarea>', html, re.S)
    return unescape(match.group(1)) if match else None


def under_gevent(script, *args):
    """What `script` prints, read as a Python literal: run (with `args` as sys.argv[1:]) in a fresh
    interpreter from the project's root, after gevent's monkey-patching, as in gunicorn's gevent
    worker. Patching this test process would change every test after it."""
    code = "from gevent import monkey; monkey.patch_all()\n" + textwrap.dedent(script)
    out = subprocess.run([sys.executable, "-c", code, *map(str, args)], cwd=ROOT, capture_output=True,
                         text=True, check=True).stdout
    return ast.literal_eval(out)


def alert(html):
    match = re.search(r'role="alert"[^>]*>(.*?)</p>', html, re.S)
    text = unescape(re.sub(r"<[^>]+>", "", match.group(1))).strip() if match else ""
    return text or None  # the alert element is always there, empty and hidden when all is well




@pytest.fixture(scope="module")
def served(fake_server, tmp_path_factory):
    """The app under a real gunicorn on the fake, shared by one test module (its store is fresh)."""
    path = tmp_path_factory.mktemp("served")
    env = served_env(fake_server, path, "served-test", RATE_LIMIT_PER_ADDRESS="off")
    with Gunicorn(env, path / "gunicorn.log") as running:
        yield running


@pytest.fixture(scope="module")
def redis_url(tmp_path_factory):
    """A redis-server of one test module's own, on loopback (skipped, or failed in CI, when missing)."""
    import redis

    binary = require_program("redis-server", "redis-server")
    port = free_port()
    proc = subprocess.Popen([binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "",
                             "--appendonly", "no", "--dir", str(tmp_path_factory.mktemp("redis"))],
                            stdout=subprocess.DEVNULL)
    url = f"redis://127.0.0.1:{port}/0"
    client = redis.Redis.from_url(url)
    for _ in range(100):
        try:
            client.ping()
            break
        except redis.ConnectionError:
            time.sleep(0.05)
    yield url
    proc.terminate()
    proc.wait()

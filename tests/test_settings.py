"""Unit tests of webapp.settings: the checks an operator meets at startup and the startup line."""

import os
import re

import pytest

from webapp.settings import SettingsError, describe, from_env, server_from_env, session_dir


# --- OPENROUTER_BASE_URL ---------------------------------------------------------------------------

@pytest.mark.parametrize("bad", ["not-a-url", "ftp://x", "http://", "https://", "openrouter.ai/api/v1",
                                 "//openrouter.ai/api/v1", "https:/openrouter.ai", "http://:8080/v1",
                                 "https://host:99999/v1", "https://host:port/v1",
                                 "https://open router.ai/api/v1", "mailto:x@example.com",
                                 "https://openrouter.ai/api/v1?x=1", "https://openrouter.ai/api/v1#v"])
def test_a_bad_base_url_stops_startup_with_a_sentence_naming_it(bad):
    with pytest.raises(SettingsError) as caught:
        from_env({"OPENROUTER_BASE_URL": bad})
    message = str(caught.value)
    assert message == ("OPENROUTER_BASE_URL must be an http(s)://host URL such as "
                       f"https://openrouter.ai/api/v1, got {bad!r}")
    assert "\n" not in message


@pytest.mark.parametrize("given, used", [
    ("", "https://openrouter.ai/api/v1"),
    ("   ", "https://openrouter.ai/api/v1"),
    ("https://openrouter.ai/api/v1", "https://openrouter.ai/api/v1"),
    ("https://openrouter.ai/api/v1/", "https://openrouter.ai/api/v1"),
    ("  https://openrouter.ai/api/v1//  ", "https://openrouter.ai/api/v1"),
    ("http://127.0.0.1:8080", "http://127.0.0.1:8080"),
    ("http://127.0.0.1:8080/", "http://127.0.0.1:8080"),
    ("HTTPS://Proxy.Example/v1", "HTTPS://Proxy.Example/v1"),
    ("http://[::1]:9000/api/v1/", "http://[::1]:9000/api/v1"),
    ("http://localhost/api", "http://localhost/api"),
])
def test_a_good_base_url_is_accepted_without_its_trailing_slash(given, used):
    assert from_env({"OPENROUTER_BASE_URL": given})["OPENROUTER_BASE_URL"] == used


# --- gunicorn's variables ------------------------------------------------------------------------

def test_gunicorn_defaults():
    assert server_from_env({}) == {"bind": "127.0.0.1:8000", "workers": os.cpu_count() or 2,
                                   "threads": 512, "worker_class": "gevent", "worker_connections": 1000,
                                   "graceful_timeout": 120, "concurrency": 1000}


def test_the_worker_class_is_gevent_or_gthread():
    gthread = server_from_env({"GUNICORN_WORKER_CLASS": " GThread "})
    assert gthread["worker_class"] == "gthread" and gthread["concurrency"] == 512
    with pytest.raises(SettingsError, match="GUNICORN_WORKER_CLASS must be 'gevent' or 'gthread'"):
        server_from_env({"GUNICORN_WORKER_CLASS": "eventlet"})
    with pytest.raises(SettingsError, match="GUNICORN_WORKER_CONNECTIONS must be a whole number"):
        server_from_env({"GUNICORN_WORKER_CONNECTIONS": "many"})


def test_gunicorn_values_are_read():
    env = {"BIND": " 0.0.0.0:9000 ", "WEB_CONCURRENCY": "3", "GUNICORN_THREADS": " 64",
           "GUNICORN_GRACEFUL_TIMEOUT": "0", "GUNICORN_WORKER_CLASS": "gthread",
           "GUNICORN_WORKER_CONNECTIONS": "200"}
    assert server_from_env(env) == {"bind": "0.0.0.0:9000", "workers": 3, "threads": 64,
                                    "worker_class": "gthread", "worker_connections": 200,
                                    "graceful_timeout": 0, "concurrency": 64}


def test_server_from_env_reads_os_environ_by_default(monkeypatch):
    monkeypatch.setenv("GUNICORN_THREADS", "7")
    assert server_from_env()["threads"] == 7
    monkeypatch.setenv("GUNICORN_THREADS", "lots")
    with pytest.raises(SettingsError):
        server_from_env()


@pytest.mark.parametrize("name, value, message", [
    ("GUNICORN_THREADS", "lots", "GUNICORN_THREADS must be a whole number, got 'lots'"),
    ("GUNICORN_THREADS", "0", "GUNICORN_THREADS must be at least 1, got 0"),
    ("GUNICORN_THREADS", "2.5", "GUNICORN_THREADS must be a whole number, got '2.5'"),
    ("WEB_CONCURRENCY", "many", "WEB_CONCURRENCY must be a whole number, got 'many'"),
    ("WEB_CONCURRENCY", "0", "WEB_CONCURRENCY must be at least 1, got 0"),
    ("WEB_CONCURRENCY", "-2", "WEB_CONCURRENCY must be at least 1, got -2"),
    ("GUNICORN_GRACEFUL_TIMEOUT", "2m", "GUNICORN_GRACEFUL_TIMEOUT must be a whole number, got '2m'"),
    ("GUNICORN_GRACEFUL_TIMEOUT", "-1", "GUNICORN_GRACEFUL_TIMEOUT must be at least 0, got -1"),
])
def test_a_bad_gunicorn_number_gives_one_line(name, value, message):
    with pytest.raises(SettingsError) as caught:
        server_from_env({name: value})
    assert str(caught.value) == message


@pytest.mark.parametrize("bind", ["127.0.0.1:8000", "0.0.0.0:80", "localhost:65535", "app.internal:1",
                                  "[::1]:8000", "[::]:8080", "[2001:db8::1]:443",
                                  "unix:/run/chat.sock", "unix:///run/chat.sock", "unix:chat.sock"])
def test_good_bind_forms(bind):
    assert server_from_env({"BIND": bind})["bind"] == bind


@pytest.mark.parametrize("bind", ["nonsense", "localhost", ":8000", "127.0.0.1:", "127.0.0.1:http",
                                  "::1:8000", "[::1]", "[::1]8000", "[not v6]:80", "host name:80",
                                  "http://127.0.0.1:8000", "unix:", "unix://", "127.0.0.1:8000 x"])
def test_bad_bind_forms(bind):
    with pytest.raises(SettingsError) as caught:
        server_from_env({"BIND": bind})
    assert str(caught.value) == f"BIND must be host:port, [ipv6]:port or unix:/path, got {bind!r}"


@pytest.mark.parametrize("bind", ["127.0.0.1:0", "localhost:65536", "[::1]:70000"])
def test_bind_port_out_of_range(bind):
    with pytest.raises(SettingsError) as caught:
        server_from_env({"BIND": bind})
    assert str(caught.value) == f"BIND's port must be 1 to 65535, got {bind!r}"


# --- the startup line ----------------------------------------------------------------------------

def test_describe_names_model_upstream_folder_and_size(tmp_path):
    config = from_env({"OPENROUTER_API_KEY": "sk-or-v1-very-secret", "OPENROUTER_MODEL": "x/y",
                       "SESSION_DIR": str(tmp_path / "store")})
    line = describe(config, workers=2, threads=512)
    assert line == (f"Chat ready: model x/y, upstream https://openrouter.ai/api/v1, "
                    f"store {tmp_path / 'store'} (files), signing key from SECRET_KEY, "
                    f"2 workers × 512 threads")
    assert "sk-or-v1-very-secret" not in line


def test_describe_default_folder_is_under_the_instance_path(tmp_path):
    config = from_env({})
    folder = os.path.join(str(tmp_path), "sessions")
    assert session_dir(config, str(tmp_path)) == folder
    assert f"store {folder} (files)" in describe(config, instance_path=str(tmp_path))


def test_describe_shows_a_relative_folder_as_absolute(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    line = describe(from_env({"SESSION_DIR": "data/sessions"}), 1, 1)
    assert f"store {tmp_path / 'data' / 'sessions'} (files), signing key from SECRET_KEY, 1 worker × 1 thread" in line


def test_describe_without_sizes_leaves_them_out():
    assert describe(from_env({}), instance_path="/srv/chat").endswith(
        "store /srv/chat/sessions (files), signing key from SECRET_KEY")


@pytest.mark.parametrize("url, shown", [
    ("redis://user:s3cret@host:6379/2", "store host:6379/2 (redis)"),
    ("redis://:s3cret@cache.internal/5", "store cache.internal:6379/5 (redis)"),
    ("rediss://default:s3cret@[2001:db8::7]:6380/1", "store [2001:db8::7]:6380/1 (redis over TLS)"),
    ("redis://host?db=3&password=s3cret&username=user", "store host:6379/3 (redis)"),
    ("unix://user:s3cret@/run/redis.sock?db=4", "store unix:/run/redis.sock db 4 (redis)"),
    ("redis://s3cret@host:notaport/0", "store host:?/0 (redis)"),
])
def test_describe_hides_the_redis_password_and_user(url, shown):
    config = from_env({"SESSION_TYPE": "redis", "REDIS_URL": url,
                       "OPENROUTER_API_KEY": "sk-or-v1-s3cret"})
    line = describe(config, workers=2, threads=8)
    assert shown in line, line
    assert "s3cret" not in line and "user" not in line and "default" not in line


def test_describe_default_redis():
    assert "store 127.0.0.1:6379/0 (redis)" in describe(from_env({"SESSION_TYPE": "redis"}))


def test_describe_drops_credentials_from_the_upstream_url():
    config = from_env({"OPENROUTER_BASE_URL": "https://me:s3cret@proxy.example:8443/api/v1/"})
    line = describe(config)
    assert "upstream https://proxy.example:8443/api/v1, store" in line and "s3cret" not in line


def test_every_setting_is_documented_in_the_readme_and_env_example():
    """Each variable settings.py reads is in the README and in .env.example (which says it lists them all)."""
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    with open(os.path.join(root, "webapp", "settings.py")) as f:
        names = set(re.findall(r'env(?:\.get\(|, )"([A-Z][A-Z0-9_]+)"', f.read()))
    assert {"SECRET_KEY_FILE", "MAX_LISTENERS_PER_SESSION", "OPENROUTER_API_KEY"} <= names
    for doc in ("README.md", ".env.example"):
        with open(os.path.join(root, doc)) as f:
            text = f.read()
        missing = sorted(name for name in names if name not in text)
        assert missing == [], f"{doc} does not mention {missing}"

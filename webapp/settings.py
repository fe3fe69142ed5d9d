"""Every setting the app reads from the environment (or a `.env` file): its name, default and check.

This is the only module that reads `os.environ`; everything else receives the values through
`app.config`. A bad value raises `SettingsError` with a sentence an operator can act on. A missing
`OPENROUTER_API_KEY` is *not* an error: the app starts and the chat page says how to set it.
"""

import os
import re
from datetime import timedelta
from urllib.parse import parse_qs, urlsplit

DEFAULT_BASE_URL = "https://openrouter.ai/api/v1"
DEFAULT_AUTH_URL = "https://openrouter.ai/auth"


class SettingsError(ValueError):
    """A setting has a value the app cannot use."""


def _number(env, name, default, minimum, kind=int):
    raw = env.get(name, "").strip()
    if not raw:
        return default
    try:
        value = kind(raw)
    except ValueError:
        what = "a whole number" if kind is int else "a number of seconds"
        raise SettingsError(f"{name} must be {what}, got {raw!r}") from None
    if value < minimum:
        raise SettingsError(f"{name} must be at least {minimum}, got {value}")
    return value


def upload_limit(config):
    """The request limit of a send (and an import): MAX_CONTENT_LENGTH for its text, plus as many
    files of the largest size as a message may carry (as base64 in an import: 4/3 of them)."""
    return (config["MAX_CONTENT_LENGTH"] + config["MAX_ATTACHMENTS"] * config["MAX_ATTACHMENT_BYTES"] * 4 // 3
            + 64 * 1024)


def _int(env, name, default, minimum=1):
    return _number(env, name, default, minimum)


def _float(env, name, default, minimum=0.1):
    return _number(env, name, default, minimum, float)


def _bool(env, name, default):
    raw = env.get(name, "").strip().lower()
    if not raw:
        return default
    if raw in ("1", "true", "yes", "on"):
        return True
    if raw in ("0", "false", "no", "off"):
        return False
    raise SettingsError(f"{name} must be true or false, got {raw!r}")


def _base_url(env, name="OPENROUTER_BASE_URL", default=DEFAULT_BASE_URL):
    """OPENROUTER_BASE_URL (or OPENROUTER_AUTH_URL) checked at startup, so a typo is not first seen
    as "Check the network"."""
    raw = env.get(name, "").strip()
    if not raw:
        return default
    parts = urlsplit(raw)
    try:
        parts.port  # noqa: B018 - raises ValueError for a port that is not 0-65535
        valid = parts.scheme.lower() in ("http", "https") and bool(parts.hostname)
    except ValueError:
        valid = False
    # The app posts to "{base}/responses" (and sends browsers to "{auth}?callback_url=…"), so a query
    # string or fragment would end up in the wrong place.
    if not valid or parts.query or parts.fragment or any(c.isspace() for c in raw):
        raise SettingsError(f"{name} must be an http(s)://host URL such as {default}, got {raw!r}")
    return raw.rstrip("/")


_RATE = re.compile(r"\d+\s*(/|per)\s*\d*\s*(second|minute|hour|day)s?", re.I)
LOOPBACK_HOSTS = ["localhost", "127.0.0.1", "::1", "[::1]"]


def _rate(env, name, default):
    """A Flask-Limiter rate such as `20/minute`, or `off` (None: no limit)."""
    raw = env.get(name, "").strip() or default
    if raw.lower() == "off":
        return None
    if not _RATE.fullmatch(raw):
        raise SettingsError(f"{name} must be a rate such as {default} (or off), got {raw!r}")
    return raw


def is_loopback_bind(bind):
    if bind.startswith("unix:"):
        return True  # only a local proxy can reach a unix socket
    host = bind.rsplit(":", 1)[0].strip("[]")
    return host in ("localhost", "::1") or host.startswith("127.")


class _IPv6Literal(str):
    """A trusted name such as "[::1]". Werkzeug drops a trusted name's port by cutting it at its first
    ":", which leaves "[" of an IPv6 literal, so `Host: [::1]:8000` never matched: this name stays
    whole when cut (its port, if any, is ignored like any other's)."""

    def partition(self, sep):
        if sep == ":" and self.startswith("["):
            return (self[:self.index("]") + 1], "", "") if "]" in self else (str(self), "", "")
        return super().partition(sep)


def _trusted_hosts(env, bind):
    """Flask's TRUSTED_HOSTS. Unset on a loopback bind: loopback names only, so a page on another site
    cannot reach a local instance through DNS rebinding. Unset on a public bind: any host (the
    operator is told at startup to set it)."""
    raw = env.get("TRUSTED_HOSTS", "").strip()
    if raw:
        hosts = [h.strip() for h in raw.split(",") if h.strip()]
        if any(not re.fullmatch(r"\.?[A-Za-z0-9.\-\[\]:]+", h) for h in hosts):
            raise SettingsError(f"TRUSTED_HOSTS must be comma-separated host names, got {raw!r}")
    else:
        hosts = list(LOOPBACK_HOSTS) if is_loopback_bind(bind) else None
    return [_IPv6Literal(h) if h.startswith("[") else h for h in hosts] if hosts else hosts


def from_env(env=None):
    """Return the Flask config mapping built from `env` (default: `os.environ`)."""
    env = os.environ if env is None else env
    session_type = env.get("SESSION_TYPE", "").strip().lower() or "cachelib"
    if session_type not in ("cachelib", "redis"):
        raise SettingsError(f"SESSION_TYPE must be 'cachelib' or 'redis', got {session_type!r}")
    secret = env.get("SECRET_KEY", "").strip()
    bind = _bind(env)
    model = env.get("OPENROUTER_MODEL", "").strip() or "openai/o4-mini"
    allowed = [m.strip() for m in env.get("ALLOWED_MODELS", "").split(",") if m.strip()] or None
    if allowed and model not in allowed:
        raise SettingsError(f"ALLOWED_MODELS must include OPENROUTER_MODEL ({model!r}), the model new "
                            f"conversations start on")
    # __Host-: the browser accepts this cookie only from this origin over HTTPS, with Path=/ and no
    # Domain, so a page on another port or subdomain cannot plant one (cookie tossing).
    secure_cookie = _bool(env, "SESSION_COOKIE_SECURE", False)
    max_content = _int(env, "MAX_CONTENT_LENGTH", 1024 * 1024)
    max_file = _int(env, "MAX_ATTACHMENT_BYTES", 10 * 1024 * 1024)
    max_files = _int(env, "MAX_ATTACHMENTS", 10)
    return {
        "OPENROUTER_API_KEY": env.get("OPENROUTER_API_KEY", "").strip(),
        "OPENROUTER_BASE_URL": _base_url(env),
        # Each person signs in with their own OpenRouter account (OAuth PKCE) and chats on its key.
        "SIGN_IN_WITH_OPENROUTER": _bool(env, "SIGN_IN_WITH_OPENROUTER", False),
        "OPENROUTER_AUTH_URL": _base_url(env, "OPENROUTER_AUTH_URL", DEFAULT_AUTH_URL),
        "OPENROUTER_MODEL": model,
        "ALLOWED_MODELS": allowed,
        "MAX_OUTPUT_TOKENS": _int(env, "MAX_OUTPUT_TOKENS", 9000),
        # Reasoning models can think for minutes before the first byte; the connect timeout stays short.
        "OPENROUTER_CONNECT_TIMEOUT": _float(env, "OPENROUTER_CONNECT_TIMEOUT", 10.0),
        "OPENROUTER_READ_TIMEOUT": _float(env, "OPENROUTER_READ_TIMEOUT", 300.0),
        "OPENROUTER_APP_URL": env.get("OPENROUTER_APP_URL", "").strip(),
        "OPENROUTER_APP_TITLE": env.get("OPENROUTER_APP_TITLE", "").strip() or "Chat",
        "MAX_MESSAGE_CHARS": _int(env, "MAX_MESSAGE_CHARS", 100_000),
        "MAX_CONTENT_LENGTH": max_content,
        "MAX_ATTACHMENT_BYTES": max_file,
        "MAX_ATTACHMENTS": max_files,
        # A message with "Search the web" ticked asks OpenRouter's web search for this many results.
        "WEB_SEARCH_MAX_RESULTS": min(25, _int(env, "WEB_SEARCH_MAX_RESULTS", 5)),
        # Unset: the factory uses a key made once and kept in SECRET_KEY_FILE (see secret_key.py).
        "SECRET_KEY": secret,
        "SECRET_KEY_FILE": env.get("SECRET_KEY_FILE", "").strip(),
        "SESSION_TYPE": session_type,
        "SESSION_DIR": env.get("SESSION_DIR", "").strip(),
        "REDIS_URL": env.get("REDIS_URL", "").strip() or "redis://127.0.0.1:6379/0",
        "SESSION_COOKIE_SECURE": secure_cookie,
        "SESSION_COOKIE_HTTPONLY": True,
        # Write a session only when it changed; views.keep_session_alive refreshes it daily.
        "SESSION_REFRESH_EACH_REQUEST": False,
        "SESSION_COOKIE_SAMESITE": "Lax",
        "PERMANENT_SESSION_LIFETIME": timedelta(days=_int(env, "SESSION_LIFETIME_DAYS", 30)),
        # A session with no conversation and no login yet (a visit, a bot) is kept this long only.
        "ANONYMOUS_SESSION_LIFETIME": timedelta(hours=1),
        # --- access and abuse ---
        "ACCESS_PASSWORD": env.get("ACCESS_PASSWORD", ""),
        "BIND": bind,
        "TRUSTED_HOSTS": _trusted_hosts(env, bind),
        "TRUSTED_PROXIES": _int(env, "TRUSTED_PROXIES", 0, minimum=0),
        "RATE_LIMIT_PER_SESSION": _rate(env, "RATE_LIMIT_PER_SESSION", "20/minute"),
        "RATE_LIMIT_PER_ADDRESS": _rate(env, "RATE_LIMIT_PER_ADDRESS", "120/minute"),
        "LOGIN_RATE_LIMIT": _rate(env, "LOGIN_RATE_LIMIT", "10/minute"),
        "MAX_RUNNING_TURNS": _int(env, "MAX_RUNNING_TURNS", 1000),
        "MAX_TURNS_PER_SESSION": _int(env, "MAX_TURNS_PER_SESSION", 3),
        # Streams following replies after a reload, per worker process (429 beyond).
        "MAX_LISTENERS_PER_SESSION": _int(env, "MAX_LISTENERS_PER_SESSION", 10),
        "MAX_LISTENERS_PER_TURN": _int(env, "MAX_LISTENERS_PER_TURN", 20),
        "OPENROUTER_TURN_TIMEOUT": _float(env, "OPENROUTER_TURN_TIMEOUT", 900.0, minimum=1.0),
        # Flask-WTF: a token lives as long as its session (an open tab must not expire after an hour),
        # and the check runs from our own guard, after the origin check (see guards.py).
        "WTF_CSRF_TIME_LIMIT": None,
        "WTF_CSRF_CHECK_DEFAULT": False,
        "SESSION_COOKIE_NAME": "__Host-session" if secure_cookie else "session",
    }


_TCP_BIND = re.compile(r"(?:\[(?P<v6>[0-9A-Fa-f:.]+)\]|(?P<host>[^\s:\[\]/]+)):(?P<port>[0-9]+)")


def _bind(env):
    raw = env.get("BIND", "").strip()
    if not raw:
        return "127.0.0.1:8000"
    problem = f"BIND must be host:port, [ipv6]:port or unix:/path, got {raw!r}"
    if raw.startswith("unix:"):
        if not re.sub(r"^unix:(//)?", "", raw):
            raise SettingsError(problem)
        return raw
    match = _TCP_BIND.fullmatch(raw)
    if not match:
        raise SettingsError(problem)
    port = int(match["port"])
    if not 1 <= port <= 65535:
        raise SettingsError(f"BIND's port must be 1 to 65535, got {raw!r}")
    return raw


WORKER_CLASSES = ("gevent", "gthread")


def _worker_class(env):
    chosen = env.get("GUNICORN_WORKER_CLASS", "").strip().lower() or "gevent"
    if chosen not in WORKER_CLASSES:
        raise SettingsError(f"GUNICORN_WORKER_CLASS must be 'gevent' or 'gthread', "
                            f"got {env.get('GUNICORN_WORKER_CLASS')!r}")
    if chosen == "gevent":
        # Installed? (Not imported: patching is the worker's job.) gunicorn's gevent worker also
        # checks gevent's version with `packaging`.
        import importlib.util

        for package in ("gevent", "packaging"):
            if importlib.util.find_spec(package) is None:
                raise SettingsError(f"GUNICORN_WORKER_CLASS=gevent needs the '{package}' package "
                                    f"(pip install -r requirements.txt)")
    return chosen


def server_from_env(env=None):
    """gunicorn's settings that come from the environment, checked like the app's own.

    Returns a dict with `bind`, `workers`, `threads`, `worker_class`, `worker_connections` and
    `graceful_timeout` (gunicorn.conf.py's names), and `concurrency`: how many requests one worker
    serves at once (connections for gevent, threads for gthread).
    """
    env = os.environ if env is None else env
    server = {
        "bind": _bind(env),
        "workers": _int(env, "WEB_CONCURRENCY", os.cpu_count() or 2),
        "threads": _int(env, "GUNICORN_THREADS", 512),
        "worker_class": _worker_class(env),
        "worker_connections": _int(env, "GUNICORN_WORKER_CONNECTIONS", 1000),
        # 0 is allowed: stop at once, abandoning replies still being written.
        "graceful_timeout": _int(env, "GUNICORN_GRACEFUL_TIMEOUT", 120, minimum=0),
    }
    server["concurrency"] = (server["worker_connections"] if server["worker_class"] == "gevent"
                             else server["threads"])
    return server


def session_dir(config, instance_path):
    """The folder of the file (cachelib) store: SESSION_DIR, else `<instance_path>/sessions`."""
    return config.get("SESSION_DIR") or os.path.join(instance_path, "sessions")


def secret_key_file(config, instance_path):
    """Where the signing key is kept when SECRET_KEY is unset: SECRET_KEY_FILE, else `secret_key`
    beside the file store's folder (`instance/secret_key` by default; not inside it, where `purge`
    judges every file as the store's)."""
    return config.get("SECRET_KEY_FILE") or os.path.join(
        os.path.dirname(os.path.abspath(session_dir(config, instance_path))), "secret_key")


def _url_without_secrets(url):
    """scheme://host[:port]/path: no user name, password, query or fragment."""
    parts = urlsplit(url)
    host = parts.hostname or ""
    if ":" in host:
        host = f"[{host}]"
    try:
        port = parts.port
    except ValueError:
        port = None
    return f"{parts.scheme}://{host}{f':{port}' if port else ''}{parts.path}"


def _redis_location(url):
    """host:port/db of a REDIS_URL, never its user name or password (which may be in the query)."""
    parts = urlsplit(url)
    db = parse_qs(parts.query).get("db", [""])[0]
    if parts.scheme == "unix":
        return f"unix:{parts.path} db {db or 0}"
    host = parts.hostname or "?"
    if ":" in host:
        host = f"[{host}]"
    try:
        port = parts.port or 6379
    except ValueError:
        port = "?"
    return f"{host}:{port}/{parts.path.strip('/') or db or 0}"


def _count(n, word):
    return f"{n} {word}{'' if n == 1 else 's'}"


def describe(config, workers=None, threads=None, instance_path="instance"):
    """One line for the log saying what this process serves; never a key or password.

    `instance_path` is the app's (`app.instance_path`), for the default file store folder.
    """
    if config.get("SESSION_TYPE") == "redis":
        url = config.get("REDIS_URL", "")
        kind = "redis over TLS" if url.startswith("rediss:") else "redis"
        store = f"{_redis_location(url)} ({kind})"
    else:
        store = f"{os.path.abspath(session_dir(config, instance_path))} (files)"
    line = (f"Chat ready: model {config.get('OPENROUTER_MODEL')}, "
            f"upstream {_url_without_secrets(config.get('OPENROUTER_BASE_URL', ''))}, store {store}, "
            f"signing key from {config.get('SECRET_KEY_SOURCE') or 'SECRET_KEY'}")
    if workers and threads:
        line += f", {_count(workers, 'worker')} × {_count(threads, 'thread')}"
    return line

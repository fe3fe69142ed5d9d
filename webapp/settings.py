"""Every setting the app reads from the environment (or a `.env` file): its name, default and check.

This is the only module that reads `os.environ`; everything else receives the values through
`app.config`. A bad value raises `SettingsError` with a sentence an operator can act on. A missing
`OPENROUTER_API_KEY` is *not* an error: the app starts and the chat page says how to set it.
"""

import os
import secrets
from datetime import timedelta


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


def from_env(env=None):
    """Return the Flask config mapping built from `env` (default: `os.environ`)."""
    env = os.environ if env is None else env
    session_type = env.get("SESSION_TYPE", "").strip().lower() or "cachelib"
    if session_type not in ("cachelib", "redis"):
        raise SettingsError(f"SESSION_TYPE must be 'cachelib' or 'redis', got {session_type!r}")
    secret = env.get("SECRET_KEY", "").strip()
    return {
        "OPENROUTER_API_KEY": env.get("OPENROUTER_API_KEY", "").strip(),
        "OPENROUTER_BASE_URL": (
            env.get("OPENROUTER_BASE_URL", "").strip() or "https://openrouter.ai/api/v1"
        ).rstrip("/"),
        "OPENROUTER_MODEL": env.get("OPENROUTER_MODEL", "").strip() or "openai/o4-mini",
        "MAX_OUTPUT_TOKENS": _int(env, "MAX_OUTPUT_TOKENS", 9000),
        # Reasoning models can think for minutes before the first byte; the connect timeout stays short.
        "OPENROUTER_CONNECT_TIMEOUT": _float(env, "OPENROUTER_CONNECT_TIMEOUT", 10.0),
        "OPENROUTER_READ_TIMEOUT": _float(env, "OPENROUTER_READ_TIMEOUT", 300.0),
        "OPENROUTER_APP_URL": env.get("OPENROUTER_APP_URL", "").strip(),
        "OPENROUTER_APP_TITLE": env.get("OPENROUTER_APP_TITLE", "").strip() or "Chat",
        "MAX_MESSAGE_CHARS": _int(env, "MAX_MESSAGE_CHARS", 100_000),
        "MAX_CONTENT_LENGTH": _int(env, "MAX_CONTENT_LENGTH", 1024 * 1024),
        # Without SECRET_KEY every restart would sign with a new key; sessions themselves live
        # server-side, so a random key only costs flashed messages, but say so in the README.
        "SECRET_KEY": secret or secrets.token_hex(32),
        "SESSION_TYPE": session_type,
        "SESSION_DIR": env.get("SESSION_DIR", "").strip(),
        "REDIS_URL": env.get("REDIS_URL", "").strip() or "redis://127.0.0.1:6379/0",
        "SESSION_COOKIE_SECURE": _bool(env, "SESSION_COOKIE_SECURE", False),
        "SESSION_COOKIE_HTTPONLY": True,
        # Write a session only when it changed; views.keep_session_alive refreshes it daily.
        "SESSION_REFRESH_EACH_REQUEST": False,
        "SESSION_COOKIE_SAMESITE": "Lax",
        "PERMANENT_SESSION_LIFETIME": timedelta(days=_int(env, "SESSION_LIFETIME_DAYS", 30)),
    }

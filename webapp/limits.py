"""Rate limits (Flask-Limiter), so one client cannot spend the operator's credits or take the service
down: sends per session (`RATE_LIMIT_PER_SESSION`) and per address (`RATE_LIMIT_PER_ADDRESS`), and
failed logins per address (`LOGIN_RATE_LIMIT`). `off` disables one. Counters live in Redis when the
store is Redis (shared by every worker and host); with the file store they are per process, so with
N workers a client gets up to N times the limit (documented in the README).
"""

import functools
import hashlib

from flask import current_app, session
from flask_limiter import Limiter
from flask_limiter.util import get_remote_address

limiter = Limiter(key_func=get_remote_address, headers_enabled=True)


def _session_key():
    # The session's CSRF secret: unlike its id, it survives the new id a session gets at its first
    # send and at login. A browser that drops its cookie gets a new session each time and meets
    # the per-address limit instead (and, without a token, the CSRF check first). Hashed: Flask-Limiter
    # logs the key of every limit it enforces, and the store keeps it.
    secret = session.get("csrf_token") or getattr(session, "sid", "")
    return "session:" + hashlib.sha256(secret.encode()).hexdigest()[:24]


def _rate(name):
    return lambda: current_app.config[name] or "1/second"  # the fallback is never used: see _off


def _off(name):
    return lambda: current_app.config[name] is None


def per_session_and_address(view):
    """The limits on anything that starts a turn: one counter for all the send routes (JS-off and
    streamed, to the latest or a named conversation), so using several does not multiply them.
    With both `off`, the view is called straight: Flask-Limiter's check costs a third of a
    millisecond of CPU per send even when every limit it finds is exempt."""
    limited = limiter.shared_limit(_rate("RATE_LIMIT_PER_SESSION"), scope="sends-per-session",
                                   key_func=_session_key, exempt_when=_off("RATE_LIMIT_PER_SESSION"))(view)
    limited = limiter.shared_limit(_rate("RATE_LIMIT_PER_ADDRESS"), scope="sends-per-address",
                                   key_func=get_remote_address,
                                   exempt_when=_off("RATE_LIMIT_PER_ADDRESS"))(limited)

    @functools.wraps(view)
    def send(*args, **kwargs):
        config = current_app.config
        if config["RATE_LIMIT_PER_SESSION"] is None and config["RATE_LIMIT_PER_ADDRESS"] is None:
            return view(*args, **kwargs)
        return limited(*args, **kwargs)

    return send


def failed_logins(view):
    return limiter.limit(_rate("LOGIN_RATE_LIMIT"), key_func=get_remote_address, methods=["POST"],
                         exempt_when=_off("LOGIN_RATE_LIMIT"),
                         deduct_when=lambda response: response.status_code == 401)(view)


def init_app(app, redis_url=None, redis_client=None):
    if redis_client is not None:
        app.config["RATELIMIT_STORAGE_URI"] = redis_url
        # The app's one Redis connection pool, shared with sessions, conversations and locks.
        app.config["RATELIMIT_STORAGE_OPTIONS"] = {"connection_pool": redis_client.connection_pool}
    else:
        app.config["RATELIMIT_STORAGE_URI"] = "memory://"
    limiter.init_app(app)
    # Every limit here is a decorator's, checked by the decorator itself; Flask-Limiter's own
    # before-request check serves default and blueprint limits, of which there are none, and costs
    # a tenth of a millisecond on every request to find that out. Its after-request hook stays:
    # it writes the X-RateLimit headers and charges the failed-login limit (`deduct_when`).
    app.before_request_funcs[None].remove(limiter._check_request_limit)

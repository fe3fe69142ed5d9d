"""Browser sessions: Flask-Session's server-side store, with the rules that keep a session id honest.

- A session that has not sent a message or logged in yet (a visit, a bot, a CSRF token only) is
  stored for `ANONYMOUS_SESSION_LIFETIME` only, so anonymous page views cannot grow the store for
  a month each; it gets the full lifetime once it holds a conversation or a login.
- The id is issued anew (`rotate`) at login and at a browser's first send, so an id planted in the
  browser beforehand (session fixation, cookie tossing) never becomes the one its messages live in.
- A request carrying two session cookies is refused (`duplicate_cookie`): another page on this host
  (another port) planted one with a longer path, and the browser sends it first.
- Session data in Redis is JSON only (`JSONOnly`): never unpickled.
"""

import hashlib
import hmac
from datetime import date

import msgspec
from flask_session.base import Serializer
from flask_session.cachelib import CacheLibSessionInterface
from flask_session.redis import RedisSessionInterface


def today():
    """The day an active session was last marked on (see chat.keep_session_alive)."""
    return date.today().toordinal()


def established(session):
    """A session worth keeping for the full lifetime: it has a conversation or a login."""
    return bool(session.get("browser") or session.get("cid") or session.get("authed"))


class _ShortLivedWhileAnonymous:
    anonymous_lifetime = None  # set by `interface`
    store_errors = ()  # the store's own errors while opening a session (set by `interface`)

    def _upsert_session(self, session_lifetime, session, store_id):
        # A new id is stored at once (`rotate`); the end of that request would store the same again.
        stored = (store_id, dict(session))
        if getattr(session, "stored", None) == stored:
            return
        if not established(session):
            session_lifetime = self.anonymous_lifetime
        super()._upsert_session(session_lifetime, session, store_id)
        session.stored = stored

    def open_session(self, app, request):
        # Flask opens the session before any view or error handler runs: a store that is down here
        # would be a bare 500. Mark the session instead; guards.check_request answers a clear 503.
        try:
            return super().open_session(app, request)
        except self.store_errors:
            app.logger.error("the session store does not answer")
            unavailable = self.session_class(sid=self._generate_sid(self.sid_length))
            unavailable.store_down = True
            return unavailable

    def save_session(self, app, session, response):
        if not getattr(session, "store_down", False):
            super().save_session(app, session, response)


class JSONOnly(Serializer):
    """Session data as JSON and nothing else. Flask-Session 0.8's own serializer falls back to
    msgpack, then to `pickle.loads`, for a value that is not JSON: whoever can write to Redis would
    run code in the app. A value that does not decode to a JSON object is no session (a new one
    starts)."""

    def __init__(self):
        self.encoder, self.decoder = msgspec.json.Encoder(), msgspec.json.Decoder()

    def encode(self, session):
        return self.encoder.encode(dict(session))

    def decode(self, serialized_data):
        try:
            data = self.decoder.decode(serialized_data)
        except msgspec.DecodeError:
            return None
        return data if isinstance(data, dict) else None


class FileSessions(_ShortLivedWhileAnonymous, CacheLibSessionInterface):
    """Sessions in cachelib's file store (the default)."""


class RedisSessions(_ShortLivedWhileAnonymous, RedisSessionInterface):
    """Sessions in Redis, sharing the app's one Redis client."""


def interface(app, cache=None, redis_client=None):
    """The session interface for `app`: files in `cache`, or Redis through `redis_client`."""
    if redis_client is not None:
        import redis

        chosen = RedisSessions(app, client=redis_client, serialization_format="json")
        chosen.serializer = JSONOnly()
        chosen.store_errors = (redis.RedisError,)
    else:
        chosen = FileSessions(app, client=cache, serialization_format="json")
    chosen.anonymous_lifetime = app.config["ANONYMOUS_SESSION_LIFETIME"]
    return chosen


def rotate(app, session):
    """Give this session a new id, keeping its contents (the old id is deleted from the store), and
    store it under the new id at once: a JS-off turn answers minutes later, and neither another tab
    nor a worker that dies meanwhile may find the session gone. Call it after putting something in
    the session: Flask-Session skips an empty one."""
    interface = app.session_interface
    interface.regenerate(session)
    interface._upsert_session(app.permanent_session_lifetime, session, interface._get_store_id(session.sid))


def fingerprint(session, secret):
    """A public mark of which browser record this session holds ("" while it holds none): the page
    keeps it in localStorage, which no page on another port can write, to notice a session cookie
    swapped in from there (cookies ignore ports). An HMAC: it reveals nothing of the session id."""
    bid = session.get("browser")
    if not bid:
        return ""
    return hmac.new(secret.encode(), f"browser:{bid}".encode(), hashlib.sha256).hexdigest()[:20]


def duplicate_cookie(request, name):
    """True when the browser sent the session cookie more than once (see the module docstring)."""
    header = request.headers.get("Cookie", "")
    return sum(1 for part in header.split(";") if part.strip().split("=", 1)[0] == name) > 1

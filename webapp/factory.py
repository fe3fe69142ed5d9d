"""The app factory: settings, sessions, the store, the OpenRouter client, guards, limits, blueprints
and error pages, wired together (`webapp.create_app` calls `create_app` here)."""

import functools
import gzip
import hashlib
import logging
import os

from dotenv import load_dotenv
from flask import Flask, render_template, request
from gunicorn.glogging import Logger as GunicornLogger
from werkzeug.exceptions import HTTPException, SecurityError
from werkzeug.middleware.proxy_fix import ProxyFix
from werkzeug.security import safe_join

from . import access, guards, limits, ops, secret_key, sessions, settings, signin, urls
from .catalogue import Catalogue
from .offers import Offers
from .openrouter import Client
from .store import FileBackend, FileCache, RedisBackend, Store, StoreError, redis_client

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
log = logging.getLogger(__name__)
YEAR = 365 * 24 * 3600


class ChatApp(Flask):
    """Flask, with static files that browsers keep: every static URL the pages build carries a hash
    of the file (`?v=`, see `versioned_static`), so it may be cached for a year, and a new version of
    a file is a new URL. A repeat visit then asks only for the page."""

    static_hashes = None  # set by `versioned_static`

    def send_static_file(self, filename):
        """The file, gzip-compressed for a browser that takes it: the script and the styles are most
        of a first visit's bytes, and a third of that compressed. Compressed once per file and
        version, as a separate representation (its own ETag, `Vary: Accept-Encoding`)."""
        response = super().send_static_file(filename)
        if not filename.endswith(COMPRESSED):
            return response
        response.vary.add("Accept-Encoding")
        etag, _ = response.get_etag()
        if response.status_code != 200 or not etag or not request.accept_encodings["gzip"]:
            return response  # a 304, a range, a client without gzip: as Flask serves it
        path = safe_join(self.static_folder, filename)
        packed = _gzipped(path, os.stat(path).st_mtime_ns)
        response.set_etag(etag + "-gzip")
        if request.if_none_match.contains(etag + "-gzip"):  # the compressed copy it already has
            response.status_code, response.direct_passthrough = 304, False
            response.set_data(b"")
            del response.headers["Content-Length"]
            return response
        response.direct_passthrough = False
        response.set_data(packed)  # (sets Content-Length)
        response.headers["Content-Encoding"] = "gzip"
        return response

    def get_send_file_max_age(self, filename):
        # Only the hash of the file served now earns a year: a worker or host that still runs an
        # older release, or a made-up `v`, must not get the wrong content kept under a URL.
        wanted = request.args.get("v")
        if wanted and self.static_hashes and wanted == self.static_hashes(filename, fresh=True):
            return YEAR
        return super().get_send_file_max_age(filename)


COMPRESSED = (".js", ".css", ".svg")  # static files sent gzip-compressed to browsers that take it


@functools.lru_cache(maxsize=32)
def _gzipped(path, mtime_ns):
    with open(path, "rb") as f:
        return gzip.compress(f.read(), compresslevel=9, mtime=0)


def versioned_static(app):
    known = {}

    def file_hash(name, fresh=False):
        """The first 12 hex digits of the sha256 of static file `name` (None if there is none);
        kept per process, read again with `fresh` (when serving the file) or under the debugger."""
        if fresh or app.debug or name not in known:
            path = safe_join(app.static_folder, name)  # a request's name: never outside static/
            if path is None or not os.path.isfile(path):
                return None  # no such file: the URL 404s as it would anyway
            with open(path, "rb") as f:
                known[name] = hashlib.sha256(f.read()).hexdigest()[:12]
        return known[name]

    def add_version(endpoint, values):
        if endpoint == "static" and "v" not in values and "filename" in values:
            version = file_hash(values["filename"])
            if version:
                values["v"] = version

    app.static_hashes = file_hash
    app.url_defaults(add_version)


def create_app(overrides=None, env=None):
    """Build the app. `env` replaces the environment (tests); without it `.env` is read first."""
    if env is None:
        load_dotenv(os.path.join(os.getcwd(), ".env"))
        env = os.environ
    app = ChatApp(__name__, instance_relative_config=True,
                  template_folder=os.path.join(ROOT, "templates"),
                  static_folder=os.path.join(ROOT, "static"))
    # Block tags leave no indentation or blank lines behind: a fifth of a long page was whitespace.
    app.jinja_options = {**app.jinja_options, "trim_blocks": True, "lstrip_blocks": True}
    app.config.update(settings.from_env(env))
    app.config.update(overrides or {})
    # The app's lines look like gunicorn's own (time, process, level), in the same stream.
    logging.basicConfig(level=logging.INFO, format=GunicornLogger.error_fmt, datefmt=GunicornLogger.datefmt)
    if not app.config["SECRET_KEY"]:
        path = settings.secret_key_file(app.config, app.instance_path)
        app.config["SECRET_KEY"], created = secret_key.load_or_create(path)
        app.config["SECRET_KEY_SOURCE"] = path + (" (made now)" if created else "")

    ttl = int(app.config["PERMANENT_SESSION_LIFETIME"].total_seconds())
    redis = None
    if app.config["SESSION_TYPE"] == "redis":
        # One client, one pool, shared by sessions, conversations, locks and rate-limit counters;
        # sized so every request a worker serves at once can hold a connection.
        concurrency = settings.server_from_env(env)["concurrency"]
        redis = redis_client(app.config["REDIS_URL"], max_connections=concurrency + 64)
        backend = RedisBackend(redis)
        app.session_interface = sessions.interface(app, redis_client=redis)
    else:
        path = settings.session_dir(app.config, app.instance_path)
        os.makedirs(path, exist_ok=True)
        # threshold=0: cachelib must never prune other people's conversations to make room.
        cache = FileCache(path, threshold=0, default_timeout=ttl)
        backend = FileBackend(cache, os.path.join(path, "locks"))
        app.session_interface = sessions.interface(app, cache=cache)
    app.extensions["chat_store"] = Store(backend, ttl)
    app.extensions["openrouter"] = Client.from_config(app.config)
    # People's own keys (SIGN_IN_WITH_OPENROUTER), encrypted under SECRET_KEY in the same store, and
    # what is left of their credit (GET /key, asked at most once a minute per key and process).
    app.extensions["signin_keys"] = signin.KeyBox(backend, app.config["SECRET_KEY"], ttl)
    app.extensions["signin_credits"] = signin.Credits(app.extensions["openrouter"].key_info)
    if app.config["TRUSTED_PROXIES"]:
        # Only behind that many proxies that set X-Forwarded-*; otherwise clients could forge
        # their address (and escape the per-address limits).
        hops = app.config["TRUSTED_PROXIES"]
        app.wsgi_app = ProxyFix(app.wsgi_app, x_for=hops, x_proto=hops, x_host=hops)

    # The model list from OpenRouter's /models, fetched at most every few minutes per process, and
    # the models on offer from it (ALLOWED_MODELS), worked out once per fetch.
    app.extensions["catalogue"] = Catalogue(app.extensions["openrouter"].models)
    app.extensions["offers"] = Offers(app.extensions["catalogue"], app.config,
                                      lambda groups: render_template("_models.html", groups=groups))

    from . import purge, views

    versioned_static(app)
    app.jinja_env.globals["url_for"] = urls.kept_url_for(app)  # each URL built once per process
    guards.init_app(app)  # before the limiter: a refused request spends nobody's quota
    limits.init_app(app, app.config["REDIS_URL"], redis)
    for blueprint in views.blueprints:
        app.register_blueprint(blueprint)
    app.register_blueprint(access.bp)
    app.register_blueprint(ops.bp)
    purge.init_app(app)
    register_error_pages(app, redis)
    return app


def startup_warnings(config):
    """What a serving process warns its operator about at start (gunicorn.conf.py logs them once per
    worker). Not logged by `create_app` itself: `flask purge` from cron would mail them every day."""
    found = []
    # Each person signs in with OpenRouter and pays with their own key: no credits of the operator's.
    own_keys_only = config.get("SIGN_IN_WITH_OPENROUTER") and not config["OPENROUTER_API_KEY"]
    if not config["OPENROUTER_API_KEY"] and not own_keys_only:
        found.append("OPENROUTER_API_KEY is not set: the chat page will say how to set it.")
    if not own_keys_only and not config["ACCESS_PASSWORD"] and not settings.is_loopback_bind(config["BIND"]):
        found.append(f"ACCESS_PASSWORD is not set and the app listens on {config['BIND']}: anyone who "
                     f"can reach it can spend this OpenRouter account's credits. Set ACCESS_PASSWORD.")
    return found


def register_error_pages(app, redis=None):
    @app.errorhandler(SecurityError)
    def untrusted_host(exc):
        # Raised before routing (the Host is not in TRUSTED_HOSTS): no URLs can be built, so no page.
        return ("This server does not answer to that host name (see TRUSTED_HOSTS).\n", 400,
                {"Content-Type": "text/plain; charset=utf-8"})

    @app.errorhandler(HTTPException)
    def http_error(exc):
        if exc.code == 429:  # Flask-Limiter; it adds Retry-After to the response
            return guards.refusal(429, "Too many messages", "Messages are arriving faster than this "
                                  "chat allows. Wait a moment, then send again.")
        if exc.code == 413 and request.endpoint == "transfer.import_conversation":
            limit = settings.upload_limit(app.config)
            return render_template("import.html", error=f"That file is too large to import (the limit "
                                   f"is {limit:,} bytes). Nothing was stored."), 413
        # A 413 is about the body itself: it cannot be read back into the form.
        return guards.refusal(exc.code, exc.name, exc.description, keep_draft=exc.code != 413)

    def store_error(exc):
        app.logger.error("conversation store failed: %s", exc)
        return guards.refusal(
            503, "Storage unavailable", "The conversation store could not be reached, so nothing "
            "was sent or saved. Try again in a moment.")

    app.register_error_handler(StoreError, store_error)
    if redis is not None:
        import redis as redis_py  # sessions talk to Redis directly: its errors mean the same

        app.register_error_handler(redis_py.RedisError, store_error)

    @app.errorhandler(Exception)
    def unexpected(exc):
        app.logger.exception("unexpected error")
        return guards.refusal(500, "Something went wrong", "The app hit an unexpected error. Your "
                              "stored conversation is unchanged.")

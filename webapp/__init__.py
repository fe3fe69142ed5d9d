"""The chat app: `create_app()` wires settings, the session store, the OpenRouter client and the routes."""

import logging
import os

from cachelib.file import FileSystemCache
from dotenv import load_dotenv
from flask import Flask, render_template
from flask_session import Session
from werkzeug.exceptions import HTTPException

from . import settings
from .openrouter import Client
from .store import FileBackend, RedisBackend, Store, StoreError

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def create_app(overrides=None, env=None):
    """Build the app. `env` replaces the environment (tests); without it `.env` is read first."""
    if env is None:
        load_dotenv(os.path.join(os.getcwd(), ".env"))
        env = os.environ
    app = Flask(__name__, instance_relative_config=True,
                template_folder=os.path.join(ROOT, "templates"),
                static_folder=os.path.join(ROOT, "static"))
    app.config.update(settings.from_env(env))
    app.config.update(overrides or {})
    logging.basicConfig(level=logging.INFO)

    ttl = int(app.config["PERMANENT_SESSION_LIFETIME"].total_seconds())
    if app.config["SESSION_TYPE"] == "redis":
        import redis

        client = redis.Redis.from_url(app.config["REDIS_URL"])
        app.config["SESSION_REDIS"] = client
        backend = RedisBackend(client)
    else:
        path = app.config["SESSION_DIR"] or os.path.join(app.instance_path, "sessions")
        os.makedirs(path, exist_ok=True)
        # threshold=0: cachelib must never prune other people's conversations to make room.
        cache = FileSystemCache(path, threshold=0, default_timeout=ttl)
        app.config["SESSION_CACHELIB"] = cache
        backend = FileBackend(cache, os.path.join(path, "locks"))
    app.config.setdefault("SESSION_SERIALIZATION_FORMAT", "json")
    Session(app)
    app.extensions["chat_store"] = Store(backend, ttl)
    app.extensions["openrouter"] = Client.from_config(app.config)

    from . import views

    app.register_blueprint(views.bp)
    register_error_pages(app)
    if not app.config["OPENROUTER_API_KEY"]:
        app.logger.warning("OPENROUTER_API_KEY is not set: the chat page will say how to set it.")
    return app


def register_error_pages(app):
    @app.errorhandler(HTTPException)
    def http_error(exc):
        return render_template("error.html", code=exc.code, title=exc.name,
                               message=exc.description), exc.code

    @app.errorhandler(StoreError)
    def store_error(exc):
        app.logger.error("conversation store failed: %s", exc)
        return render_template(
            "error.html", code=503, title="Storage unavailable",
            message="The conversation store could not be reached, so nothing was sent or saved. "
                    "Go back and try again in a moment."), 503

    @app.errorhandler(Exception)
    def unexpected(exc):
        app.logger.exception("unexpected error")
        return render_template("error.html", code=500, title="Something went wrong",
                               message="The app hit an unexpected error. Your stored conversation "
                                       "is unchanged."), 500

"""The chat app. `create_app()` builds it (see factory.py).

This file imports nothing heavy on purpose: gunicorn.conf.py imports `webapp.settings` in gunicorn's
master, before a gevent worker monkey-patches the standard library, and importing Flask, `requests`
or `ssl` there would leave the forked workers with unpatched sockets (HTTPS to OpenRouter would block
a whole worker). The factory and everything it needs load when `create_app` is first called.
"""


def create_app(overrides=None, env=None):
    """Build the app. `env` replaces the environment (tests); without it `.env` is read first."""
    from .factory import create_app as build

    return build(overrides, env)

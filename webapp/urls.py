"""The URLs the templates build, kept per process.

The chat page builds twenty-odd URLs, and werkzeug's URL builder costs 4-8 µs each: about a third of
the time it takes to render the page. A URL built in a request depends only on its endpoint, its
values and where the app is mounted (the request's root path, SCRIPT_NAME), so it is kept under
exactly those. Built each time instead: outside a request, under the debugger (static URLs there
carry a hash read afresh), external URLs (they name the request's host) and blueprint-relative
endpoints (".name", which depend on the blueprint of the request).
"""

from flask import has_request_context, request

KEEP = 4096  # URLs kept at most (then the kept ones are dropped, and kept again as they are built)


def kept_url_for(app, keep=KEEP):
    """A `url_for` for `app`'s templates that builds each URL once per process."""
    build = app.url_for
    kept = {}

    def url_for(endpoint, **values):
        if app.debug or endpoint.startswith(".") or values.get("_external") or not has_request_context():
            return build(endpoint, **values)
        key = (request.root_path, endpoint, *values.items())
        try:
            return kept[key]
        except KeyError:
            pass
        except TypeError:  # a value that cannot be a key (a list): built each time
            return build(endpoint, **values)
        url = kept[key] = build(endpoint, **values)
        if len(kept) > keep:
            kept.clear()
        return url

    return url_for

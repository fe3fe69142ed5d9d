"""The URLs the templates build, kept per process.

The chat page builds twenty-odd URLs, and werkzeug's URL builder costs 4-8 µs each: about a third of
the time it takes to render the page. A URL built in a request depends only on its endpoint, its
values and where the app is mounted (the request's root path, SCRIPT_NAME), so it is kept under
exactly those; a static file's URL also under the file's version (`?v=`, which changes when the
file served has changed: `factory.versioned_static`). Built each time instead: outside a request,
under the debugger, URLs that name a host or a scheme (`_external`, `_scheme`), blueprint-relative
endpoints (".name", which depend on the blueprint of the request), and values other than strings
(`True`, `1` and `1.0` would share a key, yet build different URLs).
"""

from flask import has_request_context, request

KEEP = 4096  # URLs kept at most (then the kept ones are dropped, and kept again as they are built)


def kept_url_for(app, keep=KEEP):
    """A `url_for` for `app`'s templates that builds each URL once per process."""
    build = app.url_for
    kept = {}

    def url_for(endpoint, **values):
        if (app.debug or endpoint.startswith(".") or "_external" in values or "_scheme" in values
                or not all(type(value) is str for value in values.values()) or not has_request_context()):
            return build(endpoint, **values)
        version = app.static_hashes(values.get("filename", "")) if endpoint == "static" and \
            app.static_hashes else None
        key = (request.root_path, endpoint, version, *values.items())
        url = kept.get(key)
        if url is None:
            url = kept[key] = build(endpoint, **values)
            if len(kept) > keep:
                kept.clear()
        return url

    return url_for

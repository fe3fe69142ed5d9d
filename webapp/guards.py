"""What every request passes before a view runs, and the headers every response leaves with.

In order: a request with two session cookies is refused (cookie tossing); the access gate sends
anyone without the `ACCESS_PASSWORD` to the login page; a state-changing request must come from one
of our own pages (Sec-Fetch-Site, else Origin) and carry Flask-WTF's CSRF token. Responses get a
strict Content-Security-Policy (no inline script or style anywhere in the app) and no caching of
pages or turns. Refusals keep what the user typed: the 400/403/429 pages offer it back in a form.
"""

import re
from urllib.parse import urlsplit

from flask import current_app, redirect, render_template, request, session, url_for
from flask_wtf.csrf import CSRFError, CSRFProtect

from . import access, settings
from .sessions import duplicate_cookie

CSP = ("default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' blob:; connect-src 'self'; "
       "object-src 'none'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'")
UNSAFE = {"POST", "PUT", "PATCH", "DELETE"}
# Reachable without the access password: the login page itself, the files it needs, health checks.
# A shared link is for whoever holds it (its token is the key): not behind ACCESS_PASSWORD.
OPEN_ENDPOINTS = {"access.login", "static", "ops.healthz", "ops.readyz", "chat.favicon", "share.view",
                  "share.file"}

csrf = CSRFProtect()


class Refused(Exception):
    """A request stopped at the door: `status`, a title and a sentence for the person."""

    def __init__(self, status, title, message, keep_draft=True):
        super().__init__(message)
        self.status, self.title, self.message, self.keep_draft = status, title, message, keep_draft


TURNS_PATH = re.compile(r"(/c/[^/]+)?/turns(/|$)")


def wants_json():
    """The streaming endpoints and fetch() calls from static/app.js get JSON errors, pages get HTML."""
    return bool(TURNS_PATH.match(request.path)) or request.accept_mimetypes.best == "application/json"


def refusal(status, title, message, keep_draft=True):
    """One response for every refusal. A page keeps the typed message in a form that sends it again
    (with a fresh token); JSON callers (static/app.js) keep it in the box themselves."""
    if wants_json():
        return {"error": message}, status
    draft = request.form.get("message") if keep_draft and request.method in UNSAFE else None
    # Sent again to the conversation it was typed in (the latest one when the request named none).
    cid = (request.view_args or {}).get("cid")
    resend = url_for("chat.send", cid=cid) if cid else url_for("chat.send")
    return render_template("error.html", code=status, title=title, message=message,
                           draft=draft, resend=resend), status


def from_this_origin():
    """Sec-Fetch-Site says where a browser request came from; browsers without it send Origin on
    every cross-origin POST. Non-browser clients send neither, and still need the CSRF token."""
    site = request.headers.get("Sec-Fetch-Site")
    if site is not None:
        return site in ("same-origin", "none")
    origin = request.headers.get("Origin")
    if origin is None:
        return True
    parts = urlsplit(origin)
    return parts.scheme == request.scheme and parts.netloc == request.host


# The sends, which may carry attachments (and import, whose file holds them): their request limit is
# derived from MAX_ATTACHMENT_BYTES and MAX_ATTACHMENTS (settings.py), not the small default.
UPLOADS = frozenset(("chat.send", "streaming.stream", "transfer.import_conversation"))


def check_request():
    if getattr(session, "store_down", False):
        raise Refused(503, "Storage unavailable", "The conversation store could not be reached, so "
                      "nothing was sent or saved. Try again in a moment.")
    if request.url_rule is None:
        return None  # no such page or method: routing answers 404/405 after this
    if duplicate_cookie(request, current_app.config["SESSION_COOKIE_NAME"]):
        # No form on this page: its CSRF token would start a session whose cookie replaces the real one.
        raise Refused(400, "Two session cookies", "Your browser sent this site's session cookie twice: "
                      "another page on this host may have set one. Clear this site's cookies, then "
                      "open the chat again.", keep_draft=False)
    if current_app.config["ACCESS_PASSWORD"] and request.endpoint not in OPEN_ENDPOINTS \
            and not access.logged_in():
        if request.method in UNSAFE or wants_json():
            raise Refused(401, "Log in first", "This chat needs its password: log in, then send again.")
        return redirect(url_for("access.login", next=request.full_path.rstrip("?")))
    if request.method in UNSAFE:
        if request.endpoint in UPLOADS:  # a message may carry files: its own, larger limit
            request.max_content_length = settings.upload_limit(current_app.config)
        if not from_this_origin():
            # Not offered back: the text came from the other site, not from this person.
            raise Refused(403, "Blocked: another site", "This request came from another site, so it "
                          "was not carried out. Use the chat's own page.", keep_draft=False)
        csrf.protect()
    return None


def add_headers(response):
    response.headers["Content-Security-Policy"] = CSP
    response.headers["X-Content-Type-Options"] = "nosniff"
    response.headers["Referrer-Policy"] = "same-origin"
    if request.endpoint not in ("static", "chat.models", "files.attachment"):
        # Pages and turns hold someone's conversation: never kept by a browser or proxy cache.
        response.headers["Cache-Control"] = "no-store"
    return response


def init_app(app):
    csrf.init_app(app)
    app.before_request(check_request)
    app.after_request(add_headers)

    @app.errorhandler(Refused)
    def refused(exc):
        return refusal(exc.status, exc.title, exc.message, exc.keep_draft)

    @app.errorhandler(CSRFError)
    def bad_token(exc):
        return refusal(400, "Form expired", "This form's security token is missing or out of date "
                       "(the page was open a long time, or the app restarted without a fixed "
                       "SECRET_KEY). Nothing was sent.")

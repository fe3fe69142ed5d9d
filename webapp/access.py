"""The access gate's login page: with `ACCESS_PASSWORD` set, every page but this one, static files
and the health checks asks for it (see guards.check_request). The password is compared in constant
time, the session id is issued anew at login (fixation) and at log out, failed attempts are
rate-limited per address and logged with the address only, never the password. A session keeps a
fingerprint of the password it logged in with (`fingerprint`), so a new password logs everyone out."""

import hashlib
import hmac
import logging
from urllib.parse import urlsplit

from flask import Blueprint, current_app, redirect, render_template, request, session, url_for

from . import sessions
from .limits import failed_logins

log = logging.getLogger(__name__)
bp = Blueprint("access", __name__)


def _safe_next(target):
    # Only a path on this site: never "//evil.example", "/\tevil…" or "https://…" (an open redirect;
    # browsers drop tabs and newlines and read a backslash as a slash).
    if (target and target.startswith("/") and not any(c <= " " or c == "\\" for c in target)
            and not target.startswith("//")):
        parts = urlsplit(target)
        if not parts.scheme and not parts.netloc:
            return target
    return url_for("chat.index")


def fingerprint(config):
    """What a logged-in session keeps of the password: an HMAC of it under the signing key. A session
    counts as logged in only while it matches, so changing ACCESS_PASSWORD logs everyone out."""
    return hmac.new(config["SECRET_KEY"].encode(), config["ACCESS_PASSWORD"].encode(),
                    hashlib.sha256).hexdigest()[:32]


def logged_in():
    return session.get("authed") == fingerprint(current_app.config)


@bp.route("/login", methods=["GET", "POST"])
@failed_logins
def login():
    password = current_app.config["ACCESS_PASSWORD"]
    target = _safe_next(request.values.get("next"))
    if not password or logged_in():
        return redirect(target)
    if request.method == "GET":
        return render_template("login.html", next=target)
    given = request.form.get("password", "")
    if hmac.compare_digest(given.encode(), password.encode()):
        session["authed"] = fingerprint(current_app.config)
        sessions.rotate(current_app, session)
        return redirect(target, code=303)
    log.warning("failed login from %s", request.remote_addr)
    return render_template("login.html", next=target, error="That password is not right."), 401


@bp.post("/logout")
def logout():
    """Lock this browser until the password is given again. Its conversations stay with it (the next
    login on this browser sees them); the session id is issued anew, so the old one opens nothing."""
    session.pop("authed", None)
    sessions.rotate(current_app, session)
    return redirect(url_for("access.login"), code=303)


@bp.post("/session/new")
def new_session():
    """Leave this session for a fresh one (the page offers it when the session changed unasked: a page
    on another port of this host can replace the cookie). The stored session is left alone (it may be
    someone else's); only this browser's cookie is dropped, and the next page starts a new session."""
    session.clear()
    session.modified = False  # nothing to save or delete in the store
    response = redirect(url_for("chat.index"), code=303)
    config = current_app.config
    response.delete_cookie(config["SESSION_COOKIE_NAME"], path=config.get("SESSION_COOKIE_PATH") or "/",
                           domain=config.get("SESSION_COOKIE_DOMAIN"), secure=config["SESSION_COOKIE_SECURE"],
                           httponly=True, samesite=config["SESSION_COOKIE_SAMESITE"])
    return response

"""The access gate's login page: with `ACCESS_PASSWORD` set, every page but this one, static files
and the health checks asks for it (see guards.check_request). The password is compared in constant
time, the session id is issued anew at login (fixation), failed attempts are rate-limited per
address and logged with the address only, never the password."""

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


@bp.route("/login", methods=["GET", "POST"])
@failed_logins
def login():
    password = current_app.config["ACCESS_PASSWORD"]
    target = _safe_next(request.values.get("next"))
    if not password or session.get("authed"):
        return redirect(target)
    if request.method == "GET":
        return render_template("login.html", next=target)
    given = request.form.get("password", "")
    if hmac.compare_digest(given.encode(), password.encode()):
        session["authed"] = True
        sessions.rotate(current_app, session)
        return redirect(target, code=303)
    log.warning("failed login from %s", request.remote_addr)
    return render_template("login.html", next=target, error="That password is not right."), 401

"""Sign in with OpenRouter (SIGN_IN_WITH_OPENROUTER): `GET /signin` sends the browser to OpenRouter
with a PKCE challenge, `GET /signin/callback` trades the code for the person's own key, `POST
/signout` forgets it. The logic is in `webapp.signin`; the header's controls are in base.html
(`signin_header()`). Every route is a 404 while sign-in is off."""

from flask import Blueprint, abort, current_app, redirect, request, session, url_for

from .. import access, signin
from ..guards import refusal
from ..openrouter import UpstreamError
from ..store import StoreError
from . import wiring

bp = Blueprint("signin", __name__)


@bp.before_request
def only_when_on():
    if not current_app.config["SIGN_IN_WITH_OPENROUTER"]:
        abort(404)


@bp.get("/signin")
def start():
    # A link, not a form: the page's CSP (form-action 'self') would block a form's redirect to OpenRouter.
    return redirect(signin.start(session, current_app.config["OPENROUTER_AUTH_URL"],
                                 url_for("signin.callback", _external=True)), code=303)


@bp.get("/signin/callback")
def callback():
    try:
        signin.finish(session, request.args.get("code"), wiring.client(), wiring.keys(), wiring.browser())
    except signin.NotStarted:
        return refusal(400, "No sign-in under way", "This browser has no sign-in with OpenRouter under way "
                       "(it was never started here, was already used, or took over ten minutes), so "
                       "nothing was stored. Sign in with OpenRouter again.", keep_draft=False)
    except UpstreamError as failure:
        status = 403 if failure.kind == "signin_refused" else 502
        return refusal(status, "Not signed in", failure.message, keep_draft=False)
    return redirect(url_for("chat.index"), code=303)


@bp.post("/signout")
def sign_out():
    signin.sign_out(wiring.keys(), wiring.browser())
    return redirect(url_for("chat.index"), code=303)


@bp.app_context_processor
def header():
    """`signin_header()` for base.html: what the header offers (asked only when sign-in is on)."""

    def signin_header():
        if getattr(session, "store_down", False):
            return None
        try:
            return signin.header(current_app.config, access.logged_in, wiring.own_key,
                                 current_app.extensions["signin_credits"])
        except StoreError:
            return None  # the store is down: the page says so, the header offers nothing

    return {"signin_header": signin_header}

"""The chat page and its JS-off sends (Post/Redirect/Get).

`GET /` opens this browser's most recent conversation, or an empty new one; `GET /new` always the
empty one (nothing is stored until its first send, which posts to `/c/new`). Each conversation has
its own page, `/c/<id>`, and the form posts back to it, so two tabs on two conversations each send
to their own. `POST /` sends to the most recent conversation (for clients without a page).
"""

from flask import Blueprint, current_app, redirect, request, session, url_for

from .. import attachments, branches, page, sending, sessions, turns
from ..limits import per_session_and_address
from . import wiring

bp = Blueprint("chat", __name__)
bp.add_app_template_filter(page.isotime, "isotime")
bp.add_app_template_filter(page.clock, "clock")
bp.add_app_template_filter(attachments.size_text, "filesize")


@bp.before_app_request
def keep_session_alive():
    """Sessions are saved only when they change (no file write on every request); touching them once
    a day keeps an active browser's session from expiring under it."""
    if request.endpoint == "static":
        return  # a static file is cached for a year: it must never carry a session cookie
    today = sessions.today()
    if ("browser" in session or "cid" in session) and session.get("day") != today:
        session["day"] = today


@bp.get("/")
def index():
    entries = wiring.browser().listed()
    if not entries:
        return wiring.render_chat(None, wiring.current(None), entries=entries)
    return conversation_page(entries[0]["id"], entries)


@bp.get("/models.json")
def models():
    """The models on offer for static/app.js, asked when the picker is first used (not part of every
    page): `{"models": {id: {"context": tokens or null, "params": "max_tokens temperature"}}}`."""
    offers = wiring.offers()
    response = current_app.json.response({"models": offers.offer(offers.models()).page_models})
    response.cache_control.private = True
    response.cache_control.max_age = 300  # the catalogue itself is fetched every 5 minutes
    return response


@bp.get("/new")
def blank():
    """An empty conversation, on `?model=` when that model is offered (New chat keeps the last one)."""
    conv = wiring.current(None)
    model, offers = request.args.get("model", ""), wiring.offers()
    if model and model in offers.offered(offers.models()):
        conv["settings"] = {"model": model}
    return wiring.render_chat(None, conv)


@bp.get("/c/<cid>")
def conversation_page(cid, entries=None):
    me = wiring.browser()
    entries = me.listed() if entries is None else entries
    me.owned(cid, entries)
    return wiring.render_chat(cid, wiring.current(cid), editing=request.args.get("edit") or False,
                              entries=entries)


@bp.get("/favicon.ico")
def favicon():
    # Browsers that ignore <link rel="icon"> still ask for /favicon.ico: answer, do not 404.
    return current_app.send_static_file("favicon.svg")


@bp.post("/")
@bp.post("/c/<cid>")
@per_session_and_address
def send(cid=None):
    """One JS-off turn: read the form, begin, wait for the whole reply, then show the page again."""
    me = wiring.browser()
    cid = me.target(cid)
    draft = request.form.get("message", "")
    try:
        outgoing = wiring.send(cid, me)
    except sending.BadInput as bad:
        kind = "hint" if bad.hint else "error"
        return wiring.render_chat(cid, wiring.current(cid), draft=draft, status=bad.status,
                                  **{kind: bad.message})
    try:
        begun = outgoing.begin(sending.QUEUE_WAIT)
    except turns.TooLong:
        return redirect(url_for("chat.conversation_page", cid=outgoing.cid, _anchor="message"), code=303)
    except (turns.Busy, turns.Stale, turns.Full) as refused:
        if isinstance(refused, turns.Busy) and not isinstance(refused, turns.QueueFull):
            outgoing.release()
        status, message = sending.refusal_for(refused)
        return wiring.render_chat(outgoing.cid, wiring.current(outgoing.cid), draft=draft, status=status,
                                  error=message)
    turns.run(wiring.store(), wiring.client(), outgoing.cid, begun.turn, begun.items,
              request=begun.request, **outgoing.options)
    return redirect(url_for("chat.conversation_page", cid=outgoing.cid, _anchor="latest"), code=303)


@bp.post("/edit")
@bp.post("/c/<cid>/edit")
def edit(cid=None):
    """JS-off Edit: show a message in the box (the one before the reply the button names; else the
    last); sending it makes a new version of it, the old one kept (Previous version)."""
    me = wiring.browser()
    cid = cid or me.latest()
    me.owned(cid)
    reply = request.form.get("reply", "")[:200] or "1"
    return redirect(url_for("chat.conversation_page", cid=cid, edit=reply, _anchor="message"), code=303)


@bp.post("/c/<cid>/versions")
def switch_version(cid):
    """Previous / Next version of a message: the whole conversation follows that branch (remembered:
    the page, the next send and the export all show it)."""
    wiring.browser().owned(cid)
    try:
        at, to = int(request.form.get("at", "")), int(request.form.get("to", ""))
    except ValueError:
        at = to = -1
    outcome = branches.switch(wiring.store(), cid, at, to)
    if outcome == "busy":
        return wiring.render_chat(cid, wiring.current(cid), status=409,
                                  error="A reply is still being written: switch versions once it has finished.")
    if outcome == "missing":
        return wiring.render_chat(cid, wiring.current(cid), status=404, error="There is no such version.")
    return redirect(url_for("chat.conversation_page", cid=cid, _anchor=f"m{at + 1}"), code=303)


@bp.post("/edit/cancel")
@bp.post("/c/<cid>/edit/cancel")
def cancel_edit(cid=None):
    """JS-off Cancel while editing: back to the conversation, nothing replaced."""
    me = wiring.browser()
    cid = cid or me.latest()
    if cid is None:
        return redirect(url_for("chat.index"), code=303)
    me.owned(cid)
    return redirect(url_for("chat.conversation_page", cid=cid, _anchor="latest"), code=303)

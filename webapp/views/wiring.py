"""What a request needs from the app, bound to it: the store, the OpenRouter client, the models on
offer, this browser (its session), a send read from the form, and the chat page rendered. Wiring
only: the logic is in plain modules (ownership, offers, sending, page, turns)."""

from flask import current_app, get_template_attribute, render_template, request, session, url_for

from .. import conversation, page, sending, sessions, turns
from ..ownership import Browser


def store():
    return current_app.extensions["chat_store"]


def client():
    return current_app.extensions["openrouter"]


def offers():
    return current_app.extensions["offers"]


def keys():
    """People's own OpenRouter keys, encrypted in the store (signin.KeyBox)."""
    return current_app.extensions["signin_keys"]


def own_key(me=None):
    """This browser's own OpenRouter key when it signed in with OpenRouter, else None."""
    if not current_app.config["SIGN_IN_WITH_OPENROUTER"]:
        return None
    bid = (me or browser()).id()
    return keys().get(bid) if bid else None


def browser():
    """This browser, as its session says (a new session id when its record is first made)."""
    return Browser(store(), session, lambda: sessions.rotate(current_app, session))


def session_mark():
    return sessions.fingerprint(session, current_app.config["SECRET_KEY"])


def current(cid):
    """The conversation to show; a dead pending turn is settled first so the page never hangs."""
    return turns.current(store(), cid) if cid else conversation.new()


def send(cid, me=None):
    """The send in this request's form, to conversation `cid` (raises sending.BadInput)."""
    me = me or browser()
    return sending.Send(request.form, cid, browser=me, store=store(), offers=offers(),
                        config=current_app.config, session_mark=session_mark,
                        files=request.files.getlist("files"), api_key=own_key(me))


def render_chat(cid, conv, *, status=200, entries=None, **shown):
    """The chat page for conversation `cid` (None: a new, empty one)."""
    context = page.chat(cid, conv, entries=browser().listed() if entries is None else entries,
                        offers=offers(), config=current_app.config,
                        article=get_template_attribute("_message.html", "article"),
                        session_mark=session_mark(),
                        edit_url=url_for("chat.edit", cid=cid) if cid else url_for("chat.edit"), **shown)
    if current_app.config["SIGN_IN_WITH_OPENROUTER"]:
        context["missing_key"] = False  # no operator key: the header offers Sign in with OpenRouter
    return render_template("chat.html", **context), status


def finished(kind, data, cid, conv=None):
    """What the page's script is told when a reply of conversation `cid` ends (page.finished), from
    `conv` as the turn stored it when this process settled it, else as the store has it now."""
    conv = conv if conv is not None else store().load(cid)
    return page.finished(kind, data, conv, offers(), current_app.config,
                         article=get_template_attribute("_message.html", "article"),
                         edit_url=url_for("chat.edit", cid=cid), cid=cid)

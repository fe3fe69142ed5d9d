"""Thin routes: read the form, call turns/store, render or redirect (Post/Redirect/Get).

JS off: the form posts to `/` and the page reloads (`send`). JS on: static/app.js posts the same form
to `/turns` and reads the reply as Server-Sent Events over that response (`stream`); `/turns/<id>`
picks a reply up again after a reload. Both run the same `turns` code.
"""

import json
import secrets
import time
from datetime import date

from flask import (Blueprint, Response, current_app, redirect, render_template, request, session,
                   stream_with_context, url_for)
from werkzeug.exceptions import RequestEntityTooLarge

from . import conversation, render, turns
from .openrouter import UpstreamError

bp = Blueprint("chat", __name__)

QUEUE_WAIT = 30.0  # seconds a send waits for the reply before it in the same conversation
BUSY = ("A reply is still being written in this conversation. Your message is kept: send it again "
        "when the reply has finished.")


def _store():
    return current_app.extensions["chat_store"]


def _client():
    return current_app.extensions["openrouter"]


def _stale_after():
    # A turn whose worker has been silent longer than any upstream read could take is dead.
    return current_app.config["OPENROUTER_READ_TIMEOUT"] + 30


def _conversation():
    cid = session.get("cid")
    return cid, (turns.current(_store(), cid, _stale_after()) if cid else conversation.new())


def render_chat(conv, *, draft="", error=None, hint=None, status=200, editing=False):
    failed = conv.get("failed")
    if failed and not draft:
        draft, error = failed["text"], error or failed["error"]
        editing = editing or failed.get("replace", False)
    shown = conversation.messages(conv)
    if editing and len(shown) >= 2 and not draft:
        draft = shown[-2]["text"]
    for m in shown:
        m["html"] = render.markdown(m["text"]) if m["role"] == "assistant" else render.plain(m["text"])
    return render_template(
        "chat.html", messages=shown, pending=conv.get("pending"), draft=draft, error=error,
        hint=hint, failed=bool(failed), editing=editing and len(shown) >= 2,
        missing_key=not current_app.config["OPENROUTER_API_KEY"],
    ), status


class BadInput(Exception):
    def __init__(self, status, message):
        self.status, self.message = status, message


def _read_message():
    """The message from the form, checked: returns (text, replace_last)."""
    text = request.form.get("message", "")
    replace = request.form.get("edit") == "1"
    if request.form.get("regenerate") == "1":
        last = conversation.messages(_conversation()[1])
        if len(last) < 2:
            raise BadInput(400, "There is no reply to regenerate yet.")
        text, replace = last[-2]["text"], True
    if not text.strip():
        raise BadInput(400, "Type a message first: an empty message is not sent.")
    limit = current_app.config["MAX_MESSAGE_CHARS"]
    if len(text) > limit:
        raise RequestEntityTooLarge(f"The message is {len(text):,} characters long; the limit is "
                                    f"{limit:,}. Nothing was sent or stored.")
    if not current_app.config["OPENROUTER_API_KEY"]:
        raise BadInput(503, UpstreamError("no_key").message)
    return text, replace


def _cid():
    if "cid" not in session:
        session["cid"] = secrets.token_urlsafe(18)
    return session["cid"]


@bp.before_app_request
def keep_session_alive():
    """Sessions are saved only when they change (no file write on every request); touching them once
    a day keeps an active browser's session from expiring under it."""
    today = date.today().toordinal()
    if "cid" in session and session.get("day") != today:
        session["day"] = today


@bp.get("/")
def index():
    _, conv = _conversation()
    return render_chat(conv, editing=request.args.get("edit") == "1")


@bp.post("/")
def send():
    try:
        text, replace = _read_message()
    except BadInput as bad:
        _, conv = _conversation()
        draft = request.form.get("message", "")
        if bad.status == 400:
            return render_chat(conv, draft=draft, hint=bad.message, status=400)
        return render_chat(conv, draft=draft, error=bad.message, status=bad.status)
    cid = _cid()
    try:
        turn, items = turns.begin(_store(), cid, text, _stale_after(), QUEUE_WAIT, replace)
    except turns.Busy:
        return render_chat(_conversation()[1], draft=text, status=409, error=BUSY)
    turns.run(_store(), _client(), cid, turn, items)
    return redirect(url_for("chat.index", _anchor="latest"), code=303)


@bp.post("/edit")
def edit():
    """JS-off Edit: show the last message in the box; sending it replaces the last turn."""
    return redirect(url_for("chat.index", edit="1", _anchor="message"), code=303)


@bp.post("/new")
def new_chat():
    cid = session.pop("cid", None)
    if cid:
        _store().delete(cid)
    return redirect(url_for("chat.index"), code=303)


@bp.post("/stop")
def stop():
    cid, conv = _conversation()
    pending = conv.get("pending")
    turn = request.form.get("turn") or (pending and pending["turn"])
    if cid and turn:
        turns.stop(_store(), cid, turn)
    if request.accept_mimetypes.best == "application/json":
        return {"stopped": True}
    return redirect(url_for("chat.index", _anchor="latest"), code=303)


# --- streaming (JS on) ----------------------------------------------------------------------------

def sse(kind, data=None):
    return f"event: {kind}\ndata: {json.dumps(data)}\n\n"


def _finished_payload(outcome_kind, data, conv):
    """What the browser needs when a reply ends: its sanitised HTML and the history size to check."""
    payload = dict(data or {})
    if outcome_kind == "done":
        payload["html"] = str(render.markdown(payload.get("text", "")))
    payload["count"] = len(conv["items"])
    return payload


def _event_stream(events, cid):
    """Relay events as SSE. Deltas are text for textContent; the final event carries server-rendered,
    sanitised HTML. A comment every 15 quiet seconds keeps proxies from cutting a long think."""
    yield ": stream open\n\n"
    for kind, value in events:
        if kind == "delta":
            yield sse("delta", value)
        elif kind in ("alive", "tick"):
            yield ": keep-alive\n\n"
        elif kind in ("snapshot", "queued"):
            yield sse(kind, value)
        elif kind in ("done", "error"):
            yield sse(kind, _finished_payload(kind, value, _store().load(cid)))
            return


def _stream_response(events, cid):
    response = Response(stream_with_context(_event_stream(events, cid)), mimetype="text/event-stream")
    response.headers["Cache-Control"] = "no-cache"
    response.headers["X-Accel-Buffering"] = "no"  # nginx: do not buffer this response
    return response


def _start_when_free(store, client, cid, text, replace, stale_after):
    """Events of a new turn; while another reply in this conversation is written, say it is queued."""
    deadline = time.monotonic() + max(QUEUE_WAIT, stale_after)
    while True:
        try:
            turn, items = turns.begin(store, cid, text, stale_after, 0, replace, streamed=True)
            break
        except turns.Busy:
            if time.monotonic() > deadline:
                yield "error", {"message": BUSY, "text": "", "kept": False, "unsent": True}
                return
            yield "queued", {"message": "Waiting for the reply before this one to finish…"}
            time.sleep(1.0)
    yield "snapshot", {"turn": turn, "text": ""}
    yield from turns.start(store, client, cid, turn, items).listen()


@bp.post("/turns")
def stream():
    try:
        text, replace = _read_message()
    except BadInput as bad:
        return {"error": bad.message}, bad.status
    cid = _cid()
    events = _start_when_free(_store(), _client(), cid, text, replace, _stale_after())
    return _stream_response(events, cid)


@bp.get("/turns/<turn>")
def resume(turn):
    """Follow a reply after a reload: live from this process's relay, or from the saved progress."""
    cid = session.get("cid")
    if not cid:
        return {"error": "No conversation."}, 404
    relay = turns.LIVE.get(turn)
    # A relay replays from the first delta, so the listener ends up with the whole text either way.
    events = relay.listen() if relay else _follow_store(_store(), cid, turn)
    return _stream_response(events, cid)


def _follow_store(store, cid, turn, every=0.3):
    """Progress saved by another worker: send what was added since the last look, until it ends."""
    sent = ""
    quiet = 0.0
    while True:
        conv = store.load(cid)
        pending = conv.get("pending")
        if not pending or pending["turn"] != turn:
            last = conversation.messages(conv)
            failed = conv.get("failed")
            if failed:
                yield "error", {"message": failed["error"], "text": "", "kept": False}
            elif last and last[-1]["role"] == "assistant":
                text = last[-1]["text"]
                if text.startswith(sent) and len(text) > len(sent):
                    yield "delta", text[len(sent):]  # the words written after the last save
                yield "done", {"text": text, "note": last[-1]["note"]}
            else:
                yield "done", {"text": "", "note": None}
            return
        partial = pending.get("partial", "")
        if partial.startswith(sent) and len(partial) > len(sent):
            yield "delta", partial[len(sent):]
            sent, quiet = partial, 0.0
        elif quiet >= 15:
            yield "tick", None
            quiet = 0.0
        time.sleep(every)
        quiet += every

"""Thin routes: read the form, call turns/store, render or redirect (Post/Redirect/Get).

JS off: the form posts to `/` and the page reloads (`send`). JS on: static/app.js posts the same form
to `/turns` and reads the reply as Server-Sent Events over that response (`stream`); `/turns/<id>`
picks a reply up again after a reload. Both run the same `turns` code.
"""

import hashlib
import json
import secrets
import time
from datetime import date, datetime, timezone

from flask import (Blueprint, Response, current_app, redirect, render_template, request, session,
                   stream_with_context, url_for)
from werkzeug.exceptions import RequestEntityTooLarge

from . import conversation, render, sessions, turns
from .limits import per_session_and_address
from .openrouter import UpstreamError

bp = Blueprint("chat", __name__)

QUEUE_WAIT = 30.0  # seconds a send waits for the reply before it in the same conversation
BUSY = ("A reply is still being written in this conversation. Your message is kept: send it again "
        "when the reply has finished.")
QUEUE_FULL = ("Another message is already waiting for the reply being written in this conversation. "
              "Yours is kept: send it when the reply has finished.")
FULL = "The server is answering as many messages as it can right now. Yours is kept: try again shortly."
TOO_MANY = ("You already have as many replies being written as one browser may. Yours is kept: send "
            "it when one has finished.")
STALE = ("The conversation changed since you pressed Edit or Regenerate (another tab or window sent "
         "a message), so nothing was replaced. Your text is kept in the box: send it as a new "
         "message, or press Edit again.")


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


def render_chat(conv, *, draft="", error=None, hint=None, notice=None, status=200, editing=False):
    failed = conv.get("failed")
    if failed and not draft:
        draft = failed["text"]
        if failed.get("stopped"):
            notice = notice or f"{failed['error']} Your message is back in the box."
        else:
            error = error or failed["error"]
        editing = editing or failed.get("replace", False)
    shown = conversation.messages(conv)
    editing = editing and len(shown) >= 2 and not conv.get("pending")
    if editing and not draft:
        draft = shown[-2]["text"]
    for m in shown:
        m["html"] = render.markdown(m["text"]) if m["role"] == "assistant" else render.plain(m["text"])
    return render_template(
        "chat.html", messages=shown, pending=conv.get("pending"), draft=draft, error=error,
        hint=hint, notice=notice, failed=bool(failed) and not failed.get("stopped"),
        editing=editing, last_reply=conversation.last_reply_id(conv), title=conversation.title(conv),
        missing_key=not current_app.config["OPENROUTER_API_KEY"],
    ), status


@bp.app_template_filter("isotime")
def isotime(epoch):
    return datetime.fromtimestamp(epoch, timezone.utc).isoformat(timespec="seconds").replace("+00:00", "Z")


@bp.app_template_filter("clock")
def clock(epoch):
    # UTC on the server; static/app.js rewrites it in the reader's own time zone.
    return datetime.fromtimestamp(epoch, timezone.utc).strftime("%H:%M UTC")


class BadInput(Exception):
    def __init__(self, status, message):
        self.status, self.message = status, message


def _read_message():
    """The message from the form, checked: returns (text, replace). `replace` is the id of the reply
    an edit or a regenerate takes the place of (the form names it, so a stale page cannot replace a
    turn it never showed); `text` is None for a regenerate (the last message is sent again)."""
    text = request.form.get("message", "")
    regenerate = request.form.get("regenerate", "")
    replace = regenerate or request.form.get("edit", "")
    if replace:  # a plain send never needs to read the conversation here
        last = conversation.last_reply_id(_conversation()[1])
        if regenerate and not last:
            raise BadInput(400, "There is no reply to regenerate yet.")
        if replace != last:
            raise BadInput(409, STALE)
    if regenerate:
        text = None
    elif not text.strip():
        raise BadInput(400, "Type a message first: an empty message is not sent.")
    limit = current_app.config["MAX_MESSAGE_CHARS"]
    if text and len(text) > limit:
        raise RequestEntityTooLarge(f"The message is {len(text):,} characters long; the limit is "
                                    f"{limit:,}. Nothing was sent or stored.")
    if not current_app.config["OPENROUTER_API_KEY"]:
        raise BadInput(503, UpstreamError("no_key").message)
    return text, replace or None


def _cid():
    """The browser's conversation id, made at its first send, when the session id is issued anew:
    an id planted in the browser before (fixation, cookie tossing) never holds its messages."""
    if "cid" not in session:
        session["cid"] = secrets.token_urlsafe(18)
        sessions.rotate(current_app, session)
    return session["cid"]


def _owner():
    """A short hash of the session id: enough to count a session's turns and to follow it in the
    logs, useless for taking the session over."""
    return hashlib.sha256(session.sid.encode()).hexdigest()[:12]


def _turn_options():
    config = current_app.config
    turns.check_capacity(config["MAX_RUNNING_TURNS"], _owner(), config["MAX_TURNS_PER_SESSION"])
    return {"owner": _owner(), "limit": config["OPENROUTER_TURN_TIMEOUT"]}


def _refusal_for(exc):
    """(status, message) for a turn that cannot start now."""
    if isinstance(exc, turns.Full):
        return (429, TOO_MANY) if exc.too_many_for_session else (503, FULL)
    if isinstance(exc, turns.Stale):
        return 409, STALE
    return 409, (QUEUE_FULL if isinstance(exc, turns.QueueFull) else BUSY)


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


@bp.get("/favicon.ico")
def favicon():
    # Browsers that ignore <link rel="icon"> still ask for /favicon.ico: answer, do not 404.
    return current_app.send_static_file("favicon.svg")


@bp.post("/")
@per_session_and_address
def send():
    draft = request.form.get("message", "")
    try:
        text, replace = _read_message()
    except BadInput as bad:
        if bad.status == 400:
            return render_chat(_conversation()[1], draft=draft, hint=bad.message, status=400)
        return render_chat(_conversation()[1], draft=draft, error=bad.message, status=bad.status)
    cid = _cid()
    waiter = secrets.token_urlsafe(9)
    try:
        options = _turn_options()
        turn, items, _ = turns.begin(_store(), cid, text, _stale_after(), QUEUE_WAIT, replace, waiter)
    except (turns.Busy, turns.Stale, turns.Full) as refused:
        if isinstance(refused, turns.Busy) and not isinstance(refused, turns.QueueFull):
            turns.release(_store(), cid, waiter)
        status, message = _refusal_for(refused)
        return render_chat(_conversation()[1], draft=draft, status=status, error=message)
    turns.run(_store(), _client(), cid, turn, items, **options)
    return redirect(url_for("chat.index", _anchor="latest"), code=303)


@bp.post("/edit")
def edit():
    """JS-off Edit: show the last message in the box; sending it replaces the last turn."""
    return redirect(url_for("chat.index", edit="1", _anchor="message"), code=303)


@bp.post("/edit/cancel")
def cancel_edit():
    """JS-off Cancel while editing: back to the conversation, nothing replaced."""
    return redirect(url_for("chat.index", _anchor="latest"), code=303)


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
    if not (cid and turn and turns.stop(_store(), cid, turn)):
        # Not a reply being written in this browser's conversation: someone else's, or finished.
        message = "There is no reply being written here to stop (it may have just finished)."
        if request.accept_mimetypes.best == "application/json":
            return {"error": message}, 404
        return render_template("error.html", code=404, title="Nothing to stop", message=message), 404
    if request.accept_mimetypes.best == "application/json":
        return {"stopped": True}
    return redirect(url_for("chat.index", _anchor="latest"), code=303)


# --- streaming (JS on) ----------------------------------------------------------------------------

KEEPALIVE = 15.0  # seconds of silence before a comment line keeps proxies from cutting the stream
HTML_EVERY = 0.3  # seconds between renders of a streaming reply's markdown, at the least


def sse(kind, data=None):
    return f"event: {kind}\ndata: {json.dumps(data)}\n\n"


class _Snapshots:
    """The markdown of a streaming reply, rendered by the server's one sanitising renderer every few
    hundred milliseconds, so the page shows formatting as it arrives. Rendering a long reply costs
    more; it is spaced out so it never takes more than a tenth of the stream's time."""

    def __init__(self):
        self.text, self.dirty, self.last, self.interval = "", False, 0.0, HTML_EVERY

    def add(self, delta):
        self.text += delta
        self.dirty = True

    def wait(self):
        """How long a listener may sleep: until the next render is due, or a keep-alive."""
        return self.interval if self.dirty else KEEPALIVE

    def due(self, now):
        if not self.dirty or now - self.last < self.interval:
            return None
        html = str(render.markdown(self.text))
        self.last, self.dirty = now, False
        self.interval = max(HTML_EVERY, 10 * (time.monotonic() - now))
        return html


def _finished_payload(outcome_kind, data, conv):
    """What the browser needs when a reply ends: its sanitised HTML, who wrote it when, the reply an
    edit or regenerate would now replace, and the history size to check."""
    payload = dict(data or {})
    if outcome_kind == "done":
        payload["html"] = str(render.markdown(payload.get("text", "")))
        shown = conversation.messages(conv)
        stored_a_reply = not payload.get("stopped") or payload.get("kept")
        if stored_a_reply and shown and shown[-1]["role"] == "assistant":
            payload.update(model=shown[-1]["model"], at=shown[-1]["at"])
    payload["count"] = len(conv["items"])
    payload["last_reply"] = conversation.last_reply_id(conv)
    return payload


def _event_stream(events, cid, snapshots):
    """Relay events as SSE. Deltas are text for textContent, at once; `html` events carry the
    sanitised rendering of the text so far; the final event carries the whole reply's HTML."""
    yield ": stream open\n\n"
    last_write = time.monotonic()
    for kind, value in events:
        now = time.monotonic()
        if kind == "delta":
            snapshots.add(value)
            yield sse("delta", value)
            last_write = now
        elif kind == "alive":
            yield ": keep-alive\n\n"  # the upstream's own keep-alive, passed on
            last_write = now
        elif kind in ("snapshot", "queued"):
            yield sse(kind, value)
        elif kind in ("done", "error"):
            yield sse(kind, _finished_payload(kind, value, _store().load(cid)))
            return
        html = snapshots.due(now)
        if html is not None:
            yield sse("html", html)
            last_write = now
        elif now - last_write >= KEEPALIVE:
            yield ": keep-alive\n\n"
            last_write = now


def _stream_response(events, cid, snapshots):
    response = Response(stream_with_context(_event_stream(events, cid, snapshots)),
                        mimetype="text/event-stream")
    response.headers["Cache-Control"] = "no-cache"
    response.headers["X-Accel-Buffering"] = "no"  # nginx: do not buffer this response
    return response


def _start_when_free(store, client, cid, text, replace, stale_after, snapshots, begun, waiter, options):
    """Events of a new turn; while another reply in this conversation is written, say it is queued
    (this send holds the conversation's one waiting place until it starts, gives up or its client
    leaves)."""
    try:
        deadline = time.monotonic() + max(QUEUE_WAIT, stale_after)
        while begun is None:
            yield "queued", {"message": "Waiting for the reply before this one to finish…"}
            time.sleep(1.0)
            try:
                begun = turns.begin(store, cid, text, stale_after, 0, replace, waiter)
            except (turns.Stale, turns.QueueFull) as refused:
                yield "error", {"message": _refusal_for(refused)[1], "text": "", "kept": False, "unsent": True}
                return
            except turns.Busy:
                if time.monotonic() > deadline:
                    yield "error", {"message": BUSY, "text": "", "kept": False, "unsent": True}
                    return
    finally:
        if begun is None:
            turns.release(store, cid, waiter)
    turn, items, _ = begun
    yield "snapshot", {"turn": turn, "text": ""}
    yield from turns.start(store, client, cid, turn, items, **options).listen(snapshots.wait)


@bp.post("/turns")
@per_session_and_address
def stream():
    try:
        text, replace = _read_message()
    except BadInput as bad:
        return {"error": bad.message}, bad.status
    cid = _cid()
    waiter = secrets.token_urlsafe(9)
    try:
        options = _turn_options()
        begun = turns.begin(_store(), cid, text, _stale_after(), 0, replace, waiter)
    except (turns.Stale, turns.QueueFull, turns.Full) as refused:
        status, message = _refusal_for(refused)
        return {"error": message}, status
    except turns.Busy:
        begun = None  # this send holds the waiting place: the stream says "queued" until it starts
    snapshots = _Snapshots()
    events = _start_when_free(_store(), _client(), cid, text, replace, _stale_after(), snapshots,
                              begun, waiter, options)
    return _stream_response(events, cid, snapshots)


@bp.get("/turns/<turn>")
def resume(turn):
    """Follow a reply after a reload: live from this process's relay, or from the saved progress.
    Only a reply of this browser's own conversation: any other id is a 404, whatever it is."""
    cid = session.get("cid")
    relay = turns.LIVE.get(turn)
    if not cid or not (relay and relay.cid == cid or _is_pending(cid, turn)):
        return {"error": "No such reply is being written in this conversation."}, 404
    snapshots = _Snapshots()
    # A relay replays from the first delta, so the listener ends up with the whole text either way.
    events = relay.listen(snapshots.wait) if relay else _follow_store(_store(), cid, turn)
    return _stream_response(events, cid, snapshots)


def _is_pending(cid, turn):
    pending = _store().load_pending(cid)
    return bool(pending and pending["turn"] == turn)


def _follow_store(store, cid, turn, every=0.3):
    """Progress saved by another worker: send what was added since the last look, until it ends."""
    sent = ""
    while True:
        conv = store.load(cid)
        pending = conv.get("pending")
        if not pending or pending["turn"] != turn:
            last = conversation.messages(conv)
            failed = conv.get("failed")
            if failed and failed.get("stopped"):
                yield turns.stopped_outcome(False, "")
            elif failed:
                yield "error", {"message": failed["error"], "text": "", "kept": False}
            elif last and last[-1]["role"] == "assistant":
                text = last[-1]["text"]
                if text.startswith(sent) and len(text) > len(sent):
                    yield "delta", text[len(sent):]  # the words written after the last save
                yield "done", {"text": text, "note": last[-1]["note"], "stopped": last[-1]["stopped"],
                               "kept": True}
            else:
                yield "done", {"text": "", "note": None}
            return
        partial = pending.get("partial", "")
        if partial.startswith(sent) and len(partial) > len(sent):
            yield "delta", partial[len(sent):]
            sent = partial
        else:
            yield "tick", None  # lets the stream send a due rendering, or a keep-alive
        time.sleep(every)

"""The JS path of a turn: static/app.js posts the chat form to `/c/<id>/turns` (`/c/new/turns` for a
new conversation) and reads the reply as Server-Sent Events over that response; `/c/<id>/turns/<turn>`
picks a reply up again after a reload; `/c/<id>/stop` stops one. The same `turns` code runs the
JS-off path. `/turns`, `/turns/<turn>` and `/stop` act on the browser's most recent conversation.
"""

import itertools
import json
import time

from flask import (Blueprint, Response, current_app, redirect, render_template, request,
                   stream_with_context, url_for)

from .. import conversation, render, sending, turns
from ..turns import relay as relays
from ..turns.events import (ALIVE, DELTA, DONE, ERROR, FINAL, HTML, QUEUED, REASONING,
                            RESUMED, STARTED, TICK)
from ..limits import per_session_and_address
from ..textsofar import TextSoFar
from . import wiring

bp = Blueprint("streaming", __name__)

KEEPALIVE = 15.0  # seconds of silence before a comment line keeps proxies from cutting the stream
HTML_EVERY = 0.3  # seconds between renders of a streaming reply's markdown, at the least
HTML_AT_MOST = 5.0  # and at the most: under any load the formatting shows within a few seconds
# The share of one core a process spends on those renders at most, however many replies stream: under
# load the formatting trails the words a little more, and the words themselves keep their pace.
RENDER_SHARE = 0.05


def sse(kind, data=None, event_id=None):
    """One Server-Sent Event. With an id, a page that reconnects asks for what came after it
    (Last-Event-ID) and gets exactly what it missed."""
    head = f"id: {event_id}\n" if event_id is not None else ""
    return f"{head}event: {kind}\ndata: {json.dumps(data)}\n\n"


class _Snapshots:
    """The markdown of a streaming reply, rendered by the server's one sanitising renderer every few
    hundred milliseconds, so the page shows formatting as it arrives (`render.Growing`: the blocks
    already finished are parsed once). Rendering is repeated for every reply streaming in this
    process at once, so renders are spaced to take at most RENDER_SHARE of one core in all: with
    `live()` replies streaming, each waits live × the last render's time ÷ RENDER_SHARE, between
    HTML_EVERY and HTML_AT_MOST (the deltas themselves are never held back). A new reply's first
    render waits that long after its first delta too (a token or two needs no formatting); a resumed
    one (`at_once`) is rendered at once, since its first delta is the whole text so far."""

    last_cost = 0.0  # seconds the last render in this process took: spaces a new reply's first one

    def __init__(self, live=lambda: len(turns.LIVE), at_once=False, text=""):
        # `text`: the reply's words a resumed stream does not send again (the page has them).
        self.words, self.dirty, self.last, self.interval = TextSoFar(text), False, None, HTML_EVERY
        self.live, self.at_once, self.rendered = live, at_once, False
        self.growing = render.Growing()  # each render parses only the reply's last blocks

    def add(self, delta):
        if self.last is None:  # the first delta: `due` spaces the first render from here
            self.last = float("-inf") if self.at_once else time.monotonic()
        self.words.add(delta)
        self.dirty = True

    def wait(self):
        """How long a listener may sleep: until the next render is due, or a keep-alive."""
        return self.interval if self.dirty else KEEPALIVE

    def due(self, now):
        if not self.dirty or now - self.last < HTML_EVERY:  # never sooner than that, whatever the spacing
            return None
        if not self.rendered and not self.at_once:
            # Spaced by the process's latest render, asked again each time: when a burst of replies
            # starts at once, the first renders push the others' later (past their end, if short).
            self.interval = self._spaced(_Snapshots.last_cost)
        if now - self.last < self.interval:
            return None
        started = time.monotonic()
        html = str(self.growing.html(str(self.words)))
        _Snapshots.last_cost = time.monotonic() - started
        self.last, self.dirty, self.rendered = now, False, True
        self.interval = self._spaced(_Snapshots.last_cost)
        return html

    def _spaced(self, cost):
        return min(HTML_AT_MOST, max(HTML_EVERY, max(1, self.live()) * cost / RENDER_SHARE))


def _event_stream(events, cid, snapshots, begun=False, batched=False, settled=lambda: None):
    """Relay events as SSE. Deltas are text for textContent, at once; `html` events carry the
    sanitised rendering of the text so far; the final event carries the whole reply's HTML.
    If the store fails on the way, the stream still ends with a message (and, when no turn began,
    with `unsent`, so the page puts the text back in the box). `begun`: a reply picked up again,
    whose turn began long before this stream. `batched`, `settled`: see `_relay`."""
    yield ": stream open\n\n"
    try:
        for chunk in _relay(events, cid, snapshots, batched, settled):
            begun = begun or chunk.startswith(f"event: {STARTED}")
            yield chunk
    except Exception:  # StoreError, a Redis error: nothing else can answer this stream now
        current_app.logger.exception("a turn's stream failed")
        yield sse(ERROR, {"message": turns.STORE_FAILED, "text": "", "kept": False,
                          "unsent": not begun})


def _relay(events, cid, snapshots, batched=False, settled=lambda: None):
    """(id, kind, data) events as SSE text: deltas at once, renderings when due, keep-alives.
    `batched` (the events of `runner.Reader`): the words and keep-alives read from the upstream
    together are held until it says CAUGHT_UP (the next read would wait), then written in one go,
    adjacent deltas as one event: a busy process that finds several upstream events waiting sends
    one write, not one per token. Nothing waits for more to come. `settled()`: the conversation as
    the turn stored it, when this process settled it (the final event is built from it, without
    reading the store again), else None."""
    last_write = time.monotonic()
    held = []
    for event_id, kind, value in events:
        if kind in (DELTA, REASONING, ALIVE):
            if kind == DELTA:
                snapshots.add(value)
            held.append((event_id, kind, value))
            if batched:
                continue
        now = time.monotonic()
        out = [sse(k, v, i) for i, k, v in relays.coalesced([e for e in held if e[1] != ALIVE])]
        if not out and held:
            out.append(": keep-alive\n\n")  # only the upstream's keep-alives: passed on, once
        held = []
        if kind in (STARTED, QUEUED, RESUMED):
            out.append(sse(kind, value, event_id))
        elif kind in FINAL:
            out.append(sse(kind, wiring.finished(kind, value, cid, settled()), event_id))
            yield "".join(out)
            return
        if out:
            yield "".join(out)  # the words first: a rendering due now never holds them back
            last_write = now
        html = snapshots.due(now)
        if html is not None:
            yield sse(HTML, html)
            last_write = now
        elif not out and now - last_write >= KEEPALIVE:
            yield ": keep-alive\n\n"
            last_write = now


def _stream_response(events, cid, snapshots, begun=False, batched=False, settled=lambda: None):
    response = Response(stream_with_context(_event_stream(events, cid, snapshots, begun, batched,
                                                          settled)), mimetype="text/event-stream")
    response.headers["Cache-Control"] = "no-cache"
    response.headers["X-Accel-Buffering"] = "no"  # nginx: do not buffer this response
    return response


def _start(send, begun, started, snapshots):
    """Run a begun turn, read by this request while its client stays (then by a thread of its own:
    the response's close hands it over), and return it; `started` lists it for that close. While
    the model pauses, the reading stops to send a rendering when one is due, or a keep-alive."""
    running = turns.start(wiring.store(), wiring.client(), send.cid, begun.turn, begun.items,
                          request=begun.request, here=True, wait=snapshots.wait, **send.options)
    started.append(running)
    return running


def _hand_over(started):
    for running in started:
        running.reader.hand_over()


def _start_when_free(send, begun, running, snapshots, started, ahead=None):
    """(id, kind, data) events of a new turn (`running`: already started, when `begun` is); while
    another reply in this conversation is written, say it is queued (this send holds the
    conversation's one waiting place until it starts, gives up or its client leaves: then no turn
    was begun)."""
    try:
        deadline = time.monotonic() + sending.queue_limit(current_app.config)
        while begun is None:
            yield None, QUEUED, {"message": "Waiting for the reply before this one to finish…",
                                 "waiter": send.waiter}
            # Up to a second on the reply before it (it starts the moment that one ends); then a
            # `queued` event again, which also shows whether this client is still there.
            turns.wait_for_end(wiring.store(), ahead, 1.0)
            try:
                begun = send.again()
            except turns.TooLong:
                yield None, ERROR, {"message": conversation.CONTEXT_FULL, "text": "", "kept": False,
                                    "context": True}
                return
            except (turns.Stale, turns.QueueFull) as refused:
                yield None, ERROR, {"message": sending.refusal_for(refused)[1], "text": "", "kept": False,
                                    "unsent": True}
                return
            except turns.Busy as busy:
                ahead = busy.turn or ahead
                if time.monotonic() > deadline:
                    yield None, ERROR, {"message": sending.BUSY, "text": "", "kept": False, "unsent": True}
                    return
    finally:
        if begun is None:
            send.release()
    running = running or _start(send, begun, started, snapshots)
    cid = send.cid
    yield None, STARTED, {"turn": begun.turn, "conversation": cid,
                          "title": conversation.short_title(begun.text),
                          "url": url_for("chat.conversation_page", cid=cid), "session": send.session_mark}
    yield from running.reader.events()


@bp.post("/turns")
@bp.post("/c/<cid>/turns")
@per_session_and_address
def stream(cid=None):
    me = wiring.browser()
    try:
        send = wiring.send(me.target(cid), me)
    except sending.BadInput as bad:
        return {"error": bad.message}, bad.status
    try:
        begun = send.begin(0)
    except turns.TooLong:
        return {"error": conversation.CONTEXT_FULL, "context": True,
                "url": url_for("chat.conversation_page", cid=send.cid)}, 400
    except (turns.Stale, turns.QueueFull, turns.Full) as refused:
        status, message = sending.refusal_for(refused)
        return {"error": message}, status
    except turns.Busy as busy:
        begun, ahead = None, busy.turn  # this send holds the waiting place: "queued" until it starts
    else:
        ahead = None
    # Started before the response is returned, and handed to a thread of its own when the response
    # closes however it ends: a client gone before the stream's first byte (or mid-reply) must not
    # leave a pending turn that nobody reads.
    started, snapshots = [], _Snapshots()
    running = _start(send, begun, started, snapshots) if begun else None
    response = _stream_response(_start_when_free(send, begun, running, snapshots, started, ahead),
                                send.cid, snapshots, batched=True,
                                settled=lambda: started[0].settled if started else None)
    response.call_on_close(lambda: _hand_over(started))
    return response


@bp.get("/turns/<turn>")
@bp.get("/c/<cid>/turns/<turn>")
def resume(turn, cid=None):
    """Follow a reply after a reload: live from this process's relay, or from the saved progress.
    Only a reply of one of this browser's conversations: any other id is a 404, whatever it is.
    With Last-Event-ID (a page reconnecting), only the events after that one."""
    me = wiring.browser()
    cid = me.target(cid)  # this browser's (else 404), or its most recent
    running = turns.LIVE.get(turn)
    if not cid or not (running and running.cid == cid or _is_pending(cid, turn) or _just_ended(cid, turn)):
        return {"error": "No such reply is being written in this conversation."}, 404
    config, owner, store = current_app.config, me.owner(), wiring.store()
    if not turns.LISTENERS.admit(turn, owner, config["MAX_LISTENERS_PER_TURN"],
                                 config["MAX_LISTENERS_PER_SESSION"]):
        return {"error": "Too many pages are following replies from this browser. Close some tabs, "
                         "then reload."}, 429
    # Where the turn's events come from: its relay here; with Redis, its stream, whichever worker or
    # host runs it (read from the progress saved last); with the file store, the saved progress.
    following = None if running else relays.following(store)
    pending = store.load_pending(cid) if following else None
    if running:
        source = running.relay
    elif pending and pending["turn"] == turn:
        start = pending.get("event_id")
        source = following.follow(turn, start, pending.get("partial", "") if start else "")
    else:
        source = following = None
    # A page that reconnects says the last event it had: it gets the events after that one, when the
    # relay has it; else everything from the first (and `resumed` tells it to start over).
    after, before = source.before(request.headers.get("Last-Event-ID")) if source else (None, "")
    snapshots = _Snapshots(at_once=True, text=before)
    if running:
        events = source.listen(after, snapshots.wait)
    elif source:
        events = _follow_elsewhere(store, cid, turn, source, after, snapshots.wait)
    else:
        events = _follow_store(store, cid, turn)
    response = _stream_response(itertools.chain([(None, RESUMED, {"after": after})], events), cid, snapshots,
                                begun=True)
    response.call_on_close(lambda: turns.LISTENERS.leave(turn, owner))  # however the stream ends
    if source is not None and following is not None:
        response.call_on_close(lambda: following.leave(turn))
    return response


def _just_ended(cid, turn):
    # A page that rendered the turn as still being written asks for it just after it ended: answer
    # with its ending (from the store) rather than a 404.
    return wiring.store().load(cid).get("last_turn") == turn


def _is_pending(cid, turn):
    pending = wiring.store().load_pending(cid)
    return bool(pending and pending["turn"] == turn)


def _still_running(store, cid, turn):
    """The turn's pending marker, or None once it has ended (a turn whose worker died is settled
    here, its text kept)."""
    pending = store.load_pending(cid)
    if pending and pending["turn"] == turn and turns.is_stale(store, pending, time.time()):
        turns.current(store, cid)
        pending = store.load_pending(cid)
    return pending if pending and pending["turn"] == turn else None


def _ending(store, cid, sent):
    """The end of a turn, from the stored conversation: the words after `sent`, then its outcome."""
    conv = store.load(cid)
    last = conversation.messages(conv)
    failed = conv.get("failed")
    if failed and failed.get("stopped"):
        yield None, *turns.stopped_outcome(False, "")
    elif failed:
        yield None, ERROR, {"message": failed["error"], "text": "", "kept": False}
    elif last and last[-1]["role"] == "assistant":
        text = last[-1]["text"]
        if text.startswith(sent) and len(text) > len(sent):
            yield None, DELTA, text[len(sent):]  # the words written after the last save
        yield None, DONE, {"text": text, "note": last[-1]["note"], "stopped": last[-1]["stopped"],
                           "kept": True}
    else:
        yield None, DONE, {"text": "", "note": None}


def _follow_elsewhere(store, cid, turn, mirror, after, tick, check_every=2.0):
    """A turn running on another worker or host, live from its Redis Stream. While it is quiet, its
    marker is looked at now and then: a turn that ended without its final event reaching the stream
    (its worker died, a Stop settled it from elsewhere) ends here from the store."""
    looked = time.monotonic()
    for event in mirror.listen(after, tick):
        yield event
        if event[1] == TICK and time.monotonic() - looked >= check_every:
            looked = time.monotonic()
            if _still_running(store, cid, turn) is None:
                yield from _ending(store, cid, mirror.text)
                return


def _follow_store(store, cid, turn, every=0.3):
    """Progress saved by another worker (file store): send what was added since the last look, until
    it ends. Each look reads only the small turn key; a turn whose worker died is settled, not
    followed forever."""
    sent = ""
    while True:
        pending = _still_running(store, cid, turn)
        if pending is None:
            yield from _ending(store, cid, sent)
            return
        partial = pending.get("partial", "")
        if partial.startswith(sent) and len(partial) > len(sent):
            yield None, DELTA, partial[len(sent):]
            sent = partial
        else:
            yield None, TICK, None  # lets the stream send a due rendering, or a keep-alive
        time.sleep(every)


@bp.post("/stop")
@bp.post("/c/<cid>/stop")
def stop(cid=None):
    cid, store = wiring.browser().target(cid), wiring.store()  # this browser's (else 404), or its latest
    waiter = request.form.get("waiter")
    if cid and waiter and not request.form.get("turn"):  # a send still waiting: it never starts
        turns.cancel_waiter(store, cid, waiter)
        return {"stopped": True}
    pending = store.load_pending(cid) if cid else None
    turn = request.form.get("turn") or (pending and pending["turn"])
    if not (cid and turn and turns.stop(store, cid, turn)):
        # Not a reply being written in this browser's conversation: someone else's, or finished.
        message = "There is no reply being written here to stop (it may have just finished)."
        if request.accept_mimetypes.best == "application/json":
            return {"error": message}, 404
        return render_template("error.html", code=404, title="Nothing to stop", message=message), 404
    if request.accept_mimetypes.best == "application/json":
        return {"stopped": True}
    return redirect(url_for("chat.conversation_page", cid=cid, _anchor="latest"), code=303)

"""One chat turn, from the user's message to a stored reply, on top of the store and the client.

    begin()    marks the turn pending (one per conversation: a second send waits, then is refused)
    execute()  reads the reply (streamed or whole), saves progress, and settles the turn exactly once:
               the user item and the reply are stored together, or the user's text is kept as `failed`
    stop()     asks the turn to end now, keeping the partial reply as an `incomplete` item

The JS-off form post runs `execute` in its request thread; the JS path runs the same `execute` in a
background thread that outlives the browser connection and publishes events on a `Relay` that any
number of listeners in this process follow. The pending marker lives in the stored conversation, so
every worker (and host) sees it; a listener in another process follows the saved partial text, and a
turn whose worker died (no heartbeat for longer than any read could take) is settled, not left hanging.
"""

import hashlib
import logging
import secrets
import threading
import time
from collections import Counter
from typing import NamedTuple

from . import conversation, render, usage
from .openrouter import StreamState, UpstreamError

log = logging.getLogger(__name__)

INTERRUPTED = "The reply was interrupted before it finished (the server restarted). Send it again."
STORE_FAILED = ("The reply could not be saved (the conversation store is unavailable). "
                "Reload in a moment: your message is recovered when the store is back.")
TICK = 0.1  # seconds between the progress saver's rounds (it also looks for Stops from other workers)
FLUSH_EVERY = 0.5  # seconds between saves of a streaming reply's progress (while few stream at once)
SAVES_PER_SECOND = 100  # at most this many progress saves a second per process, unless heartbeats need more
HEARTBEAT = 5.0  # seconds between "still alive" saves of a running turn while nothing new arrived
STALE = 30.0  # a running turn with no heartbeat for this long lost its worker
STOP_WAIT = 0.35  # seconds a Stop waits for the turn's own thread before settling it itself


class Busy(Exception):
    """Another reply is still being written in this conversation."""


# --- settling a turn --------------------------------------------------------------------------------

def _settle_partial(conv, pending, item_id, text, note, stopped=False):
    """End a turn that has only part of a reply: keep it as an `incomplete` assistant item when the
    API gave it an id and it has words, else keep the user's text for a retry (an id is never invented).
    `stopped`: the user's own choice, shown as a neutral note rather than an error."""
    if item_id and text:
        _add(conv, pending, item_id, "incomplete", text, note="stopped" if stopped else note,
             model=pending.get("model"), usage=usage.estimate_turn(conversation.sent_history(conv, pending.get("replace", False)),
                                       pending["text"], (conv.get("settings") or {}).get("instructions"),
                                       text))
    else:
        conversation.fail_turn(conv, pending["text"], conversation.STOPPED_EARLY if stopped else note,
                               pending.get("replace", False), stopped=stopped)
        conv["last_turn"] = pending["turn"]


def _add(conv, pending, item_id, status, text, html=None, **meta):
    # Rendered once, here, and kept beside the item (never in it: the items go upstream as they are):
    # a page view only assembles stored fragments.
    meta.update(html=str(html if html is not None else render.markdown(text)), rv=render.VERSION)
    if pending.get("replace"):
        # Regenerate/edit: the old last turn goes only now, once its replacement exists.
        del conv["items"][-2:], conv["meta"][-2:]
    conversation.add_turn(conv, pending["text"], item_id, status, text, **meta)
    conv["last_turn"] = pending["turn"]  # a page that still shows it writing can pick up the ending


def is_stale(pending, now):
    # Every running turn's worker saves a heartbeat every HEARTBEAT seconds, even while the model is
    # silent, so a worker's death shows after STALE seconds, not after the read timeout.
    return now - pending["beat"] > STALE


def _recover_stale(conv, now):
    pending = conv.get("pending")
    if pending and is_stale(pending, now):
        if conv.get("rev", 0) != pending.get("rev"):
            conv["pending"] = None  # its reply was stored; only clearing the marker was lost
            return
        _settle_partial(conv, pending, pending.get("item_id"), pending.get("partial", ""), INTERRUPTED)


def current(store, cid):
    """The conversation to show; a dead pending turn is settled first so the page never hangs."""
    conv = store.load(cid)
    if conv.get("pending") and is_stale(conv["pending"], time.time()):
        with store.update(cid) as conv:
            _recover_stale(conv, time.time())
    return conv


class Stale(Exception):
    """An edit or regenerate named a turn that is no longer the last one (another tab sent meanwhile)."""


class QueueFull(Busy):
    """Another send already waits for this conversation's reply: at most one waits, the rest are refused."""


class Full(Exception):
    """This process runs as many turns as it may (`too_many_for_session`: as many as one session may)."""

    def __init__(self, too_many_for_session=False):
        super().__init__()
        self.too_many_for_session = too_many_for_session


class TooLong(Exception):
    """The next turn would not fit the model's context: nothing was sent, the text is kept as failed."""


class Begun(NamedTuple):
    turn: str
    items: list  # the `input` to send: the history still sent, plus the new message
    text: str
    request: dict  # per-turn request options for the client (model, instructions, limits)


WAITER_TTL = 10.0  # a waiting send's claim lapses this long after it last looked (its client left)


def begin(store, cid, text, wait=0.0, replace=None, waiter=None, settings=None,
          plan=None):
    """Mark a new turn pending and return a `Begun`.

    While a reply is still being written here: without `waiter`, raise `Busy` at once. With one,
    claim the conversation's single waiting place for it (or `QueueFull` if another send holds it),
    look again every quarter second for up to `wait` seconds, then raise `Busy` still holding the
    place, so the caller can try again; `release` gives it up. `replace` is the id of the last
    reply, for a turn that takes the last turn's place (edit, regenerate); if that is no longer the
    last reply, raise `Stale` and change nothing. `text=None` resends the last message (regenerate).

    `settings` (the model and options the form sets) are merged into the conversation's when they
    change it. `plan(conv, history, text)` returns the request options for this turn, or None when it
    would not fit the model's context: then the text is kept as a failed turn and `TooLong` raised."""
    deadline = time.monotonic() + wait
    while True:
        too_long = False
        with store.update(cid) as conv:
            now = time.time()
            _recover_stale(conv, now)
            pending = conv["pending"]
            if not pending:
                if replace and replace != conversation.last_reply_id(conv):
                    raise Stale()
                if text is None:
                    text = conversation.item_text(conv["items"][-2])
                merged = {**(conv.get("settings") or {}), **(settings or {})}
                if merged != (conv.get("settings") or {}):
                    conv["settings"] = merged
                    conv["rev"] = conv.get("rev", 0) + 1
                history = conversation.sent_history(conv, replace=bool(replace))
                request = plan(conv, history, text) if plan else {}
                if request is None:
                    conversation.fail_turn(conv, text, conversation.CONTEXT_FULL, bool(replace),
                                           context=True)
                    too_long = True
                else:
                    if conv.get("failed"):  # this turn answers it (a Retry): not shown as failed meanwhile
                        conv["failed"] = None
                        conv["rev"] = conv.get("rev", 0) + 1
                    turn = secrets.token_urlsafe(9)
                    conv["pending"] = {"turn": turn, "text": text, "started": now, "beat": now,
                                       "partial": "", "item_id": None, "stop": False,
                                       "replace": bool(replace), "rev": conv.get("rev", 0),
                                       "model": request.get("model")}
                    return Begun(turn, [*history, conversation.user_item(text)], text, request)
            elif waiter is None:
                raise Busy()
            else:
                holder = pending.get("waiter")
                if holder and holder["id"] != waiter and holder["until"] > now:
                    raise QueueFull()
                if not holder or holder["id"] != waiter or holder["until"] - now < WAITER_TTL / 2:
                    pending["waiter"] = {"id": waiter, "until": now + WAITER_TTL}
        if too_long:
            raise TooLong()
        if time.monotonic() >= deadline:
            raise Busy()
        time.sleep(0.25)


def refuse_if_queue_full(store, cid, waiter):
    """Raise `QueueFull` at once when another send holds the conversation's waiting place: read from
    the small turn key, without the conversation's lock or its history, so a flood of sends into a
    busy conversation is refused at a fraction of a turn's cost. (`begin` checks again under the lock.)"""
    pending = store.load_pending(cid)
    holder = (pending or {}).get("waiter")
    if holder and holder["id"] != waiter and holder["until"] > time.time():
        raise QueueFull()


def release(store, cid, waiter):
    """Give up the waiting place `begin` claimed for `waiter` (the send gave up, or its client left)."""
    with store.update_pending(cid) as pending:
        if pending and (pending.get("waiter") or {}).get("id") == waiter:
            del pending["waiter"]


def cancel_waiter(store, cid, waiter):
    """The person stopped a send that was still waiting behind another reply: it must never start,
    even if that reply ends before its request notices (a worker elsewhere may be holding it)."""
    store.backend.set("cancel:" + waiter, True, 300)
    release(store, cid, waiter)


def waiter_cancelled(store, waiter):
    return bool(store.backend.get("cancel:" + waiter))


class Slot:
    """A place among the turns this process runs, reserved for one send from the moment it is
    admitted (a send queued behind another reply keeps it while it waits), until its turn runs
    (`_register` takes it over) or the send gives up (`release`)."""

    def __init__(self, owner):
        self.owner, self.held = owner, True

    def release(self):
        with _LIVE_LOCK:
            self._drop()

    def _drop(self):  # with _LIVE_LOCK held
        if self.held:
            self.held = False
            _RESERVED[self.owner] -= 1
            if _RESERVED[self.owner] <= 0:
                del _RESERVED[self.owner]


def reserve(max_running, owner, max_per_owner):
    """A `Slot` for a new turn, or `Full` when this process already runs or has reserved `max_running`
    (503), or this session `max_per_owner` here (429). Checked and reserved under the lock that
    registers turns, so sends arriving together cannot all pass the check: background turns outlive
    their requests, so gunicorn's thread count does not bound them."""
    with _LIVE_LOCK:
        if len(LIVE) + sum(_RESERVED.values()) >= max_running:
            raise Full()
        if owner and sum(1 for relay in LIVE.values() if relay.owner == owner) + _RESERVED[owner] >= max_per_owner:
            raise Full(too_many_for_session=True)
        _RESERVED[owner] += 1
    return Slot(owner)


def _settle(store, cid, turn, change):
    """Apply `change(conv, pending)` only if `turn` is still pending here (a "New chat" or a Stop from
    another worker may have settled it already: then there is nothing left to do)."""
    with store.update(cid) as conv:
        pending = conv.get("pending")
        if pending and pending["turn"] == turn:
            change(conv, pending)
            return True
    return False


def note_for(reply):
    if reply.status != "incomplete":
        return None
    return reply.incomplete_reason or "The answer was cut off before it finished."


# --- running a turn ---------------------------------------------------------------------------------

class Relay:
    """The events of one turn being written in this process; listeners replay them from the start."""

    def __init__(self, store, cid, turn, streaming=True, model=None, owner=None, limit=None):
        self.store, self.cid, self.turn, self.streaming, self.model = store, cid, turn, streaming, model
        self.owner = owner  # a hash of the session id: for per-session caps and the log line
        self.started = time.monotonic()
        # A total deadline: keep-alive comments reset the read timeout, so only this ends a turn
        # that never finishes.
        self.deadline = self.started + limit if limit else None
        self.expired = False
        self.events = []
        self.finished = False
        self.stop_requested = False
        self.state = StreamState()
        self.saved = (time.monotonic(), "")  # (when, text) of the last progress save or heartbeat
        self._cond = threading.Condition()

    def publish(self, kind, data=None, final=False):
        with self._cond:
            if self.finished:
                return  # settled already (a Stop settles without waiting for the reader)
            self.events.append((kind, data))
            self.finished = final
            self._cond.notify_all()

    def listen(self, tick=15.0):
        """Yield every event from the first; ("tick", None) after `tick` quiet seconds (a number, or
        a function asked before each wait, so a listener can wake sooner while it has work due)."""
        seen = 0
        while True:
            with self._cond:
                if seen == len(self.events) and not self.finished:
                    self._cond.wait(tick() if callable(tick) else tick)
                new, finished = self.events[seen:], self.finished
            seen += len(new)
            yield from coalesced(new)
            if finished and seen == len(self.events):
                return
            if not new:
                yield "tick", None

    def wait(self, timeout):
        with self._cond:
            return self._cond.wait_for(lambda: self.finished, timeout)

    def stop(self):
        """Stop now, in any phase: connecting, waiting for headers, thinking or streaming."""
        self.stop_requested = True
        self.state.cancel()

    def expire_if_late(self, now):
        """Past the turn's deadline: cut it, as a timeout (its words so far are kept)."""
        if self.deadline is not None and now > self.deadline and not self.finished and not self.expired:
            self.expired = True
            self.state.cancel()

    def save_progress(self, now, every=FLUSH_EVERY):
        """Save the text so far when it changed (at most every `every` seconds), else a heartbeat
        every HEARTBEAT seconds, so other workers can follow the reply and see this one is alive."""
        when, text = self.saved
        changed = self.streaming and self.state.text != text
        if self.finished or now - when < (every if changed else HEARTBEAT):
            return
        self.saved = (now, self.state.text if self.streaming else "")
        if _flush(self.store, self.cid, self.turn, self.state, self.streaming) != "running":
            self.stop()  # stopped or settled elsewhere (another worker's Stop, a New chat)

    def stop_if_asked(self):
        """Another worker flagged a Stop (or settled the turn): stop here too."""
        pending = self.store.load_pending(self.cid)
        if not pending or pending["turn"] != self.turn or pending.get("stop"):
            self.stop()


def coalesced(events):
    """Adjacent deltas as one: a listener that fell behind (a busy process, a reload replaying the
    reply) sends the same text in fewer, larger events instead of one write per token."""
    merged = []
    for kind, data in events:
        if kind == "delta" and merged and merged[-1][0] == "delta":
            merged[-1] = ("delta", merged[-1][1] + data)
        else:
            merged.append((kind, data))
    return merged


LIVE = {}  # turn id -> Relay, for turns running in this process
_RESERVED = Counter()  # owner -> slots reserved for sends not running yet (see `reserve`)
_LIVE_LOCK = threading.Lock()  # guards both


class Listeners:
    """How many streams follow replies in this process, per turn and per session (by its hash): each
    costs a connection and a reader, so one browser opening a thousand must not starve everyone."""

    def __init__(self):
        self._lock = threading.Lock()
        self.by_turn, self.by_owner = Counter(), Counter()

    def admit(self, turn, owner, per_turn, per_owner):
        """Count one more listener, or return False (and count nothing) past either cap."""
        with self._lock:
            if self.by_turn[turn] >= per_turn or self.by_owner[owner] >= per_owner:
                return False
            self.by_turn[turn] += 1
            self.by_owner[owner] += 1
            return True

    def leave(self, turn, owner):
        with self._lock:
            for counts, key in ((self.by_turn, turn), (self.by_owner, owner)):
                counts[key] -= 1
                if counts[key] <= 0:
                    del counts[key]


LISTENERS = Listeners()


def _whole(client, items, state, request):
    reply = client.respond(items, state, **request)
    state.item_id, state.text = reply.item_id, reply.text
    yield "done", reply


def execute(store, client, cid, turn, items, relay, stream=True, request=None):
    """Read the reply for a begun turn and settle it. Publishes ("delta", text), ("alive", None) and a
    final ("done", {...}) or ("error", {...}) on `relay`. `request`: the turn's request options."""
    state = relay.state
    request = request or {}
    events = client.stream(items, state, **request) if stream else _whole(client, items, state, request)
    outcome = reply = None
    try:
        for kind, value in events:
            if kind == "done":
                reply = value
                html = render.markdown(reply.text)  # outside the conversation's lock
                ok = _settle(store, cid, turn, lambda conv, pending: _add(
                    conv, pending, reply.item_id, reply.status, reply.text, html, note=note_for(reply),
                    model=reply.model, usage=reply.usage, reasoning=reply.reasoning))
                outcome = ("done", {"text": reply.text, "note": conversation.note_text(note_for(reply)),
                                    "stored": ok})
                break
            relay.publish(kind, value)
            if relay.stop_requested:
                break
    except UpstreamError as error:
        if relay.expired:
            error = UpstreamError("timeout")
        if not relay.stop_requested:
            log_failure(error, relay)
            outcome = _unless_store_fails(_failed, store, cid, turn, state, error)
    except Exception:
        log.exception("turn %s failed", turn)
        outcome = _unless_store_fails(_failed, store, cid, turn, state, UpstreamError("bad_response"))
    finally:
        events.close()  # closes the upstream connection if we left early
        if outcome is None:
            outcome = _unless_store_fails(_stopped, store, cid, turn, state)
        # Always end the listeners' streams, whatever happened above.
        relay.publish(*outcome, final=True)
        log_turn(relay, outcome, reply if outcome[0] == "done" and not outcome[1].get("stopped") else None)
    return outcome


def log_turn(relay, outcome, reply):
    """One structured line per turn for the operator: who (a hash of the session id), where, what it
    cost, how long it took and how it ended. Never message text, never the key."""
    kind, data = outcome
    usage = (reply.usage if reply else None) or {}
    ended = ("stopped" if data.get("stopped") else "failed" if kind == "error"
             else reply.status if reply else "completed")
    log.info("turn session=%s conversation=%s model=%s outcome=%s input_tokens=%s output_tokens=%s "
             "cost=%s latency_ms=%d", relay.owner or "-", logged_id(relay.cid), relay.model or "-", ended,
             usage.get("input_tokens", "-"), usage.get("output_tokens", "-"), usage.get("cost", "-"),
             (time.monotonic() - relay.started) * 1000)


def logged_id(cid):
    """A conversation as the log names it: a short hash, enough to follow one conversation's turns
    (the access log masks the id itself, which is what opens the conversation)."""
    return hashlib.sha256(cid.encode()).hexdigest()[:12]


def log_failure(error, relay):
    """One WARNING per failed turn for the operator: kind, HTTP status, model, turn. Never the key
    (UpstreamError scrubs it) and never message text."""
    extra = f" ({error.detail})" if error.kind in ("connection", "timeout") and error.detail else ""
    log.warning("upstream failure: kind=%s status=%s model=%s turn=%s%s", error.kind,
                error.status or "-", relay.model or "-", relay.turn, extra)


def _unless_store_fails(settle, store, cid, turn, state, *args):
    """Settle the turn; if even the store fails, say so (the pending turn is recovered later)."""
    try:
        return settle(store, cid, turn, state, *args)
    except Exception:
        log.exception("could not store the end of turn %s", turn)
        return "error", {"message": STORE_FAILED, "text": state.text, "kept": False}


def _flush(store, cid, turn, state, streaming=True):
    """Save the progress so far (for reloads, other workers and crash recovery); report a stop.
    Only the small turn key is read and written, and a busy lock is not waited on for long: one
    slow conversation must not hold up the heartbeats of every other turn of this process."""
    result = "gone"
    with store.update_pending(cid, lock_timeout=1.0) as pending:
        if pending and pending["turn"] == turn:
            if streaming:
                pending.update(partial=state.text, item_id=state.item_id)
            pending["beat"] = time.time()
            result = "stop" if pending.get("stop") else "running"
    return result


def _failed(store, cid, turn, state, error):
    kept = bool(state.item_id and state.text)

    def change(conv, pending):
        _settle_partial(conv, pending, state.item_id, state.text, error.message)
        if conv.get("failed") and usage.is_context_error(error.message):
            conv["failed"]["context"] = True  # the page offers the ways out of a full context

    _settle(store, cid, turn, change)
    return "error", {"message": error.message, "text": state.text, "kept": kept}


def _stopped(store, cid, turn, state):
    """Settle a turn the user stopped, from what this process has read of it."""
    text = state.text
    _settle(store, cid, turn, lambda conv, pending: _settle_partial(
        conv, pending, state.item_id, text, None, stopped=True))
    return stopped_outcome(bool(state.item_id and text), text)


def stopped_outcome(kept, text):
    note = "stopped" if kept else conversation.STOPPED_EARLY
    return "done", {"text": text if kept else "", "note": conversation.note_text(note),
                    "stopped": True, "kept": kept}


def flush_interval(live):
    """Seconds between progress saves of each of `live` streaming replies: FLUSH_EVERY while few
    stream, spaced so the process makes at most SAVES_PER_SECOND (each is a locked store write), and
    never longer than a heartbeat. A crash loses at most that much of a reply's words."""
    return min(HEARTBEAT, max(FLUSH_EVERY, live / SAVES_PER_SECOND))


def _save_progress_forever():
    """One thread per process saves the progress and heartbeat of every turn running here, and looks
    for Stops from other workers. Saving from a timer, not from the reading loop, means a reply that
    pauses mid-sentence still has its last words saved, and a silent model still has a heartbeat."""
    signal = None
    while True:
        time.sleep(TICK)
        now = time.monotonic()
        relays = list(LIVE.values())
        if not relays:
            continue
        try:
            # One small read a round, whatever the number of turns: only a changed signal makes
            # each turn here look at its own pending marker.
            latest = relays[0].store.stop_signal()
            if latest != signal:
                signal = latest
                for relay in relays:
                    relay.stop_if_asked()
        except Exception:
            log.warning("could not check for stopped turns", exc_info=True)
        every = flush_interval(len(relays))
        for relay in relays:
            relay.expire_if_late(now)
            try:
                relay.save_progress(now, every)
            except Exception:  # a store hiccup: the next round tries again
                log.warning("could not save the progress of turn %s", relay.turn, exc_info=True)


_saver = None


def _register(store, cid, turn, streaming=True, model=None, owner=None, limit=None, slot=None):
    global _saver
    relay = Relay(store, cid, turn, streaming, model, owner, limit)
    with _LIVE_LOCK:
        if slot is not None:
            slot._drop()  # the running turn takes the reserved place, under the same lock
        LIVE[turn] = relay
        if _saver is None or not _saver.is_alive():  # started lazily: after gunicorn's fork
            _saver = threading.Thread(target=_save_progress_forever, name="progress", daemon=True)
            _saver.start()
    return relay


def _run(store, client, cid, turn, items, relay, stream, request):
    try:
        return execute(store, client, cid, turn, items, relay, stream, request)
    finally:
        with _LIVE_LOCK:
            LIVE.pop(turn, None)


def run(store, client, cid, turn, items, owner=None, limit=None, request=None, slot=None):
    """Run a begun turn in this thread with a whole (non-streamed) reply: the JS-off form post."""
    model = (request or {}).get("model") or client.model
    relay = _register(store, cid, turn, False, model, owner, limit, slot)
    return _run(store, client, cid, turn, items, relay, False, request)


def start(store, client, cid, turn, items, owner=None, limit=None, request=None, slot=None):
    """Run a begun turn, streamed, in a background thread that outlives the request; return its Relay."""
    model = (request or {}).get("model") or client.model
    relay = _register(store, cid, turn, True, model, owner, limit, slot)
    # Not a daemon, said outright (a thread started from a gevent greenlet would inherit daemon=True):
    # on a graceful shutdown the interpreter waits for replies still being written.
    threading.Thread(target=_run, args=(store, client, cid, turn, items, relay, True, request),
                     name=f"turn-{turn}", daemon=False).start()
    return relay


def stop(store, cid, turn, wait=STOP_WAIT):
    """Stop a turn of conversation `cid` wherever it runs, and return once it is settled (well under
    a second); False if `turn` is not being written in `cid` (another's turn, or already finished).

    Here: cancel its request (any phase) and let its thread settle it with every word it read; if
    that thread is still stuck (a connect in progress), settle it now from what it has read.
    Elsewhere: flag it in the store and signal the other workers, whose progress saver stops it
    within a round; if none does in time, settle it here from the saved progress."""
    relay = LIVE.get(turn)
    if relay and relay.cid == cid:
        relay.stop()
        if not relay.wait(wait):
            relay.publish(*_unless_store_fails(_stopped, store, cid, turn, relay.state), final=True)
        return True
    with store.update_pending(cid) as pending:
        if not pending or pending["turn"] != turn:
            return False
        pending["stop"] = True
    store.signal_stop()
    deadline = time.monotonic() + wait
    while time.monotonic() < deadline:
        pending = store.load_pending(cid)
        if not pending or pending["turn"] != turn:
            return True
        time.sleep(0.05)
    _settle(store, cid, turn, lambda conv, pending: _settle_partial(
        conv, pending, pending.get("item_id"), pending.get("partial", ""), None, stopped=True))
    return True

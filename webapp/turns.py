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

import logging
import secrets
import threading
import time

from . import conversation
from .openrouter import StreamState, UpstreamError

log = logging.getLogger(__name__)

INTERRUPTED = "The reply was interrupted before it finished (the server restarted). Send it again."
STOPPED_EARLY = "Stopped before the model wrote anything."
STORE_FAILED = ("The reply could not be saved (the conversation store is unavailable). "
                "Reload in a moment: your message is recovered when the store is back.")
FLUSH_EVERY = 0.5  # seconds between saves of a streaming reply's progress
HEARTBEAT = 2.0  # seconds between "still alive" saves (and stop checks) while the model is silent
STREAM_STALE = 30.0  # a streamed turn with no heartbeat for this long lost its worker


class Busy(Exception):
    """Another reply is still being written in this conversation."""


# --- settling a turn --------------------------------------------------------------------------------

def _settle_partial(conv, pending, item_id, text, note):
    """End a turn that has only part of a reply: keep it as an `incomplete` assistant item when the
    API gave it an id, else keep the user's text as a failed message (an id is never invented)."""
    if item_id:
        _add(conv, pending, item_id, "incomplete", text, note=note)
    else:
        conversation.fail_turn(conv, pending["text"], note, pending.get("replace", False))


def _add(conv, pending, item_id, status, text, **meta):
    if pending.get("replace"):
        # Regenerate/edit: the old last turn goes only now, once its replacement exists.
        del conv["items"][-2:], conv["meta"][-2:]
    conversation.add_turn(conv, pending["text"], item_id, status, text, **meta)


def _is_stale(pending, stale_after, now):
    # A streamed turn's worker saves a heartbeat every HEARTBEAT seconds, even while the model is
    # silent, so its death shows sooner than a whole reply's, which only has the read timeout.
    limit = min(stale_after, STREAM_STALE) if pending.get("streamed") else stale_after
    return now - pending["beat"] > limit


def _recover_stale(conv, stale_after, now):
    pending = conv.get("pending")
    if pending and _is_stale(pending, stale_after, now):
        if conv.get("rev", 0) != pending.get("rev"):
            conv["pending"] = None  # its reply was stored; only clearing the marker was lost
            return
        _settle_partial(conv, pending, pending.get("item_id"), pending.get("partial", ""), INTERRUPTED)


def current(store, cid, stale_after):
    """The conversation to show; a dead pending turn is settled first so the page never hangs."""
    conv = store.load(cid)
    if conv.get("pending") and _is_stale(conv["pending"], stale_after, time.time()):
        with store.update(cid) as conv:
            _recover_stale(conv, stale_after, time.time())
    return conv


def begin(store, cid, text, stale_after, wait=0.0, replace=False, streamed=False):
    """Mark a new turn pending and return `(turn_id, input_items)`. Waits up to `wait` seconds for a
    reply that is still being written, then raises `Busy`. `replace` resends in place of the last turn."""
    deadline = time.monotonic() + wait
    while True:
        with store.update(cid) as conv:
            now = time.time()
            _recover_stale(conv, stale_after, now)
            if not conv["pending"]:
                replace = replace and len(conv["items"]) >= 2
                turn = secrets.token_urlsafe(9)
                conv["pending"] = {"turn": turn, "text": text, "started": now, "beat": now,
                                   "partial": "", "item_id": None, "stop": False, "replace": replace,
                                   "rev": conv.get("rev", 0), "streamed": streamed}
                history = {"items": conv["items"][:-2] if replace else conv["items"]}
                return turn, conversation.input_items(history, text)
        if time.monotonic() >= deadline:
            raise Busy()
        time.sleep(0.1)


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

    def __init__(self, store, cid, turn, streaming=True):
        self.store, self.cid, self.turn, self.streaming = store, cid, turn, streaming
        self.events = []
        self.finished = False
        self.stop_requested = False
        self.state = StreamState()
        self.saved = (0.0, None)  # (when, text) of the last progress save
        self._cond = threading.Condition()

    def publish(self, kind, data=None, final=False):
        with self._cond:
            self.events.append((kind, data))
            self.finished = self.finished or final
            self._cond.notify_all()

    def listen(self, tick=15.0):
        """Yield every event from the first; ("tick", None) after `tick` quiet seconds (for keep-alives)."""
        seen = 0
        while True:
            with self._cond:
                if seen == len(self.events) and not self.finished:
                    self._cond.wait(tick)
                new, finished = self.events[seen:], self.finished
            seen += len(new)
            yield from new
            if finished and seen == len(self.events):
                return
            if not new:
                yield "tick", None

    def wait(self, timeout):
        with self._cond:
            return self._cond.wait_for(lambda: self.finished, timeout)

    def stop(self):
        """Stop now: unblock the reader even while the model is silent (it may think for minutes)."""
        self.stop_requested = True
        self.state.cancel()

    def save_progress(self, now):
        """Save the text so far when it changed (at most every FLUSH_EVERY seconds), else a heartbeat
        every HEARTBEAT seconds; either way learn whether a Stop from another worker arrived."""
        when, text = self.saved
        changed = self.state.text != text
        if not self.streaming or self.finished or now - when < (FLUSH_EVERY if changed else HEARTBEAT):
            return  # a whole (non-streamed) reply has no progress to save and ends within the timeout
        self.saved = (now, self.state.text)
        if _flush(self.store, self.cid, self.turn, self.state) != "running":
            self.stop()  # stopped or settled elsewhere (another worker's Stop, a New chat)


LIVE = {}  # turn id -> Relay, for turns running in this process
_LIVE_LOCK = threading.Lock()


def _whole(client, items, state):
    reply = client.respond(items)
    state.item_id, state.text = reply.item_id, reply.text
    yield "done", reply


def execute(store, client, cid, turn, items, relay, stream=True):
    """Read the reply for a begun turn and settle it. Publishes ("delta", text), ("alive", None) and a
    final ("done", {...}) or ("error", {...}) on `relay`."""
    state = relay.state
    events = client.stream(items, state) if stream else _whole(client, items, state)
    outcome = None
    try:
        for kind, value in events:
            if kind == "done":
                reply = value
                ok = _settle(store, cid, turn, lambda conv, pending: _add(
                    conv, pending, reply.item_id, reply.status, reply.text, note=note_for(reply),
                    model=reply.model, usage=reply.usage))
                outcome = ("done", {"text": reply.text, "note": conversation.note_text(note_for(reply)),
                                    "stored": ok})
                break
            relay.publish(kind, value)
            if relay.stop_requested:
                break
    except UpstreamError as error:
        if not relay.stop_requested:
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
    return outcome


def _unless_store_fails(settle, store, cid, turn, state, *args):
    """Settle the turn; if even the store fails, say so (the pending turn is recovered later)."""
    try:
        return settle(store, cid, turn, state, *args)
    except Exception:
        log.exception("could not store the end of turn %s", turn)
        return "error", {"message": STORE_FAILED, "text": state.text, "kept": False}


def _flush(store, cid, turn, state):
    """Save the progress so far (for reloads, other workers and crash recovery); report a stop."""
    result = "gone"
    with store.update(cid) as conv:
        pending = conv.get("pending")
        if pending and pending["turn"] == turn:
            pending.update(partial=state.text, item_id=state.item_id, beat=time.time())
            result = "stop" if pending.get("stop") else "running"
    return result


def _failed(store, cid, turn, state, error):
    kept = bool(state.item_id)
    _settle(store, cid, turn, lambda conv, pending: _settle_partial(
        conv, pending, state.item_id, state.text, error.message))
    return "error", {"message": error.message, "text": state.text, "kept": kept}


def _stopped(store, cid, turn, state):
    note = "stopped" if state.item_id else STOPPED_EARLY
    _settle(store, cid, turn, lambda conv, pending: _settle_partial(
        conv, pending, state.item_id, state.text, note))
    return "done", {"text": state.text, "note": conversation.note_text(note),
                    "stopped": True, "kept": bool(state.item_id)}


def _save_progress_forever():
    """One thread per process saves the progress of every turn running here. Saving from a timer,
    not from the reading loop, means a reply that pauses mid-sentence still has its last words saved."""
    while True:
        time.sleep(FLUSH_EVERY / 2)
        now = time.monotonic()
        for relay in list(LIVE.values()):
            try:
                relay.save_progress(now)
            except Exception:  # a store hiccup: the next round tries again
                log.warning("could not save the progress of turn %s", relay.turn, exc_info=True)


_saver = None


def _register(store, cid, turn, streaming=True):
    global _saver
    relay = Relay(store, cid, turn, streaming)
    with _LIVE_LOCK:
        LIVE[turn] = relay
        if _saver is None or not _saver.is_alive():  # started lazily: after gunicorn's fork
            _saver = threading.Thread(target=_save_progress_forever, name="progress", daemon=True)
            _saver.start()
    return relay


def _run(store, client, cid, turn, items, relay, stream):
    try:
        return execute(store, client, cid, turn, items, relay, stream)
    finally:
        with _LIVE_LOCK:
            LIVE.pop(turn, None)


def run(store, client, cid, turn, items):
    """Run a begun turn in this thread with a whole (non-streamed) reply: the JS-off form post."""
    return _run(store, client, cid, turn, items, _register(store, cid, turn, False), stream=False)


def start(store, client, cid, turn, items):
    """Run a begun turn, streamed, in a background thread that outlives the request; return its Relay."""
    relay = _register(store, cid, turn)
    # Not a daemon: on a graceful shutdown the interpreter waits for replies still being written.
    threading.Thread(target=_run, args=(store, client, cid, turn, items, relay, True),
                     name=f"turn-{turn}").start()
    return relay


def stop(store, cid, turn, wait=3.0):
    """Stop a turn wherever it runs. Here: cancel it directly. Elsewhere: flag it in the store and let
    its worker settle it; if that worker does not answer in time, settle it from the saved progress."""
    relay = LIVE.get(turn)
    if relay:
        relay.stop()
        relay.wait(wait)
        return
    if not _settle(store, cid, turn, lambda conv, pending: pending.update(stop=True)):
        return
    deadline = time.monotonic() + wait
    while time.monotonic() < deadline:
        pending = store.load(cid).get("pending")
        if not pending or pending["turn"] != turn:
            return
        time.sleep(0.1)
    _settle(store, cid, turn, lambda conv, pending: _settle_partial(
        conv, pending, pending.get("item_id"), pending.get("partial", ""), "stopped"))

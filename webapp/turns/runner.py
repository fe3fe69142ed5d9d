"""Running a begun turn: reading the reply from upstream (streamed or whole), publishing its events on
the turn's relay, saving its progress and heartbeat, stopping it in any phase, and settling it exactly
once (settle.py). The JS-off form post runs a turn in its request thread (`run`); the streamed path
is read by the request that began it while its browser stays, then by a thread of its own that
outlives the browser connection (`start`, `Reader`), so closing the tab never loses a reply."""

import hashlib
import logging
import threading
import time

from .. import attachments, conversation, render
from ..openrouter import StreamState, UpstreamError
from . import admission, settle
from .daemons import ProcessThread
from .events import CAUGHT_UP, DONE, ERROR, IDLE, TICK as QUIET
from . import relay as relays

log = logging.getLogger(__name__)

TICK = 0.1  # seconds between the progress saver's rounds (it also looks for Stops from other workers)
FLUSH_EVERY = 0.5  # seconds between saves of a streaming reply's progress (while few stream at once)
SAVES_PER_SECOND = 100  # at most this many progress saves a second per process, unless heartbeats need more
VISITS_PER_SAVE = 5  # rounds that look at each turn per save interval (so a save is at most a fifth late)
HEARTBEAT = 5.0  # seconds between "still alive" saves of a running turn while nothing new arrived
STOP_WAIT = 0.35  # seconds a Stop waits for the turn's own thread before settling it itself


class Turn:
    """A turn running in this process: its upstream request (`state`, which can cancel it in any
    phase), its deadline, its progress saves, and the relay its events go out on."""

    def __init__(self, store, cid, turn, streaming=True, model=None, owner=None, limit=None):
        self.store, self.cid, self.turn, self.streaming, self.model = store, cid, turn, streaming, model
        self.owner = owner  # a hash of the session id: for per-session caps and the log line
        self.started = time.monotonic()
        # A total deadline: keep-alive comments reset the read timeout, so only this ends a turn
        # that never finishes.
        self.deadline = self.started + limit if limit else None
        self.expired = False
        self.stop_requested = False
        self.state = StreamState()
        self.saved = (time.monotonic(), "")  # (when, text) of the last progress save or heartbeat
        self.relay = relays.for_turn(store, turn)
        self.outcome = None  # (kind, data) of its final event, once settled
        self.settled = None  # the conversation as its reply was stored (for its final event here)
        self.reader = None  # a `Reader`, when the request that began it reads the reply

    @property
    def finished(self):
        return self.relay.finished

    def publish(self, kind, data=None, final=False):
        self.relay.publish(kind, data, final)

    def wait(self, timeout):
        """True once the turn has ended (its final event is out), False after `timeout` seconds."""
        return self.relay.wait(timeout)

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
        if flush(self) != "running":
            self.stop()  # stopped or settled elsewhere (another worker's Stop, a New chat)

    def stop_if_asked(self):
        """Another worker flagged a Stop (or settled the turn): stop here too."""
        pending = self.store.load_pending(self.cid)
        if not pending or pending["turn"] != self.turn or pending.get("stop"):
            self.stop()


def _events(store, client, running, items, stream, request, idle=None):
    """The turn's upstream events; its attachments' bytes are read from the store here, in the
    turn's own thread (never in a page view)."""
    try:
        items = attachments.wire(items, lambda sha: running.store.get_file(running.cid, sha))
    except attachments.Missing as missing:
        raise UpstreamError("missing_file", detail=str(missing)) from None
    state = running.state
    yield from (client.stream(items, state, idle=idle, **request) if stream
                else _whole(client, items, state, request))


def _whole(client, items, state, request):
    reply = client.respond(items, state, **request)
    state.item_id, state.text = reply.item_id, reply.text
    yield DONE, reply


def reading(store, client, running, items, stream=True, request=None, idle=None):
    """Read the reply of the begun turn `running` and settle it, one upstream event at a time: each
    is published on its relay ("delta", text), ("alive", None) …, then yielded (so whoever drives
    this reads the reply: a thread of its own, or the request that began it, `Reader`); at the end
    the final ("done", {...}) or ("error", {...}) is published and kept as `running.outcome`.
    `request`: the turn's request options. `idle()`: how long its reader would wait for the next
    upstream event before doing something else (("idle", None) is then yielded, never published)."""
    cid, turn, state = running.cid, running.turn, running.state
    request = request or {}
    events = _events(store, client, running, items, stream, request, idle)
    outcome = reply = None
    try:
        for kind, value in events:
            if kind == DONE:
                reply = value
                html = render.markdown(reply.text)  # outside the conversation's lock
                running.settled = settle.settle(store, cid, turn, lambda conv, pending: settle.add_reply(
                    conv, pending, reply.item_id, reply.status, reply.text, html,
                    note=settle.note_for(reply), model=reply.model, usage=reply.usage,
                    reasoning=reply.reasoning, annotations=reply.annotations))
                outcome = (DONE, {"text": reply.text, "stored": running.settled is not None,
                                  "note": conversation.note_text(settle.note_for(reply))})
                break
            if kind != IDLE and kind != CAUGHT_UP:
                running.publish(kind, value)
            yield kind, value
            if running.stop_requested:
                break
    except UpstreamError as error:
        if running.expired:
            error = UpstreamError("timeout")
        if not running.stop_requested:
            log_failure(error, running)
            outcome = settle.unless_store_fails(settle.failed, store, cid, turn, state, error)
    except Exception:
        log.exception("turn %s failed", turn)
        outcome = settle.unless_store_fails(settle.failed, store, cid, turn, state,
                                            UpstreamError("bad_response"))
    finally:
        events.close()  # closes the upstream connection if we left early
        if outcome is None:
            outcome = settle.unless_store_fails(settle.stopped, store, cid, turn, state)
        # Always end the followers' streams, whatever happened above.
        running.publish(*outcome, final=True)
        running.outcome = outcome
        log_turn(running, outcome, reply if outcome[0] == DONE and not outcome[1].get("stopped") else None)


def log_turn(running, outcome, reply):
    """One structured line per turn for the operator: who (a hash of the session id), where, what it
    cost, how long it took and how it ended. Never message text, never the key."""
    kind, data = outcome
    usage = (reply.usage if reply else None) or {}
    ended = ("stopped" if data.get("stopped") else "failed" if kind == ERROR
             else reply.status if reply else "completed")
    log.info("turn session=%s conversation=%s model=%s outcome=%s input_tokens=%s output_tokens=%s "
             "cost=%s latency_ms=%d", running.owner or "-", logged_id(running.cid), running.model or "-",
             ended, usage.get("input_tokens", "-"), usage.get("output_tokens", "-"), usage.get("cost", "-"),
             (time.monotonic() - running.started) * 1000)


def logged_id(cid):
    """A conversation as the log names it: a short hash, enough to follow one conversation's turns
    (the access log masks the id itself, which is what opens the conversation)."""
    return hashlib.sha256(cid.encode()).hexdigest()[:12]


def log_failure(error, running):
    """One WARNING per failed turn for the operator: kind, HTTP status, model, turn. Never the key
    (UpstreamError scrubs it) and never message text."""
    extra = f" ({error.detail})" if error.kind in ("connection", "timeout") and error.detail else ""
    log.warning("upstream failure: kind=%s status=%s model=%s turn=%s%s", error.kind,
                error.status or "-", running.model or "-", running.turn, extra)


def flush(running):
    """Save the progress so far (for reloads, other workers and crash recovery); report a stop.
    With the words, the id of the relay's event they end at: a follower elsewhere starts from them
    and reads the relay on from there (a capped stream no longer holds the start). Only the small
    turn key is read and written, and a busy lock is not waited on for long: one slow conversation
    must not hold up the heartbeats of every other turn of this process."""
    result = "gone"
    with running.store.update_pending(running.cid, lock_timeout=1.0) as pending:
        if pending and pending["turn"] == running.turn:
            if running.streaming:
                event_id, text = running.relay.position()
                pending.update(partial=text, item_id=running.state.item_id, event_id=event_id)
            pending["beat"] = time.time()
            result = "stop" if pending.get("stop") else "running"
    if result == "running" and pending.get("alive_key"):
        running.store.keep_alive(running.turn, settle.STALE)  # Redis: alive for STALE more seconds
    return result


def flush_interval(live):
    """Seconds between progress saves of each of `live` streaming replies: FLUSH_EVERY while few
    stream, spaced so the process makes at most SAVES_PER_SECOND (each is a locked store write), and
    never longer than a heartbeat. A crash loses at most that much of a reply's words."""
    return min(HEARTBEAT, max(FLUSH_EVERY, live / SAVES_PER_SECOND))


def _save_progress_forever():
    """One thread per process saves the progress and heartbeat of every turn running here, and looks
    for Stops from other workers. Saving from a timer, not from the reading loop, means a reply that
    pauses mid-sentence still has its last words saved, and a silent model still has a heartbeat."""
    signal, next_visit = None, 0.0
    while True:
        time.sleep(TICK)
        now = time.monotonic()
        running = list(admission.LIVE.values())
        if not running:
            continue
        try:
            # File store: one small read a round, whatever the number of turns: only a changed
            # signal makes each turn here look at its own pending marker. (With Redis, Stops come
            # over pub/sub: `_stop_here`.)
            if not relays.listens_for_stops(running[0].store):
                latest = running[0].store.stop_signal()
                if latest != signal:
                    signal = latest
                    for one in running:
                        one.stop_if_asked()
        except Exception:
            log.warning("could not check for stopped turns", exc_info=True)
        every = flush_interval(len(running))
        if now < next_visit:
            continue
        # Each turn is looked at a few times per save interval, not every round: with hundreds of
        # turns running, visiting them all ten times a second would cost more than the saves.
        next_visit = now + every / VISITS_PER_SAVE
        for one in running:
            one.expire_if_late(now)
            try:
                one.save_progress(now, every)
            except Exception:  # a store hiccup: the next round tries again
                log.warning("could not save the progress of turn %s", one.turn, exc_info=True)


_saver = ProcessThread(_save_progress_forever, "progress")


def register(store, cid, turn, streaming=True, model=None, owner=None, limit=None, slot=None):
    """A `Turn` listed as running in this process, in the place `slot` reserved for it."""
    running = Turn(store, cid, turn, streaming, model, owner, limit)
    relays.listen_for_stops(store, _stop_here)
    _saver.ensure()  # outside the lock below: starting a thread waits for it to start
    with admission.LOCK:
        if slot is not None:
            slot.drop_locked()  # the running turn takes the reserved place, under the same lock
        admission.LIVE[turn] = running
        admission.RUNNING[owner] += 1
    return running


def _listed(running, steps):
    """`steps` (a turn's `reading`), after which the turn leaves this process's list of turns."""
    try:
        yield from steps
    finally:
        with admission.LOCK:
            if admission.LIVE.pop(running.turn, None) is not None:
                admission.RUNNING[running.owner] -= 1
                if admission.RUNNING[running.owner] <= 0:
                    del admission.RUNNING[running.owner]


def _drain(steps):
    for _ in steps:
        pass


def run(store, client, cid, turn, items, owner=None, limit=None, request=None, slot=None):
    """Run a begun turn in this thread with a whole (non-streamed) reply: the JS-off form post."""
    model = (request or {}).get("model") or client.model
    running = register(store, cid, turn, False, model, owner, limit, slot)
    _drain(_listed(running, reading(store, client, running, items, False, request)))
    return running.outcome


class Reader:
    """Who reads a streamed turn's reply. The request that began the turn, while its browser stays:
    `events()` reads the upstream in that request's own thread and gives each event to its stream
    as it is read (no hand-off from another thread for every word). Once that request ends first
    (the tab closed, the stream cut, or its client gone before the stream began), `hand_over()`
    (called when the response closes) has a thread of its own read the rest, so closing the tab
    never loses a reply. Everyone else follows the turn on its relay."""

    def __init__(self, running, wait=None):
        self.running, self.steps, self._wait = running, None, wait
        self._lock = threading.Lock()
        self._taken = False  # the request's stream reads (or has read) here
        self._handed = False
        self._exhausted = False

    def idle(self):
        """How long the request reading here would wait for the upstream's next event before it
        does something else (a rendering due, a keep-alive): `wait()`, while it reads."""
        return None if self._handed or self._wait is None else self._wait()

    def events(self):
        """(id, kind, data) of the turn's events, each as soon as the upstream sends it, to the end;
        (None, "caught_up", None) whenever all the upstream had sent is read (what the stream holds
        goes out then: events read together are written together), and (None, "tick", None)
        whenever the upstream stayed quiet for `idle()` seconds."""
        with self._lock:
            following = self._taken or self._handed  # (not expected: one stream reads) follow it
            self._taken = True
        if following:
            for event in self.running.relay.listen():
                yield event
                yield None, CAUGHT_UP, None
            return
        relay, seen = self.running.relay, 0
        for kind, _ in self.steps:
            new, seen = relay.since(seen)
            yield from new
            if kind == CAUGHT_UP:
                yield None, CAUGHT_UP, None
            elif kind == IDLE and not new:
                yield None, QUIET, None
        self._exhausted = True
        new, seen = relay.since(seen)
        yield from new

    def hand_over(self):
        """The request is over: read whatever is left of the reply in a thread of its own."""
        with self._lock:
            if self._handed or self._exhausted:
                return
            self._handed = True
        _background(self.running, self.steps)


def _background(running, steps):
    # Not a daemon, said outright (a thread started from a gevent greenlet would inherit daemon=True):
    # on a graceful shutdown the interpreter waits for replies still being written.
    threading.Thread(target=_drain, args=(steps,), name=f"turn-{running.turn}", daemon=False).start()


def start(store, client, cid, turn, items, owner=None, limit=None, request=None, slot=None, here=False,
          wait=None):
    """Run a begun turn, streamed, and return its `Turn` (its `relay` is what followers listen to).
    In a background thread that outlives the request; or, `here`, read by the request that began
    it while it stays (`Turn.reader`: the caller streams `reader.events()` and must call
    `reader.hand_over()` when its response closes, however it ends). `wait()`: how long that
    request would wait for the upstream before it has something else to do (a TICK comes then)."""
    model = (request or {}).get("model") or client.model
    running = register(store, cid, turn, True, model, owner, limit, slot)
    if here:
        running.reader = Reader(running, wait)
        running.reader.steps = _listed(running, reading(store, client, running, items, True, request,
                                                        idle=running.reader.idle))
    else:
        _background(running, _listed(running, reading(store, client, running, items, True, request)))
    return running


def stop(store, cid, turn, wait=STOP_WAIT):
    """Stop a turn of conversation `cid` wherever it runs, and return once it is settled (well under
    a second); False if `turn` is not being written in `cid` (another's turn, or already finished).

    Here: cancel its request (any phase) and let its thread settle it with every word it read; if
    that thread is still stuck (a connect in progress), settle it now from what it has read.
    Elsewhere: flag it in the store and signal the other workers, whose progress saver stops it
    within a round; if none does in time, settle it here from the saved progress."""
    running = admission.LIVE.get(turn)
    if running and running.cid == cid:
        running.stop()
        if not running.wait(wait):
            running.publish(*settle.unless_store_fails(settle.stopped, store, cid, turn, running.state),
                            final=True)
        return True
    with store.update_pending(cid) as pending:
        if not pending or pending["turn"] != turn:
            return False
        pending["stop"] = True  # also for a worker that misses the signal: its next save sees it
    if not _stop_elsewhere(store, cid, turn, wait):
        settle.settle(store, cid, turn, lambda conv, pending: settle.keep_partial(
            conv, pending, pending.get("item_id"), pending.get("partial", ""), None, stopped=True))
    return True


def _stop_elsewhere(store, cid, turn, wait):
    """Signal the worker running `turn` elsewhere, and wait up to `wait` seconds for it to settle
    the turn. With Redis: a pub/sub message, and its final event awaited on the turn's stream. With
    files: the signal key every worker reads, and the pending marker looked at again meanwhile."""
    following = relays.following(store)
    if following is not None:
        mirror = following.follow(turn)  # first, so the final event cannot pass unseen
        try:
            relays.publish_stop(store, turn)
            return mirror.wait(wait)
        finally:
            following.leave(turn)
    store.signal_stop()
    deadline = time.monotonic() + wait
    while time.monotonic() < deadline:  # files offer nothing to wait on across processes
        pending = store.load_pending(cid)
        if not pending or pending["turn"] != turn:
            return True
        time.sleep(0.05)
    return False


def _stop_here(turn):
    """A Stop heard over pub/sub: stop the turn if it runs in this process."""
    running = admission.LIVE.get(turn)
    if running is not None:
        running.stop()

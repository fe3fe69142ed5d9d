"""Admission: whether a send may become a turn, and when. One turn at a time per conversation (its
pending marker, in the store, so every worker and host sees it), one send waiting behind it (the
waiting place), and this process's capacity (`reserve`: a place among the turns it runs, taken under
the lock that registers them) and its followers (`Listeners`). No HTTP, no Flask."""

import secrets
import threading
import time
from collections import Counter
from typing import NamedTuple

from .. import attachments, conversation
from . import relay
from .settle import STALE, recover_stale


class Busy(Exception):
    """Another reply is still being written in this conversation (`turn`, when known)."""

    def __init__(self, turn=None):
        super().__init__()
        self.turn = turn


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
          plan=None, files=None):
    """Mark a new turn pending and return a `Begun`.

    While a reply is still being written here: without `waiter`, raise `Busy` at once. With one,
    claim the conversation's single waiting place for it (or `QueueFull` if another send holds it),
    wait for the reply before it for up to `wait` seconds, then raise `Busy` still holding the
    place, so the caller can try again; `release` gives it up. Meanwhile it waits on the reply
    before it (`wait_for_end`), so it starts as soon as that one ends. `replace` is the id of a reply
    in the branch on screen, for a turn that takes the place of the message it answers (an edit, a
    regenerate: the old branch is kept as a version when the new reply settles); if it is not there
    any more, raise `Stale` and change nothing. `text=None` resends that message (regenerate), with
    its attachments; `files` are the new message's (attachment references, bytes already stored).

    `settings` (the model and options the form sets) are merged into the conversation's when they
    change it. `plan(conv, history, item)` (the new user item) returns the request options for this
    turn, or None when it would not fit the model's context: then the text is kept as a failed turn
    and `TooLong` raised."""
    deadline = time.monotonic() + wait
    while True:
        too_long = False
        with store.update(cid) as conv:
            now = time.time()
            recover_stale(store, conv, now)
            pending = conv["pending"]
            if not pending:
                at = conversation.replaced_at(conv, replace) if replace else None
                if replace and at is None:
                    raise Stale()  # that reply is not in the branch on screen (any more)
                if text is None:
                    text = conversation.item_text(conv["items"][at])
                    files = attachments.refs(conv["items"][at])
                merged = {**(conv.get("settings") or {}), **(settings or {})}
                if merged != (conv.get("settings") or {}):
                    conv["settings"] = merged
                    conv["rev"] = conv.get("rev", 0) + 1
                history = conversation.sent_history(conv, replace or False)
                item = conversation.user_item(text, files)
                request = plan(conv, history, item) if plan else {}
                if request is None:
                    conversation.fail_turn(conv, text, conversation.CONTEXT_FULL, replace or False,
                                           context=True, files=files)
                    too_long = True
                else:
                    if conv.get("failed"):  # this turn answers it (a Retry): not shown as failed meanwhile
                        conv["failed"] = None
                        conv["rev"] = conv.get("rev", 0) + 1
                    turn = secrets.token_urlsafe(9)
                    conv["pending"] = {"turn": turn, "text": text, "started": now, "beat": now,
                                       "partial": "", "item_id": None, "stop": False,
                                       "replace": replace or False, "rev": conv.get("rev", 0),
                                       "model": request.get("model")}
                    if files:
                        conv["pending"]["files"] = files
                    if store.keeps_liveness:  # Redis: alive while its key is renewed
                        store.keep_alive(turn, STALE)
                        conv["pending"]["alive_key"] = True
                    return Begun(turn, [*history, item], text, request)
            elif waiter is None:
                raise Busy(pending["turn"])
            else:
                holder = pending.get("waiter")
                if holder and holder["id"] != waiter and holder["until"] > now:
                    raise QueueFull()
                if not holder or holder["id"] != waiter or holder["until"] - now < WAITER_TTL / 2:
                    pending["waiter"] = {"id": waiter, "until": now + WAITER_TTL}
        if too_long:
            raise TooLong()
        left = deadline - time.monotonic()
        if left <= 0:
            raise Busy(pending["turn"])
        wait_for_end(store, pending["turn"], min(left, WAITER_TTL / 2))


def wait_for_end(store, turn, timeout):
    """Wait until `turn` has ended, or `timeout` seconds: on its relay when it runs in this process,
    on its stream's final event with Redis; with the file store and another worker, nothing can be
    waited on, so a quarter of a second at a time (the caller looks at the store again)."""
    running = LIVE.get(turn) if turn else None
    if running is not None and not running.finished:
        return running.wait(timeout)
    following = relay.following(store) if running is None and turn else None
    if following is None:
        # Also when it has ended here but its marker is still in the store: never spin on it.
        time.sleep(min(timeout, 0.25))
        return False
    mirror = following.follow(turn)
    try:
        return mirror.wait(timeout)
    finally:
        following.leave(turn)


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


LIVE = {}  # turn id -> runner.Turn, for turns running in this process
RUNNING = Counter()  # owner -> turns of that session running in this process
_RESERVED = Counter()  # owner -> places reserved for sends not running yet (see `reserve`)
LOCK = threading.Lock()  # guards all three


class Slot:
    """A place among the turns this process runs, reserved for one send from the moment it is
    admitted (a send queued behind another reply keeps it while it waits), until its turn runs
    (`runner.register` takes it over) or the send gives up (`release`)."""

    def __init__(self, owner):
        self.owner, self.held = owner, True

    def release(self):
        with LOCK:
            self.drop_locked()

    def drop_locked(self):
        """Give the place up, with LOCK held (the running turn that takes it over holds it)."""
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
    with LOCK:
        if len(LIVE) + sum(_RESERVED.values()) >= max_running:
            raise Full()
        if owner and RUNNING[owner] + _RESERVED[owner] >= max_per_owner:
            raise Full(too_many_for_session=True)
        _RESERVED[owner] += 1
    return Slot(owner)


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

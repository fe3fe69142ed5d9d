"""Settling a turn: how it ends in the stored conversation, exactly once. A reply is stored with the
user's message (and its HTML, rendered once); a reply cut short keeps the words it has as an
`incomplete` item when the API gave it an id, else the user's text is kept for a retry (an id is
never invented); a turn whose worker died is settled by whoever next reads the conversation.
Plain functions on the conversation dict and the store; no HTTP, no Flask."""

import logging
import time

from .. import conversation, render, usage
from .events import DONE, ERROR

log = logging.getLogger(__name__)

INTERRUPTED = "The reply was interrupted before it finished (the server restarted). Send it again."
STORE_FAILED = ("The reply could not be saved (the conversation store is unavailable). "
                "Reload in a moment: your message is recovered when the store is back.")
STALE = 30.0  # a running turn with no heartbeat for this long lost its worker (runner.HEARTBEAT: 5 s)


def keep_partial(conv, pending, item_id, text, note, stopped=False):
    """End a turn that has only part of a reply: keep it as an `incomplete` assistant item when the
    API gave it an id and it has words, else keep the user's text for a retry (an id is never invented).
    `stopped`: the user's own choice, shown as a neutral note rather than an error."""
    if item_id and text:
        # Charged for, though the API never said how much: estimated (usage.estimate_turn).
        spent = usage.estimate_turn(conversation.sent_history(conv, pending.get("replace", False)),
                                    pending["text"], conversation.Settings.of(conv).instructions, text)
        # The message's attachments, as estimated when they were attached.
        spent["input_tokens"] += sum(ref.get("tokens") or 0 for ref in pending.get("files") or ())
        add_reply(conv, pending, item_id, "incomplete", text, note="stopped" if stopped else note,
                  model=pending.get("model"), usage=spent)
    else:
        conversation.fail_turn(conv, pending["text"], conversation.STOPPED_EARLY if stopped else note,
                               pending.get("replace", False), stopped=stopped, files=pending.get("files"))
        conv["last_turn"] = pending["turn"]


def add_reply(conv, pending, item_id, status, text, html=None, annotations=None, **meta):
    # Rendered once, here, and kept beside the item (never in it: the items go upstream as they are):
    # a page view only assembles stored fragments.
    meta.update(html=str(html if html is not None else render.markdown(text)), rv=render.VERSION)
    at = conversation.replaced_at(conv, pending.get("replace"))
    if at is not None:
        # Regenerate/edit: the branch from that message on becomes a version of its own only now,
        # once its replacement exists (conversation.fork: nothing is lost, Previous version shows it).
        conversation.fork(conv, at)
    conversation.add_turn(conv, pending["text"], item_id, status, text, files=pending.get("files"),
                          annotations=annotations, **meta)
    conv["last_turn"] = pending["turn"]  # a page that still shows it writing can pick up the ending


def is_stale(store, pending, now):
    """Whether a running turn lost its worker. Every running turn's worker renews its liveness every
    HEARTBEAT seconds, even while the model is silent, so a worker's death shows after STALE
    seconds, not after the read timeout: with Redis, its liveness key has expired (Redis's clock,
    whatever the hosts' say); with files, its marker's beat is that old (one host, one clock)."""
    alive = store.alive(pending["turn"]) if pending.get("alive_key") else None
    if alive is not None:
        return not alive
    return now - pending["beat"] > STALE


def recover_stale(store, conv, now):
    pending = conv.get("pending")
    if pending and is_stale(store, pending, now):
        if conv.get("rev", 0) != pending.get("rev"):
            conv["pending"] = None  # its reply was stored; only clearing the marker was lost
            return
        keep_partial(conv, pending, pending.get("item_id"), pending.get("partial", ""), INTERRUPTED)


def current(store, cid):
    """The conversation to show; a dead pending turn is settled first so the page never hangs."""
    conv = store.load(cid)
    if conv.get("pending") and is_stale(store, conv["pending"], time.time()):
        with store.update(cid) as conv:
            recover_stale(store, conv, time.time())
    return conv


def settle(store, cid, turn, change):
    """Apply `change(conv, pending)` only if `turn` is still pending here (a "New chat" or a Stop from
    another worker may have settled it already: then there is nothing left to do, and None comes
    back). Returns the conversation as it was stored: the turn's final event is built from it."""
    with store.update(cid) as conv:
        pending = conv.get("pending")
        if not (pending and pending["turn"] == turn):
            return None
        change(conv, pending)
    return conv


def note_for(reply):
    if reply.status != "incomplete":
        return None
    return reply.incomplete_reason or "The answer was cut off before it finished."


def unless_store_fails(how, store, cid, turn, state, *args):
    """Settle the turn with `how` (`failed`, `stopped`); if even the store fails, say so (the pending
    turn is recovered later)."""
    try:
        return how(store, cid, turn, state, *args)
    except Exception:
        log.exception("could not store the end of turn %s", turn)
        return ERROR, {"message": STORE_FAILED, "text": state.text, "kept": False}


def failed(store, cid, turn, state, error):
    """Settle a turn that failed, keeping what this process has read of it."""
    kept = bool(state.item_id and state.text)

    def change(conv, pending):
        keep_partial(conv, pending, state.item_id, state.text, error.message)
        if conv.get("failed") and usage.is_context_error(error.message):
            conv["failed"]["context"] = True  # the page offers the ways out of a full context

    settle(store, cid, turn, change)
    return ERROR, {"message": error.message, "text": state.text, "kept": kept}


def stopped(store, cid, turn, state):
    """Settle a turn the user stopped, from what this process has read of it."""
    text = state.text
    settle(store, cid, turn, lambda conv, pending: keep_partial(
        conv, pending, state.item_id, text, None, stopped=True))
    return stopped_outcome(bool(state.item_id and text), text)


def stopped_outcome(kept, text):
    note = "stopped" if kept else conversation.STOPPED_EARLY
    return DONE, {"text": text if kept else "", "note": conversation.note_text(note),
                  "stopped": True, "kept": kept}

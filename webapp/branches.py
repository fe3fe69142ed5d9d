"""Switching a conversation to another version of one of its messages (conversation.switch), under
the conversation's lock, and never while a reply is being written in it. Plain: no Flask."""

from . import conversation


def switch(store, cid, at, to):
    """Show version `to` of message `at` of conversation `cid`: "ok", "busy" (a reply is being
    written) or "missing" (no such version)."""
    with store.update(cid) as conv:
        if conv.get("pending"):
            return "busy"
        return "ok" if conversation.switch(conv, at, to) else "missing"

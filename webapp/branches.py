"""Switching a conversation to another version of one of its messages (conversation.switch), under
the conversation's lock, and never while a reply is being written in it. Plain: no Flask."""

from . import conversation


def switch(store, cid, at, to):
    """Show version `to` of message `at` of conversation `cid`: "ok", "busy" (a reply is being
    written) or "missing" (no such version)."""
    with store.update(cid) as conv:
        if conv.get("pending"):
            return "busy"
        versions = (conv.get("forks") or {}).get(str(at), {}).get("versions") or []
        chosen = versions[to] if isinstance(to, int) and 0 <= to < len(versions) else None
        if not conversation.switch(conv, at, to, lambda ref: store.get_branch(cid, ref)):
            return "missing"
    if isinstance(chosen, dict) and "ref" in chosen:
        store.delete_branch(cid, chosen["ref"])  # on screen now (stowed anew when switched away)
    return "ok"

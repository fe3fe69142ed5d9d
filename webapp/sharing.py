"""Sharing a conversation read-only: a snapshot of it as it is now, under a random token (192 bits,
URL-safe), that anyone with the link `/s/<token>` may read; later turns are not in it. One link per
conversation: sharing again replaces it, Stop sharing removes it, and it goes with the conversation
(expiry, Delete, purge). Plain: no Flask."""

import re
import secrets
import time

from . import attachments, conversation

_TOKEN = re.compile(r"[A-Za-z0-9_-]{32}")


def share(store, cid, title):
    """Snapshot conversation `cid` (its settled turns) under a new token, replacing its earlier link;
    return the token."""
    token = secrets.token_urlsafe(24)
    with store.update(cid) as conv:
        store.put_share(token, {"cid": cid, "title": title, "items": conv["items"], "meta": conv["meta"],
                                "dropped": conv.get("dropped", 0), "at": time.time()})
        if conv.get("share"):
            store.delete_share(conv["share"])
        conv["share"] = token
        conv["rev"] = conv.get("rev", 0) + 1
    return token


def stop(store, cid):
    """Stop sharing `cid`: its link is a 404 from now on."""
    with store.update(cid) as conv:
        if conv.get("share"):
            store.delete_share(conv.pop("share"))
            conv["rev"] = conv.get("rev", 0) + 1


def shared(store, token):
    """The snapshot shared under `token`, or None (also for a malformed token)."""
    if not isinstance(token, str) or not _TOKEN.fullmatch(token):
        return None
    return store.get_share(token)


def messages(snapshot):
    """The snapshot's messages as conversation.messages gives them."""
    return conversation.messages(snapshot)


def file_of(store, snapshot, sha):
    """(reference, bytes) of an attachment the snapshot shows, or None."""
    ref = attachments.find({"items": snapshot["items"]}, sha)
    data = store.get_file(snapshot["cid"], sha) if ref else None
    return None if data is None else (ref, data)

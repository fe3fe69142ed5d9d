"""Which browser owns which conversation. Plain: a session mapping and the store, no Flask.

A browser's conversations are listed under its own key in the store (`browser:<id>`, see
`Store.conversations`): the session holds only that id, so a turn in one conversation reads the list
and its own conversation, never the others, and two tabs cannot overwrite each other's list. Another
browser's conversation and an unknown id look the same (`NotYours`, a 404), revealing nothing.
"""

import hashlib
import secrets
import time

from werkzeug.exceptions import NotFound

from . import conversation, sessions


class NotYours(NotFound):
    """Not one of this browser's conversations (or no such conversation): the same 404 for both."""


def new_id():
    return secrets.token_urlsafe(18)


class Browser:
    """This browser, as its `session` says, over `store`. `rotate()` issues the session a new id
    (called when the browser's record is first made)."""

    def __init__(self, store, session, rotate):
        self.store, self.session, self.rotate = store, session, rotate
        self._on_top = None  # the conversation first in the list as last read, when it needs no write

    def id(self, create=False):
        """This browser's id in the store, or None before its first send (`claim()` makes it)."""
        session = self.session
        bid = session.get("browser")
        if bid is None and session.get("cid"):
            # A session from before several conversations per browser: its one conversation is listed.
            bid = session["browser"] = new_id()
            cid = session.pop("cid")
            title = conversation.title(self.store.load(cid))
            with self.store.update_conversations(bid) as entries:
                entries.append({"id": cid, "title": title, "at": time.time()})
        if bid is None and create:
            bid = session["browser"] = new_id()
            session["day"] = sessions.today()  # as the day's keep-alive would on the next page
            self.rotate()
        return bid

    def claim(self):
        """This browser's id, made now if it has none: at its first send, and then its session id is
        issued anew (rotated), so an id planted in the browser beforehand (fixation, cookie tossing)
        never holds its messages."""
        return self.id(create=True)

    def listed(self):
        """This browser's conversations, newest activity first."""
        bid = self.id()
        if not bid:
            return []
        entries, fresh = self.store.listing(bid)
        self._on_top = entries[0]["id"] if entries and fresh else None
        return entries

    def owned(self, cid, entries=None):
        """The list entry of conversation `cid` if this browser owns it; else `NotYours`."""
        for entry in self.listed() if entries is None else entries:
            if entry["id"] == cid:
                return entry
        raise NotYours()

    def latest(self):
        """This browser's most recent conversation, or None."""
        entries = self.listed()
        return entries[0]["id"] if entries else None

    def target(self, cid):
        """The conversation a send to `/c/<cid>` goes to: this browser's own (else `NotYours`), or
        None for `new`; without a `cid` (`POST /`, `/turns`), the most recent one."""
        if cid is None:
            return self.latest()
        if cid == "new":
            return None
        self.owned(cid)
        return cid

    def touch(self, cid, title=None):
        """Move `cid` to the top of this browser's list (it is being written in), adding it if new.
        Already on top when this request read the list (a send naming its conversation reads it
        first), and not yet due to be written again: nothing to do, not even taking its lock."""
        bid = self.claim()
        if cid == self._on_top:
            return
        with self.store.update_conversations(bid) as entries:
            entry = next((e for e in entries if e["id"] == cid), None)
            if entries and entries[0] is entry:
                return  # already first: the list does not change (and is not rewritten)
            if entry is None:
                entry = {"id": cid, "title": conversation.short_title(title), "at": 0}
            else:
                entries.remove(entry)
            entry["at"] = time.time()
            entries.insert(0, entry)

    def rename(self, cid, title):
        with self.store.update_conversations(self.id()) as entries:
            for entry in entries:
                if entry["id"] == cid:
                    entry["title"] = title

    def forget(self, cid):
        """Take `cid` off this browser's list."""
        with self.store.update_conversations(self.id()) as entries:
            entries[:] = [e for e in entries if e["id"] != cid]

    def owner(self):
        """A short hash of the session id: enough to count a session's turns and to follow it in the
        logs, useless for taking the session over."""
        return hashlib.sha256(self.session.sid.encode()).hexdigest()[:12]

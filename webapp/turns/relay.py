"""The relay: how a turn's events reach whoever follows it, from the first event or from the last
one a follower had (each event has an id). `LocalRelay` is the in-process backend (a condition
variable: followers in this process wait on it, nothing polls); a Redis backend carries the same
interface across workers and hosts."""

import threading

from .events import DELTA, TICK


class LocalRelay:
    """One turn's events in this process, numbered from 1. A follower replays them from any id."""

    def __init__(self):
        self.events = []
        self.finished = False
        self._cond = threading.Condition()

    def publish(self, kind, data=None, final=False):
        """Append an event (ignored once the turn has ended: a Stop may settle it first)."""
        with self._cond:
            if self.finished:
                return
            self.events.append((kind, data))
            self.finished = final
            self._cond.notify_all()

    def listen(self, after=None, tick=15.0):
        """Yield (id, kind, data) for every event after id `after` (None: from the first), until the
        final one; (None, TICK, None) after `tick` quiet seconds (a number, or a function asked
        before each wait, so a follower can wake sooner while it has work due)."""
        seen = _position(after, len(self.events))
        while True:
            with self._cond:
                if seen == len(self.events) and not self.finished:
                    self._cond.wait(tick() if callable(tick) else tick)
                new, finished = self.events[seen:], self.finished
            yield from coalesced(new, seen)
            seen += len(new)
            if finished and seen == len(self.events):
                return
            if not new:
                yield None, TICK, None

    def before(self, after):
        """Where a follower that last had id `after` goes on: (that id, the reply's text up to it),
        or (None, "") when this relay never gave that id (the follower starts over)."""
        with self._cond:
            seen = _position(after, len(self.events))
            if not seen:
                return None, ""
            return str(seen), "".join(data for kind, data in self.events[:seen] if kind == DELTA)

    def wait(self, timeout):
        """True once the final event is published, False if `timeout` seconds pass first."""
        with self._cond:
            return self._cond.wait_for(lambda: self.finished, timeout)


def _position(after, count):
    """How many events a follower that last had id `after` has seen (an unknown id: none)."""
    if isinstance(after, str) and after.isdigit() and int(after) <= count:
        return int(after)
    return 0


def coalesced(events, first=0):
    """(id, kind, data) of `events`, numbered from `first` + 1, adjacent deltas as one (with the id
    of its last part): a follower that fell behind (a busy process, a reload replaying the reply)
    sends the same text in fewer, larger events instead of one write per token."""
    merged = []
    for number, (kind, data) in enumerate(events, first + 1):
        if kind == DELTA and merged and merged[-1][1] == DELTA:
            merged[-1] = (str(number), DELTA, merged[-1][2] + data)
        else:
            merged.append((str(number), kind, data))
    return merged

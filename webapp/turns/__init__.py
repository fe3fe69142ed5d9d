"""One chat turn, from the user's message to a stored reply, on top of the store and the client.

    admission.py  whether a send may become a turn, and when: one turn per conversation (its pending
                  marker in the store), one send waiting behind it, this process's capacity
    runner.py     running a begun turn: the upstream read, progress saves and heartbeats, Stop
    settle.py     how a turn ends in the stored conversation, exactly once (also a dead worker's)
    relay.py      how a turn's events reach whoever follows it, resumable from any event id
    events.py     the kinds of event, shared by the runner, the relay, the stream and the page
    daemons.py    the threads a process runs once for all its turns, started after gunicorn's fork

None of them speaks HTTP to the browser or imports Flask. What the views use is named here.
"""

from . import events
from .admission import (LISTENERS, LIVE, Begun, Busy, Full, Listeners, QueueFull, Slot, Stale, TooLong,
                        begin, cancel_waiter, refuse_if_queue_full, release, reserve, wait_for_end,
                        waiter_cancelled)
from .runner import run, start, stop
from .settle import STORE_FAILED, current, is_stale, stopped_outcome

__all__ = ["events", "LISTENERS", "LIVE", "Begun", "Busy", "Full", "Listeners", "QueueFull", "Slot",
           "Stale", "TooLong", "begin", "cancel_waiter", "refuse_if_queue_full", "release", "reserve",
           "wait_for_end", "waiter_cancelled", "run", "start", "stop", "STORE_FAILED", "current", "is_stale",
           "stopped_outcome"]

"""The relay: how a turn's events reach whoever follows it, from the first event or from the last one a
follower had (each event has an id). One interface, two backends:

- `LocalRelay` (the file store): the events in this process, numbered 1, 2, …; followers here wait on
  a condition variable. A follower in another worker reads the saved progress instead.
- `RedisRelay` (the Redis store): the same, and each event also goes to a Redis Stream (`XADD`, capped
  with MAXLEN, expiring after the turn), whose entry ids are the events' ids. Followers in this process
  read the events here; a follower in another worker or host reads the stream through its process's
  one `RedisFollowing` reader (a blocking `XREAD` over every stream followed there, fanned out to a
  `Mirror` per turn), so a thousand followers need one connection, not a thousand, and nothing polls.
  Stops go over Redis pub/sub (`StopListener`), and whoever pressed Stop waits for the turn's final
  event on its stream.
"""

import json
import logging
import os
import secrets
import threading

from ..store import RedisBackend
from ..textsofar import TextSoFar
from .daemons import ProcessThread
from .events import DELTA, TICK

log = logging.getLogger(__name__)


class _HeldLock:
    """A plain lock that knows which thread (greenlet) holds it, for a Condition. Without
    `_is_owned`, `Condition.wait` and `notify_all` ask whether the caller holds the lock by trying it
    without blocking; under gevent a failed try first runs every other ready greenlet, so each
    word published to a turn with a follower held the relay's lock for a round of the event loop."""

    __slots__ = ("_lock", "_holder")

    def __init__(self):
        self._lock = threading.Lock()
        self._holder = None

    def acquire(self, blocking=True, timeout=-1):
        if self._lock.acquire(blocking, timeout):
            self._holder = threading.get_ident()
            return True
        return False

    def release(self):
        self._holder = None
        self._lock.release()

    def __enter__(self):
        return self.acquire()

    def __exit__(self, *exc):
        self.release()

    def locked(self):
        return self._lock.locked()

    def _is_owned(self):
        return self._holder == threading.get_ident()


class LocalRelay:
    """One turn's events in this process, with ids. A follower replays them from any id it was given."""

    def __init__(self):
        self.events = []  # (id, kind, data)
        self._seen = {}  # id -> how many events a follower that had it has seen
        self._text = TextSoFar()  # the reply's words so far (every delta's): `text`
        self.finished = False
        # Over a plain lock (see `_HeldLock`): never taken twice by one holder, and the default (a
        # re-entrant lock) is pure Python once gevent patches threading, costing more than the rest
        # of a publish.
        self._cond = threading.Condition(_HeldLock())
        self._waiting = 0  # followers waiting on the condition: an event with none wakes nobody

    def publish(self, kind, data=None, final=False):
        """Append an event (ignored once the turn has ended: a Stop may settle it first)."""
        with self._cond:
            if not self.finished:
                self._add(self._new_id(kind, data, final), kind, data, final)

    def _new_id(self, kind, data, final):
        return str(len(self.events) + 1)

    def _add(self, event_id, kind, data, final):  # with the condition held
        self.events.append((event_id, kind, data))
        if event_id is not None:
            self._seen[event_id] = len(self.events)
        if kind == DELTA:
            self._text.add(data)
        self.finished = final
        if self._waiting:  # (the notify's own checks cost more than the rest, once per word)
            self._cond.notify_all()

    @property
    def text(self):
        return str(self._text)

    def _wait(self, predicate, timeout):  # with the condition held
        self._waiting += 1
        try:
            return self._cond.wait_for(predicate, timeout)
        finally:
            self._waiting -= 1

    def position(self):
        """(the last event's id, the reply's words up to it): what a progress save records, so a
        follower elsewhere can start from the saved words and read on after that id."""
        with self._cond:
            return (self.events[-1][0] if self.events else None), self.text

    def before(self, after):
        """Where a follower that last had id `after` goes on: (that id, the reply's text up to it),
        or (None, "") when this relay never gave that id (the follower starts over)."""
        with self._cond:
            seen = self._seen.get(after, 0) if isinstance(after, str) else 0
            if not seen:
                return None, ""
            return after, "".join(data for _, kind, data in self.events[:seen] if kind == DELTA)

    def since(self, seen):
        """(the events after the first `seen`, how many there are now): for the one who publishes
        them and streams them too (`runner.Reader`), so never waits. Without the lock: the list only
        grows (an append is atomic), and its length is read once."""
        count = len(self.events)
        return (self.events[seen:count] if count > seen else ()), count

    def listen(self, after=None, tick=15.0):
        """Yield (id, kind, data) for every event after id `after` (None or unknown: from the first),
        until the final one; (None, TICK, None) after `tick` quiet seconds (a number, or a function
        asked before each wait, so a follower can wake sooner while it has work due)."""
        with self._cond:
            seen = self._seen.get(after, 0) if isinstance(after, str) else 0
        while True:
            with self._cond:  # (returns at once when there is something new, or the end)
                self._wait(lambda: seen < len(self.events) or self.finished,
                           tick() if callable(tick) else tick)
                new, finished = self.events[seen:], self.finished
            yield from coalesced(new)
            seen += len(new)
            if finished and seen == len(self.events):
                return
            if not new:
                yield None, TICK, None

    def wait(self, timeout):
        """True once the final event is published, False if `timeout` seconds pass first."""
        with self._cond:
            return self._wait(lambda: self.finished, timeout)


def coalesced(events):
    """The (id, kind, data) events with adjacent deltas as one (with the id of its last part): a
    follower that fell behind (a busy process, a reload replaying the reply) sends the same text in
    fewer, larger events instead of one write per token."""
    merged = []
    for event_id, kind, data in events:
        if kind == DELTA and merged and merged[-1][1] == DELTA:
            merged[-1] = (event_id, DELTA, merged[-1][2] + data)
        else:
            merged.append((event_id, kind, data))
    return merged


# --- Redis Streams ------------------------------------------------------------------------------------

MAXLEN = 10_000  # events kept per stream (about: trimmed with ~); a late follower starts from the saved text
ALIVE_FOR = 3600  # seconds a turn's stream outlives its last event (a follower may join late)
ENDED_FOR = 300  # seconds it is kept after the final event (later followers read the stored reply)
BLOCK_MS = 500  # one XREAD waits this long at most: less than the Redis client's 1 s socket timeout


def _order(entry_id):
    """A stream entry id ("1700000000000-3") as a comparable pair, or None for anything else."""
    if isinstance(entry_id, str):
        ms, dash, seq = entry_id.partition("-")
        if dash and ms.isdigit() and seq.isdigit():
            return int(ms), int(seq)
    return None


STREAM_PREFIX = "relay:"


def stream_key(turn):
    return STREAM_PREFIX + turn


def _text(value):
    """What redis-py returns (bytes) as text."""
    return value.decode() if isinstance(value, bytes) else value


def _entry(kind, data, final):
    fields = {"k": kind, "d": json.dumps(data)}
    if final:
        fields["f"] = "1"
    return fields


def _event(entry_id, fields):
    """(id, kind, data, final) of a stream entry as redis-py returns it."""
    found = {_text(name): _text(value) for name, value in fields.items()}
    return _text(entry_id), found.get("k"), json.loads(found.get("d") or "null"), found.get("f") == "1"


class RedisRelay(LocalRelay):
    """A `LocalRelay` whose events also go to the turn's Redis Stream, numbered by it."""

    def __init__(self, client, turn):
        super().__init__()
        self.client, self.key = client, stream_key(turn)

    def _new_id(self, kind, data, final):
        try:
            pipe = self.client.pipeline(transaction=False)
            pipe.xadd(self.key, _entry(kind, data, final), maxlen=MAXLEN, approximate=True)
            if final or not self.events:  # its lifetime is set by the first event, and the last
                pipe.expire(self.key, ENDED_FOR if final else ALIVE_FOR)
            entry_id = pipe.execute()[0]
        except Exception:  # Redis down: this process's followers still get the event (without an id)
            log.warning("could not relay an event of %s to Redis", self.key, exc_info=True)
            return None
        return _text(entry_id)


class Mirror(LocalRelay):
    """The events of a turn running elsewhere, as this process's `RedisFollowing` reads them from its
    stream: from `start` (the id a progress save recorded, with the words up to it), or the first."""

    def __init__(self, start=None, text=""):
        super().__init__()
        self.last_id = start or "0-0"  # where the reader goes on
        if text:
            with self._cond:
                self._add(start, DELTA, text, False)

    def before(self, after):
        """As for any relay, once this mirror has read as far as `after` (a follower that had it
        comes from another host, maybe ahead of this reader), or a second has passed."""
        wanted = _order(after)
        if wanted is not None:
            with self._cond:
                self._wait(lambda: self.finished or _order(self.last_id) >= wanted, 1.0)
        return super().before(after)

    def feed(self, entries):
        with self._cond:
            for entry_id, fields in entries:
                event_id, kind, data, final = _event(entry_id, fields)
                self.last_id = event_id
                if not self.finished:
                    self._add(event_id, kind, data, final)


class RedisFollowing:
    """This process's one reader of the Redis Streams of turns followed here but running elsewhere:
    a thread (a greenlet under gevent) blocked in one XREAD over all of them, fanning each entry out
    to the turn's `Mirror`, on which any number of followers here wait."""

    def __init__(self, client):
        self.client = client
        self._lock = threading.Lock()
        self._mirrors = {}  # turn -> [Mirror, followers]
        self._reader = ProcessThread(self._read_forever, "relay")
        # A stream of this process's own: an entry there ends the reader's wait at once, so a new
        # follower's stream is read from the next XREAD on.
        self._wake = f"relay-wake:{os.getpid()}:{secrets.token_hex(6)}"

    def follow(self, turn, start=None, text=""):
        """The `Mirror` of `turn` (made, and read from `start` with `text` up to it, if new here)."""
        with self._lock:
            found = self._mirrors.get(turn)
            if found:
                found[1] += 1
                return found[0]
            mirror = Mirror(start, text)
            self._mirrors[turn] = [mirror, 1]
        self._reader.ensure()  # outside the lock: starting a thread waits for it to start
        try:
            pipe = self.client.pipeline(transaction=False)
            pipe.xadd(self._wake, {"w": "1"}, maxlen=10, approximate=True)
            pipe.expire(self._wake, 60)
            pipe.execute()
        except Exception:
            log.warning("could not wake the relay reader", exc_info=True)  # it reads on within BLOCK_MS
        return mirror

    def leave(self, turn):
        with self._lock:
            found = self._mirrors.get(turn)
            if found:
                found[1] -= 1
                if found[1] <= 0:
                    del self._mirrors[turn]

    def _read_forever(self):
        woken, failing = "$", False
        while True:
            with self._lock:
                wanted = {stream_key(turn): mirror.last_id for turn, (mirror, _) in self._mirrors.items()
                          if not mirror.finished}
            try:
                replies = self.client.xread({self._wake: woken, **wanted}, block=BLOCK_MS, count=1000)
            except Exception as exc:
                if not failing:  # once an outage, not every half second of it
                    log.warning("the relay reader cannot read from Redis: %s", exc)
                failing = True
                threading.Event().wait(BLOCK_MS / 1000)  # Redis down: try again shortly
                continue
            if failing:
                log.warning("the relay reader reads from Redis again")
                failing = False
            for key, entries in replies or ():
                key = _text(key)
                if key == self._wake:
                    woken = _text(entries[-1][0])
                    continue
                with self._lock:
                    found = self._mirrors.get(key[len(STREAM_PREFIX):])
                if found:
                    found[0].feed(entries)


STOP_CHANNEL = "stops"  # a Stop, published for whichever worker or host runs the turn


class StopListener:
    """This process's subscription to Stops (Redis pub/sub): each turn id published is handed to
    `on_stop` at once, instead of every worker reading a signal key ten times a second."""

    def __init__(self, client, on_stop):
        self.client, self.on_stop = client, on_stop
        ProcessThread(self._listen_forever, "stops").ensure()

    def _listen_forever(self):
        pubsub, failing = None, False
        while True:
            try:
                if pubsub is None:
                    pubsub = self.client.pubsub(ignore_subscribe_messages=True)
                    pubsub.subscribe(STOP_CHANNEL)
                # A blocking wait, shorter than the client's socket timeout.
                message = pubsub.get_message(timeout=BLOCK_MS / 1000)
                if failing:
                    log.warning("the Stop listener hears Redis again")
                    failing = False
            except Exception as exc:
                if not failing:
                    log.warning("the Stop listener cannot hear Redis: %s", exc)
                failing, pubsub = True, None  # subscribe again on a fresh connection
                threading.Event().wait(BLOCK_MS / 1000)
                continue
            if message and message.get("type") == "message":
                self.on_stop(_text(message["data"]))


_following = {}  # id of a Redis client -> this process's RedisFollowing for it
_stops = {}  # id of a Redis client -> this process's StopListener for it
_following_lock = threading.Lock()


def for_turn(store, turn):
    """The relay a turn's events go out on: a Redis Stream as well when the store is Redis."""
    client = _redis_client(store)
    return RedisRelay(client, turn) if client is not None else LocalRelay()


def following(store):
    """This process's reader of turns running elsewhere (Redis store), or None (file store: another
    worker's turn is followed through its saved progress)."""
    client = _redis_client(store)
    if client is None:
        return None
    with _following_lock:
        if id(client) not in _following:
            _following[id(client)] = RedisFollowing(client)
        return _following[id(client)]


def listen_for_stops(store, on_stop):
    """With Redis, hear Stops published by any worker or host (once per process); False with files."""
    client = _redis_client(store)
    if client is None:
        return False
    with _following_lock:
        if id(client) not in _stops:
            _stops[id(client)] = StopListener(client, on_stop)
    return True


def listens_for_stops(store):
    """Whether this process hears Stops over pub/sub (so it needs no signal key)."""
    client = _redis_client(store)
    return client is not None and id(client) in _stops


def publish_stop(store, turn):
    """Tell whichever worker or host runs `turn` to stop it (Redis pub/sub)."""
    _redis_client(store).publish(STOP_CHANNEL, turn)


def _redis_client(store):
    backend = getattr(store, "backend", None)
    return backend.client if isinstance(backend, RedisBackend) else None

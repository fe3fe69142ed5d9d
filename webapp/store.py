"""Where conversations live, and the per-conversation lock that keeps two requests from overwriting each other.

Each conversation is a JSON document under its own key (`conv:<id>`) in the same store Flask-Session uses
(cachelib's file-system cache on this host, or Redis). The browser's session holds only the conversation id,
so a session write can never erase a turn. Every change is a read-modify-write under `Store.update(cid)`:
a file lock (flock) for the file store, a Redis lock for Redis, so separate gunicorn workers (and separate
hosts, with Redis) serialise their writes to one conversation.

Only this module knows the backends; errors come out as `StoreError`.
"""

import fcntl
import itertools
import json
import logging
import os
import pickle
import secrets
import struct
import tempfile
import threading
import time
from collections import OrderedDict
from contextlib import contextmanager

from cachelib.file import FileSystemCache

from . import attachments, conversation


log = logging.getLogger(__name__)


class StoreError(Exception):
    """The conversation store could not be read or written."""


class FileCache(FileSystemCache):
    """cachelib's FileSystemCache (for conversations and Flask-Session alike) with a leaner `set`:
    the same file format (a 4-byte expiry, then the pickle), so `get`, Flask-Session and `flask purge`
    read it as before, written to a temporary file beside it and renamed over it. cachelib's own
    `set` also draws a random name, reopens the file, stats it and chmods it: about 80 µs of CPU
    more a write, and a first send makes four."""

    def set(self, key, value, timeout=None, mgmt_element=False):
        if self._threshold or mgmt_element:  # counting files: cachelib's bookkeeping
            return super().set(key, value, timeout, mgmt_element)
        filename = self._get_filename(key)
        # Unique per process and write; the suffix marks it temporary (cachelib and purge skip it).
        tmp = f"{filename}.{_WRITER}{next(_WRITES)}{self._fs_transaction_suffix}"
        try:
            data = struct.pack("I", self._normalize_timeout(timeout)) + pickle.dumps(
                value, pickle.HIGHEST_PROTOCOL)
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, self._mode)
            try:
                os.write(fd, data)
            finally:
                os.close(fd)
            os.replace(tmp, filename)
        except OSError:
            log.warning("could not write the cache file %s", filename, exc_info=True)
            try:
                os.remove(tmp)
            except OSError:
                pass
            return False
        return True


_WRITER = f"{os.getpid()}-{secrets.token_hex(3)}-"  # (a forked worker draws its own below)
_WRITES = itertools.count()


def _new_writer():
    global _WRITER
    _WRITER = f"{os.getpid()}-{secrets.token_hex(3)}-"


os.register_at_fork(after_in_child=_new_writer)


class FileBackend:
    """cachelib's FileSystemCache (atomic write-and-rename per key; it pickles values, which is
    several times faster than JSON for a long history) plus flock-based locks."""

    def __init__(self, cache, lock_dir):
        self.cache = cache
        self.lock_dir = lock_dir
        os.makedirs(lock_dir, exist_ok=True)

    def get(self, key):
        return self.cache.get(key)

    def set(self, key, value, ttl):
        if not self.cache.set(key, value, timeout=ttl):
            raise StoreError("could not write the conversation file")

    def delete(self, key):
        self.cache.delete(key)

    def expire(self, key, ttl):
        """Let `key` live `ttl` seconds from now (cachelib keeps the expiry in the file: written again)."""
        value = self.cache.get(key)
        if value is not None:
            self.set(key, value, ttl)

    # Histories are stored encoded (bytes, which cachelib stores as they are), so a reader can tell
    # an unchanged history by comparing bytes instead of decoding it again (see Store.history).
    get_blob = get

    def set_blob(self, key, blob, ttl):
        self.set(key, blob, ttl)  # through `set`, so a subclass's `set` (tests break it) is used

    @staticmethod
    def encode(value):
        return pickle.dumps(value, protocol=pickle.HIGHEST_PROTOCOL)

    @staticmethod
    def decode(blob):
        return pickle.loads(blob)

    def lock_path(self, key):
        """The lock file of `key`: the first 32 hex digits of its cache file's name (both are the key's
        sha256), so `purge` can tell which lock belongs to which stored file."""
        return os.path.join(self.lock_dir, os.path.basename(self.cache._get_filename(key))[:32])

    @contextmanager
    def lock(self, key, timeout):
        # One lock file per key. `flask purge` deletes the lock files of keys that no longer exist,
        # but only while it holds their flock; a waiter that then gets the flock of the deleted file
        # sees that the path no longer names it and locks the file now there, so two holders never
        # coexist (see `_acquire`).
        fd = _acquire(self.lock_path(key), time.monotonic() + timeout)
        try:
            yield
        finally:
            os.close(fd)  # closing the descriptor releases the lock

    def ping(self):
        """Raise StoreError unless both directories take a new file (for a readiness check)."""
        for directory in (self.cache._path, self.lock_dir):
            try:
                # cachelib (and `purge`) treat names ending in its transaction suffix as temporary.
                fd, probe = tempfile.mkstemp(suffix=self.cache._fs_transaction_suffix, dir=directory)
                try:
                    os.write(fd, b"ping")
                finally:
                    os.close(fd)
                    os.remove(probe)
            except OSError as exc:
                raise StoreError(f"the conversation store is not writable: {exc}") from None


LOCK_BACKOFF = (0.001, 0.05)  # first and longest wait between two tries of a busy lock, in seconds


def _acquire(path, deadline):
    """Open and flock `path` (created if missing), and return the descriptor that holds the lock.

    Waits without spinning: the tries back off from 1 ms to 50 ms. After the flock, the path must
    still name the locked file: if a purge deleted it meanwhile (it only does so while holding the
    flock), the lock is taken again on the file now at that path."""
    delay = LOCK_BACKOFF[0]
    while True:
        try:
            fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
        except OSError as exc:
            raise StoreError(f"could not open the conversation lock: {exc}") from None
        try:
            while True:
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    break
                except BlockingIOError:
                    left = deadline - time.monotonic()
                    if left <= 0:
                        raise StoreError("timed out waiting for the conversation lock") from None
                    time.sleep(min(delay, left))
                    delay = min(delay * 2, LOCK_BACKOFF[1])
            if _same_file(fd, path):
                return fd
        except BaseException:
            os.close(fd)
            raise
        os.close(fd)  # the file was deleted while we waited: lock the one at its path now


def _same_file(fd, path):
    """Whether `path` still names the file open as `fd` (a deleted or replaced path does not)."""
    try:
        return os.fstat(fd).st_ino == os.stat(path).st_ino
    except FileNotFoundError:
        return False


class RedisBackend:
    """A redis-py client shared with Flask-Session; locks are Redis locks that expire if a holder dies."""

    def __init__(self, client):
        import redis  # only needed when SESSION_TYPE=redis

        self.client = client
        self.errors = (redis.RedisError,)

    def get(self, key):
        raw = self.get_blob(key)
        return self.decode(raw, key) if raw is not None else None

    def set(self, key, value, ttl):
        self.set_blob(key, self.encode(value), ttl)

    def get_blob(self, key):
        try:
            return self.client.get(key)
        except self.errors as exc:
            raise StoreError(str(exc)) from None

    def set_blob(self, key, blob, ttl):
        try:
            self.client.set(key, blob, ex=ttl)
        except self.errors as exc:
            raise StoreError(str(exc)) from None

    @staticmethod
    def encode(value):
        return json.dumps(value, separators=(",", ":")).encode()

    @staticmethod
    def decode(blob, key="a history"):
        try:
            return json.loads(blob)
        except ValueError:
            raise StoreError(f"{key} does not hold valid JSON") from None

    def delete(self, key):
        try:
            self.client.delete(key)
        except self.errors as exc:
            raise StoreError(str(exc)) from None

    def expire(self, key, ttl):
        try:
            self.client.expire(key, ttl)
        except self.errors as exc:
            raise StoreError(str(exc)) from None

    def ping(self):
        try:
            self.client.ping()
        except self.errors as exc:
            raise StoreError(str(exc)) from None

    @contextmanager
    def lock(self, key, timeout):
        lock = self.client.lock(f"lock:{key}", timeout=30, blocking_timeout=timeout)
        try:
            acquired = lock.acquire()
        except self.errors as exc:
            raise StoreError(str(exc)) from None
        if not acquired:
            raise StoreError("timed out waiting for the conversation lock")
        try:
            yield
        finally:
            try:
                lock.release()
            except self.errors:
                pass  # expired: the write already happened, nothing to undo


def redis_client(url, max_connections, timeout=1.0):
    """The one Redis client of a process, shared by sessions, conversations, locks (and counters).

    Its pool holds at most `max_connections` (a worker's thread count and a margin): a thread finding
    them all in use waits up to `timeout` seconds for one instead of failing with "Too many
    connections". Connecting and each reply also give up after `timeout`, and a failed command is
    retried once on a fresh connection, so with Redis down or stuck a request fails with StoreError
    (a 503 page) within about two timeouts, and works again by itself once Redis is back: the pool
    drops a connection that broke (checked as it is handed out, and with a PING when it sat idle for
    `health_check_interval` seconds) and connects anew, so a Redis restart fails no request."""
    import redis
    from redis.backoff import ExponentialBackoff
    from redis.retry import Retry

    pool = redis.BlockingConnectionPool.from_url(
        url, max_connections=max_connections, timeout=timeout,
        socket_timeout=timeout, socket_connect_timeout=timeout, socket_keepalive=True,
        health_check_interval=30,
        # redis-py's default retries 10 times with backoff up to 1 s: far past a page's patience.
        retry=Retry(ExponentialBackoff(cap=0.1, base=0.01), 1))
    return redis.Redis(connection_pool=pool)


class Store:
    """Conversations by id. `ttl` (seconds) restarts with every write, like the session's lifetime.

    A conversation is two keys: its history (`conv:<id>`: items, meta, failed), written only when a
    turn settles, and the turn under way (`turn:<id>`), small and written as often as progress is
    saved. So a streaming reply's progress costs the same with 2 turns of history as with 200."""

    prefix, pending_prefix, alive_prefix = "conv:", "turn:", "alive:"
    file_prefix = "file:"  # an attachment's bytes: file:<conversation id>:<sha256>
    share_prefix = "share:"  # a read-only snapshot of a conversation: share:<token>
    branch_prefix = "branch:"  # a version of a conversation not on screen: branch:<cid>:<ref>
    index_prefix = "browser:"  # a browser's list of its conversations
    stop_key = "signal:stop"  # changes whenever a Stop is flagged for another worker to act on
    # Decoded histories kept per process, at most this many encoded bytes in all (see `history`).
    decoded_bytes = 8 << 20
    # Tests set this: every reuse is checked against a fresh decode, so code that changes a loaded
    # history in place (which would change the kept copy) fails there instead of going unseen.
    check_decoded = False

    def __init__(self, backend, ttl, lock_timeout=10.0):
        self.backend = backend
        self.ttl = ttl
        self.lock_timeout = lock_timeout
        self._decoded = OrderedDict()  # cid -> (encoded bytes, decoded record), least recent first
        self._decoded_size = 0
        self._decoded_lock = threading.Lock()

    def ping(self):
        """Raise StoreError unless the store answers (files: writable; Redis: PING)."""
        self.backend.ping()

    def load(self, cid):
        conv = self.history(cid) or conversation.new()
        conv["pending"] = self.load_pending(cid)
        return conv

    def history(self, cid):
        """The stored history of `cid` (items, meta, failed, settings…), or None.

        Decoding a long history is the dearest part of a turn (every turn reads it two or three
        times), so each process keeps the last decoded copy of recently used ones beside the exact
        bytes it came from: when the stored bytes are the same, the copy is reused. Comparing bytes
        (not a timestamp or a counter) means another worker's or host's write is always seen. The
        caller gets its own top-level dict and lists (histories only ever change by appending,
        removing or replacing whole items, never by editing one in place)."""
        blob = self.backend.get_blob(self.prefix + cid)
        if blob is None:
            return None
        if not isinstance(blob, (bytes, str)):
            return blob  # stored decoded, before histories were stored as bytes
        with self._decoded_lock:
            known = self._decoded.get(cid)
            if known is not None and known[0] == blob:
                self._decoded.move_to_end(cid)
                if self.check_decoded and self.backend.decode(blob) != known[1]:
                    raise AssertionError(f"the kept copy of history {cid} was changed in place")
                return _copy(known[1])
        record = self.backend.decode(blob)
        self._remember(cid, blob, record)
        return _copy(record)

    def _remember(self, cid, blob, record):
        with self._decoded_lock:
            self._forget(cid)
            if len(blob) > self.decoded_bytes // 8:
                return  # too long to keep: decoded on every read
            self._decoded[cid] = (blob, _copy(record))
            self._decoded_size += len(blob)
            while self._decoded_size > self.decoded_bytes:
                self._forget(next(iter(self._decoded)))

    def _forget(self, cid):
        known = self._decoded.pop(cid, None)
        if known is not None:
            self._decoded_size -= len(known[0])

    def load_pending(self, cid):
        """Only the turn under way (small), without the history."""
        return self.backend.get(self.pending_prefix + cid)

    # A running turn's liveness, with Redis: a key its runner renews with every progress save or
    # heartbeat, expiring `ttl` seconds after the last (settle.STALE). Its absence is the turn's
    # death, judged by Redis's clock alone (the `beat` in the marker is its host's clock, which
    # another host may not share). The file store has one host: its markers' beats do.

    @property
    def keeps_liveness(self):
        return isinstance(self.backend, RedisBackend)

    def keep_alive(self, turn, ttl):
        """Renew `turn`'s liveness key (with Redis; nothing with files)."""
        if self.keeps_liveness:
            self.backend.set_blob(self.alive_prefix + turn, b"1", int(ttl))

    def alive(self, turn):
        """With Redis, whether `turn`'s runner renewed its key within its lifetime; None with files."""
        if not self.keeps_liveness:
            return None
        return self.backend.get_blob(self.alive_prefix + turn) is not None

    def signal_stop(self):
        self.backend.set(self.stop_key, secrets.token_hex(8), self.ttl)

    def stop_signal(self):
        """A value that changes whenever some worker flags a Stop: one cheap read tells a worker
        whether any of its running turns needs to look at its own pending marker."""
        return self.backend.get(self.stop_key)

    def put_file(self, cid, sha, data):
        """Keep an attachment's bytes (once per conversation: its sha256 names it). They live twice
        a conversation's lifetime, renewed as the history is written, so they outlive it."""
        self.backend.set_blob(self._file_key(cid, sha), data, 2 * self.ttl)

    def get_file(self, cid, sha):
        """An attachment's bytes, or None when they are no longer stored."""
        return self.backend.get_blob(self._file_key(cid, sha))

    def put_share(self, token, snapshot):
        self.backend.set(self.share_prefix + token, snapshot, self.ttl)

    def get_share(self, token):
        return self.backend.get(self.share_prefix + token)

    def delete_share(self, token):
        self.backend.delete(self.share_prefix + token)

    def _file_key(self, cid, sha):
        return f"{self.file_prefix}{cid}:{sha}"

    def _keep_files(self, cid, record, now):
        # Every half lifetime, the attachments' and stowed versions' lifetimes are renewed with the
        # history's: nothing a conversation refers to expires before it does.
        if now - record.get("files_kept", 0) <= self.ttl / 2:
            return
        stowed = self._stowed(cid, record)
        shas = {ref["sha"] for ref in attachments.all_refs(record)}
        shas |= {ref["sha"] for _, version in stowed for ref in attachments.all_refs(version or {})}
        for sha in shas:
            self.backend.expire(self._file_key(cid, sha), 2 * self.ttl)
        for ref, _ in stowed:
            self.backend.expire(self._branch_key(cid, ref), 2 * self.ttl)
        if shas or stowed:
            record["files_kept"] = now

    # --- versions not on screen (conversation.fork / switch) ----------------------------------------
    # A history holds the branch on screen; every other version is stowed under a key of its own and
    # named by {"ref"} in `forks`, so opening or sending in a conversation with many versions reads and
    # decodes no more than its branch on screen. Switching loads the chosen one (branches.switch).

    def _branch_key(self, cid, ref):
        return f"{self.branch_prefix}{cid}:{ref}"

    def get_branch(self, cid, ref):
        return self.backend.get(self._branch_key(cid, ref))

    def delete_branch(self, cid, ref):
        self.backend.delete(self._branch_key(cid, ref))

    def _stow_forks(self, cid, forks):
        return {at: {**fork, "versions": [self._stow(cid, v) for v in fork["versions"]]}
                for at, fork in forks.items()}

    def _stow(self, cid, version):
        if not isinstance(version, dict) or "ref" in version:
            return version  # the one on screen (None), or stowed already
        ref = secrets.token_hex(8)
        self.backend.set(self._branch_key(cid, ref),
                         {**version, "forks": self._stow_forks(cid, version.get("forks") or {})}, 2 * self.ttl)
        return {"ref": ref}

    def _stowed(self, cid, record):
        """(ref, version) of every stowed version `record` reaches (through versions' own forks too)."""
        found, forks = [], [record.get("forks") or {}]
        while forks:
            for fork in forks.pop().values():
                for version in fork["versions"]:
                    if isinstance(version, dict) and "ref" in version:
                        stowed = self.get_branch(cid, version["ref"])
                        found.append((version["ref"], stowed))
                        version = stowed
                    if isinstance(version, dict):
                        forks.append(version.get("forks") or {})
        return found

    def _save_history(self, cid, conv):
        record = {k: v for k, v in conv.items() if k != "pending"}
        record["saved"] = time.time()  # its lifetime restarts now (see `update`)
        if record.get("forks"):
            record["forks"] = self._stow_forks(cid, record["forks"])
        self._keep_files(cid, record, record["saved"])
        if record.get("share"):  # a shared snapshot lives as long as its conversation
            self.backend.expire(self.share_prefix + record["share"], self.ttl)
        blob = self.backend.encode(record)
        self.backend.set_blob(self.prefix + cid, blob, self.ttl)
        self._remember(cid, blob, record)

    def _save_pending(self, cid, pending):
        if pending is None:
            self.backend.delete(self.pending_prefix + cid)
        else:
            self.backend.set(self.pending_prefix + cid, pending, self.ttl)

    def save(self, cid, conv):
        self._save_history(cid, conv)
        self._save_pending(cid, conv.get("pending"))

    def delete(self, cid):
        with self.backend.lock(self.prefix + cid, self.lock_timeout):
            conv = self.load(cid)
            stowed = self._stowed(cid, conv)
            shas = {ref["sha"] for ref in attachments.all_refs(conv)}
            shas |= {ref["sha"] for _, version in stowed for ref in attachments.all_refs(version or {})}
            for sha in shas:
                self.backend.delete(self._file_key(cid, sha))
            for ref, _ in stowed:
                self.delete_branch(cid, ref)
            if conv.get("share"):
                self.delete_share(conv["share"])
            self.backend.delete(self.prefix + cid)
            self.backend.delete(self.pending_prefix + cid)
        with self._decoded_lock:
            self._forget(cid)

    @contextmanager
    def update_pending(self, cid, lock_timeout=None):
        """Change only the turn under way (`None` if there is none) under the conversation's lock:
        progress saves, heartbeats and stop flags never read or rewrite the history."""
        key = self.pending_prefix + cid
        with self.backend.lock(self.prefix + cid, lock_timeout or self.lock_timeout):
            pending = self.backend.get(key)
            before = dict(pending) if pending else None
            yield pending
            if pending is not None and pending != before:
                self.backend.set(key, pending, self.ttl)

    def conversations(self, bid):
        """Browser `bid`'s conversations, newest activity first: `[{"id", "title", "at"}]`. Small: a
        turn reads this and its own conversation, never the others."""
        return self.listing(bid)[0]

    def listing(self, bid):
        """(`conversations(bid)`, whether the list is within the first half of its lifetime: a
        change to it would be the only reason to write it now)."""
        record = self.backend.get(self.index_prefix + bid) or {}
        return record.get("convs", []), not self._ageing(record)

    @contextmanager
    def update_conversations(self, bid):
        """Change browser `bid`'s list under its lock (two tabs creating conversations at once must
        both stay listed: the session itself is last-write-wins, so the list is not kept there)."""
        key = self.index_prefix + bid
        with self.backend.lock(key, self.lock_timeout):
            record = self.backend.get(key) or {}
            entries = record.get("convs", [])
            before = [dict(e) for e in entries]
            yield entries
            # Written when it changed, or when it is past half its lifetime: a browser that keeps
            # writing in the conversation already at the top must not lose its list to expiry.
            if entries != before or (entries and self._ageing(record)):
                self.backend.set(key, {"convs": entries, "saved": time.time()}, self.ttl)

    @contextmanager
    def update(self, cid):
        """Load, let the caller change, save what changed — all under the conversation's lock.
        Nothing is saved if the body raises. The history is written when its `rev` moved (every
        change to items or failed goes through `conversation`, which bumps it), history first: a
        crash between the two writes leaves a pending turn that `turns` recognises as settled."""
        with self.backend.lock(self.prefix + cid, self.lock_timeout):
            conv = self.load(cid)
            rev = conv.get("rev", 0)
            pending = dict(conv["pending"]) if conv["pending"] else None
            yield conv
            if conv.get("rev", 0) != rev or (conv["pending"] and not pending and conv["items"]
                                             and self._ageing(conv)):
                # A turn beginning on a history past half its lifetime writes it again: otherwise
                # it could expire while the turn runs, and the reply would be stored without it.
                self._save_history(cid, conv)
            if conv["pending"] != pending:
                self._save_pending(cid, conv["pending"])

    def _ageing(self, record):
        """Past half its lifetime (`saved` is when it was last written; without one, long ago)."""
        return time.time() - record.get("saved", 0) > self.ttl / 2


def _copy(record):
    """A history the caller may change: its own dict, item and meta lists, settings and failed turn.
    The items and their meta are shared: code replaces them, never edits one in place (tests check
    it: `Store.check_decoded`)."""
    copied = {**record, "items": list(record.get("items", ())), "meta": list(record.get("meta", ()))}
    for key in ("settings", "failed"):
        if isinstance(copied.get(key), dict):
            copied[key] = dict(copied[key])
    return copied

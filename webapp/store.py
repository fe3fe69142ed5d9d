"""Where conversations live, and the per-conversation lock that keeps two requests from overwriting each other.

Each conversation is a JSON document under its own key (`conv:<id>`) in the same store Flask-Session uses
(cachelib's file-system cache on this host, or Redis). The browser's session holds only the conversation id,
so a session write can never erase a turn. Every change is a read-modify-write under `Store.update(cid)`:
a file lock (flock) for the file store, a Redis lock for Redis, so separate gunicorn workers (and separate
hosts, with Redis) serialise their writes to one conversation.

Only this module knows the backends; errors come out as `StoreError`.
"""

import fcntl
import hashlib
import json
import os
import time
from contextlib import contextmanager

from . import conversation


class StoreError(Exception):
    """The conversation store could not be read or written."""


class FileBackend:
    """cachelib's FileSystemCache (atomic write-and-rename per key) plus flock-based locks."""

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

    @contextmanager
    def lock(self, key, timeout):
        # One lock file per key, never deleted: removing a lock file while another process waits on
        # it would let two writers in. They are empty; `flask purge` removes ones for expired keys.
        name = hashlib.sha256(key.encode()).hexdigest()[:32]
        fd = os.open(os.path.join(self.lock_dir, name), os.O_RDWR | os.O_CREAT, 0o600)
        try:
            deadline = time.monotonic() + timeout
            while True:
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    break
                except BlockingIOError:
                    if time.monotonic() > deadline:
                        raise StoreError("timed out waiting for the conversation lock") from None
                    time.sleep(0.002)
            yield
        finally:
            os.close(fd)  # closing the descriptor releases the lock


class RedisBackend:
    """A redis-py client shared with Flask-Session; locks are Redis locks that expire if a holder dies."""

    def __init__(self, client):
        import redis  # only needed when SESSION_TYPE=redis

        self.client = client
        self.errors = (redis.RedisError,)

    def get(self, key):
        try:
            raw = self.client.get(key)
        except self.errors as exc:
            raise StoreError(str(exc)) from None
        return raw.decode() if raw is not None else None

    def set(self, key, value, ttl):
        try:
            self.client.set(key, value, ex=ttl)
        except self.errors as exc:
            raise StoreError(str(exc)) from None

    def delete(self, key):
        try:
            self.client.delete(key)
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


class Store:
    """Conversations by id. `ttl` (seconds) restarts with every write, like the session's lifetime."""

    prefix = "conv:"

    def __init__(self, backend, ttl, lock_timeout=10.0):
        self.backend = backend
        self.ttl = ttl
        self.lock_timeout = lock_timeout

    def load(self, cid):
        raw = self.backend.get(self.prefix + cid)
        if raw is None:
            return conversation.new()
        try:
            return json.loads(raw)
        except ValueError:
            raise StoreError("a stored conversation is not valid JSON") from None

    def save(self, cid, conv):
        self.backend.set(self.prefix + cid, json.dumps(conv, separators=(",", ":")), self.ttl)

    def delete(self, cid):
        with self.backend.lock(self.prefix + cid, self.lock_timeout):
            self.backend.delete(self.prefix + cid)

    @contextmanager
    def update(self, cid):
        """Load, let the caller change, save — all under the conversation's lock. Nothing is saved
        if the body raises."""
        with self.backend.lock(self.prefix + cid, self.lock_timeout):
            conv = self.load(cid)
            yield conv
            self.save(cid, conv)

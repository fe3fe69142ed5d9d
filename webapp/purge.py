"""`flask --app wsgi purge`: reclaim the disk of the file store while the app keeps serving.

cachelib's FileSystemCache (with `threshold=0`) removes an expired file only when that key is read again,
so abandoned conversations and sessions stay on disk for ever, and so does every lock file. `purge`
removes:

- expired cache files (sessions, conversations, turns): cachelib writes each value to a temporary file
  and renames it into place, with the expiry time as the file's first four bytes, so a file's
  contents never change after it appears and its header alone says whether it expired;
- lock files whose key has no live file, each only while holding its flock (a busy one is skipped).
  `FileBackend.lock` re-checks after its flock that the path still names the file it locked, so a
  waiter on a lock file deleted here takes the lock on the new file instead: two holders never coexist;
- temporary files of writes that died before their rename (older than an hour).

Safe from cron while the app serves. An expired conversation file is removed while holding its lock,
and every removal first renames the file aside and checks it is the very file judged expired (same
inode): one written again at that instant is put back, never lost.

Redis needs none of this: every key has a TTL and Redis expires it itself.
"""

import fcntl
import logging
import os
import re
import secrets
import struct
import time

import click
from flask import current_app
from flask.cli import with_appcontext

from .store import FileBackend, StoreError, _same_file

log = logging.getLogger(__name__)

TEMP_AGE = 3600  # seconds after which a temporary file is a dead write's leftover
_LOCK_NAME = re.compile(r"[0-9a-f]{32}")


def purge(target, now=None):
    """Purge the store of `target` (a Store or a backend) and return what was done, as counts:

    expired   cache files removed because their TTL had passed
    kept      cache files still live
    locks     lock files removed (their key no longer exists)
    locks_kept  lock files kept (their key is live)
    busy      files and locks skipped because someone held the lock (done on a later run)
    temp      leftover temporary files removed
    errors    files that could not be read or removed (logged)

    For Redis nothing is done and the result is `{}`: Redis expires keys itself."""
    backend = getattr(target, "backend", target)
    if not isinstance(backend, FileBackend):
        return {}
    now = time.time() if now is None else now
    counts = dict.fromkeys(("expired", "kept", "locks", "locks_kept", "busy", "temp", "errors"), 0)
    live = _purge_cache_files(backend, now, counts)
    _purge_lock_files(backend, live, counts)
    return counts


def summary(counts):
    """One line for the operator (and cron's mail)."""
    if not counts:
        return "purge: nothing to do, Redis expires keys itself."
    line = (f"purge: removed {counts['expired']} expired files, {counts['locks']} unused lock files "
            f"and {counts['temp']} temporary files; kept {counts['kept']} files and "
            f"{counts['locks_kept']} lock files")
    if counts["busy"]:
        line += f"; {counts['busy']} in use, left for the next run"
    if counts["errors"]:
        line += f"; {counts['errors']} errors (see the log)"
    return line + "."


# --- cache files -------------------------------------------------------------------------------------

def _purge_cache_files(backend, now, counts):
    """Remove expired cache files; return the lock names (hash prefixes) of the files still there."""
    cache = backend.cache
    suffix = cache._fs_transaction_suffix
    hash_len = len(os.path.basename(cache._get_filename("")))
    live = set()
    for name in _listdir(cache._path):
        path = os.path.join(cache._path, name)
        try:
            if name.endswith(suffix):
                # A write (or a purge) that died between its temporary file and the rename.
                if os.stat(path).st_mtime < now - TEMP_AGE:
                    os.remove(path)
                    counts["temp"] += 1
                continue
            if len(name) != hash_len or cache._is_mgmt(name) or not os.path.isfile(path):
                continue  # the locks directory, cachelib's count file, anything not a cache entry
            state = _remove_if_expired(backend, path, now)
        except FileNotFoundError:
            continue  # removed meanwhile (read, deleted or purged by someone else)
        except (OSError, EOFError, struct.error):
            log.warning("purge: could not handle %s", path, exc_info=True)
            counts["errors"] += 1
            live.add(name[:32])
            continue
        counts[state] += 1
        if state != "expired":
            live.add(name[:32])
    return live


def _remove_if_expired(backend, path, now):
    """Remove the cache file at `path` if it expired; say "expired", "kept" or "busy"."""
    expires, inode = _header(path)
    if expires == 0 or expires >= now:  # cachelib's own test: 0 never expires
        return "kept"
    # Its key's lock, if it has one (conversations): no Store.update is between its read and its write.
    fd = _try_lock(os.path.join(backend.lock_dir, os.path.basename(path)[:32]))
    if fd is None:
        return "busy"
    try:
        return "expired" if _unlink_if_same(backend.cache, path, inode) else "kept"
    finally:
        if fd is not _ABSENT:
            os.close(fd)


def _header(path):
    """The expiry time a cachelib file starts with, and the file's inode."""
    with open(path, "rb") as f:
        return struct.unpack("I", f.read(4))[0], os.fstat(f.fileno()).st_ino


def _unlink_if_same(cache, path, inode):
    """Remove `path` only if it is still the file `inode`. A key written again since (a new file
    renamed over it) must stay, and POSIX has no "unlink if unchanged": move the file aside
    atomically, look at what was moved, and put it back if it is the new one."""
    aside = f"{path}.{secrets.token_hex(4)}{cache._fs_transaction_suffix}"  # cachelib ignores it
    os.rename(path, aside)
    if os.stat(aside).st_ino == inode:
        os.remove(aside)
        return True
    try:
        os.link(aside, path)
    except FileExistsError:
        pass  # written yet again meanwhile: that newer file stays, this one is stale
    os.remove(aside)
    return False


# --- lock files --------------------------------------------------------------------------------------

_ABSENT = object()  # a key with no lock file: nothing to hold


def _try_lock(path):
    """Take the flock of the lock file at `path` without waiting: its descriptor, None if someone
    holds it (or the file was replaced meanwhile), `_ABSENT` if there is no such file. Never creates
    one."""
    try:
        fd = os.open(path, os.O_RDWR)
    except FileNotFoundError:
        return _ABSENT
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        return None
    except BaseException:
        os.close(fd)
        raise
    if not _same_file(fd, path):  # another purge deleted it; a new one may be in use
        os.close(fd)
        return None
    return fd


def _purge_lock_files(backend, live, counts):
    """Delete the lock files of keys that have no live file, each only while holding its flock.

    A conversation stored after the listing above may lose its lock file here: harmless, since its
    next lock creates a new one, and anyone waiting on the deleted file retries on the new one."""
    for name in _listdir(backend.lock_dir):
        if not _LOCK_NAME.fullmatch(name):
            continue
        if name in live:
            counts["locks_kept"] += 1
            continue
        path = os.path.join(backend.lock_dir, name)
        try:
            fd = _try_lock(path)
            if fd is _ABSENT:
                continue
            if fd is None:
                counts["busy"] += 1
                continue
            try:
                os.remove(path)  # while holding its flock: see FileBackend.lock
            finally:
                os.close(fd)
            counts["locks"] += 1
        except FileNotFoundError:
            continue
        except OSError:
            log.warning("purge: could not remove the lock file %s", path, exc_info=True)
            counts["errors"] += 1


def _listdir(path):
    try:
        return os.listdir(path)
    except FileNotFoundError:
        return []
    except OSError as exc:
        raise StoreError(f"cannot list {path}: {exc}") from None


# --- the command -------------------------------------------------------------------------------------

@click.command("purge")
@with_appcontext
def purge_command():
    """Remove expired conversations and sessions, and unused lock files, from the file store.

    Safe to run while the app serves (e.g. daily from cron). With Redis it does nothing: Redis
    expires keys itself."""
    try:
        counts = purge(current_app.extensions["chat_store"])
    except StoreError as exc:
        raise click.ClickException(str(exc)) from None
    click.echo(summary(counts))
    if counts.get("errors"):
        raise click.exceptions.Exit(1)


def init_app(app):
    """Register `flask purge` (called from create_app)."""
    app.cli.add_command(purge_command)

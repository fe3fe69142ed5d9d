"""`purge` and `flask purge`: expired files and unused lock files go, live ones and held locks stay."""

import multiprocessing
import os
import subprocess
import sys
import threading
import time
from contextlib import ExitStack

import pytest
from cachelib.file import FileSystemCache

from tests.serving import ROOT
from webapp import conversation, purge as purge_module
from webapp.purge import init_app, purge, summary
from webapp.store import FileBackend, Store, StoreError


def file_backend(path):
    return FileBackend(FileSystemCache(str(path), threshold=0), str(path / "locks"))


def stored(backend, key):
    return os.path.exists(backend.cache._get_filename(key))


def lock_file(backend, key):
    return os.path.exists(backend.lock_path(key))


def add_turn(store, cid, text="hello"):
    with store.update(cid) as conv:
        conversation.add_turn(conv, text, "msg_x", "completed", "reply")


def test_expired_files_go_and_live_ones_stay_with_their_locks(tmp_path):
    backend = file_backend(tmp_path)
    short, long = Store(backend, ttl=100), Store(backend, ttl=10_000)
    add_turn(short, "old")  # expires in 100 s: expired at the purge below
    add_turn(long, "live")
    backend.cache.set("session:old", b"{}", timeout=100)
    backend.cache.set("session:live", b"{}", timeout=10_000)
    backend.cache.set("session:forever", b"{}", timeout=0)  # cachelib: 0 never expires

    counts = purge(long, now=time.time() + 1000)

    assert counts["expired"] == 2 and counts["kept"] == 3 and counts["errors"] == 0
    assert not stored(backend, "conv:old") and not stored(backend, "session:old")
    assert not lock_file(backend, "conv:old")  # its key is gone: an orphan now
    assert counts["locks"] == 1 and counts["locks_kept"] == 1
    assert lock_file(backend, "conv:live")
    assert len(long.load("live")["items"]) == 2
    assert backend.cache.get("session:live") == b"{}" and backend.cache.get("session:forever") == b"{}"
    add_turn(long, "live", "after the purge")  # the lock of a live conversation still works
    assert len(long.load("live")["items"]) == 4
    assert summary(counts).startswith("purge: removed 2 expired files, 1 unused lock files")


def test_nothing_live_is_removed_when_nothing_expired(tmp_path):
    backend = file_backend(tmp_path)
    store = Store(backend, ttl=3600)
    for cid in "abc":
        add_turn(store, cid)
    assert purge(store) == {"expired": 0, "kept": 3, "locks": 0, "locks_kept": 3, "busy": 0,
                            "temp": 0, "errors": 0}
    assert all(len(store.load(cid)["items"]) == 2 for cid in "abc")


def test_an_orphaned_lock_file_is_removed(tmp_path):
    backend = file_backend(tmp_path)
    with backend.lock("conv:never-stored", 1):
        pass
    assert lock_file(backend, "conv:never-stored")
    assert purge(backend)["locks"] == 1
    assert os.listdir(backend.lock_dir) == []


def _hold(lock_dir, key, held, release):
    backend = FileBackend(FileSystemCache(os.path.dirname(lock_dir), threshold=0), lock_dir)
    with backend.lock(key, 5):
        held.set()
        release.wait(10)


def test_a_lock_held_by_another_process_is_never_deleted(tmp_path):
    backend = file_backend(tmp_path)
    expired = Store(backend, ttl=-10)
    add_turn(expired, "held")  # expired already, but its lock is held: a write may be under way
    ctx = multiprocessing.get_context("fork")
    holders = []
    for key in ("conv:orphan", "conv:held"):
        held, release = ctx.Event(), ctx.Event()
        proc = ctx.Process(target=_hold, args=(backend.lock_dir, key, held, release))
        proc.start()
        assert held.wait(5)
        holders.append((proc, release))
    try:
        counts = purge(backend)
        assert counts["busy"] == 2 and counts["locks"] == 0 and counts["expired"] == 0
        assert lock_file(backend, "conv:orphan") and lock_file(backend, "conv:held")
        assert stored(backend, "conv:held")
    finally:
        for proc, release in holders:
            release.set()
            proc.join(5)
    counts = purge(backend)  # released: now both go
    assert counts["expired"] == 1 and counts["locks"] == 2
    assert os.listdir(backend.lock_dir) == []


def test_a_lock_file_purged_while_someone_waits_on_it_cannot_let_two_holders_in(tmp_path):
    """B waits on the lock file; the holder leaves and a purge deletes the file before B gets it;
    C then locks the new file at the same path. Without the inode check B would hold the deleted
    file's flock and C the new one's, both inside at once."""
    backend = file_backend(tmp_path)
    inside, overlap, entered = [0], [], []
    guard = threading.Lock()

    def critical(who):
        with backend.lock("conv:k", 5):
            with guard:
                inside[0] += 1
                overlap.append(inside[0])
                entered.append(who)
            time.sleep(0.3)
            with guard:
                inside[0] -= 1

    for attempt in range(5):
        inside[0], overlap[:], entered[:] = 0, [], []
        with ExitStack() as holding:
            holding.enter_context(backend.lock("conv:k", 1))  # A
            waiter = threading.Thread(target=critical, args=("B",))
            waiter.start()
            time.sleep(0.3)  # B has opened the lock file and backs off between tries
        counts = purge(backend)  # A has just left: purge takes the lock file and deletes it
        if counts["locks"] == 1:
            break
        waiter.join()  # B won the race to the lock before the purge: try again
    else:
        pytest.fail("the purge never got the lock file before the waiter")
    critical("C")
    waiter.join()
    assert sorted(entered) == ["B", "C"]
    assert max(overlap) == 1, "two holders of one conversation lock at once"


def test_a_file_written_again_while_being_purged_is_kept(tmp_path):
    backend = file_backend(tmp_path)
    backend.cache.set("turn:x", {"turn": "old"}, timeout=-10)
    path = backend.cache._get_filename("turn:x")
    expires, inode = purge_module._header(path)
    assert expires < time.time()
    backend.cache.set("turn:x", {"turn": "new"}, timeout=3600)  # a writer, between read and removal
    assert not purge_module._unlink_if_same(backend.cache, path, inode)
    assert backend.cache.get("turn:x") == {"turn": "new"}
    assert sorted(os.listdir(tmp_path)) == sorted([os.path.basename(path), "locks"])


def test_leftover_temporary_files_go_once_old(tmp_path):
    backend = file_backend(tmp_path)
    old = tmp_path / "tmpabc.__wz_cache"
    fresh = tmp_path / "tmpdef.__wz_cache"
    old.write_bytes(b"x")
    fresh.write_bytes(b"x")
    os.utime(old, (time.time() - 2 * 3600,) * 2)
    assert purge(backend)["temp"] == 1
    assert not old.exists() and fresh.exists()


def test_the_lock_still_times_out_with_store_error(tmp_path):
    backend = file_backend(tmp_path)
    with backend.lock("conv:k", 1):
        started = time.monotonic()
        with pytest.raises(StoreError):
            with backend.lock("conv:k", 0.2):
                pass
        assert 0.2 <= time.monotonic() - started < 1


def test_flask_purge_command(make_app):
    app = make_app()
    init_app(app)
    store = app.extensions["chat_store"]
    live = Store(store.backend, ttl=store.ttl)
    expired = Store(store.backend, ttl=-10)
    add_turn(live, "live")
    add_turn(expired, "gone")
    store.backend.cache.set("session:gone", b"{}", timeout=-10)  # the sessions' cache too

    result = app.test_cli_runner().invoke(args=["purge"])

    assert result.exit_code == 0, result.output
    assert result.output.strip() == ("purge: removed 2 expired files, 1 unused lock files and "
                                     "0 temporary files; kept 1 files and 1 lock files.")
    assert len(live.load("live")["items"]) == 2
    assert not stored(store.backend, "conv:gone") and not lock_file(store.backend, "conv:gone")


def _count(path, n):
    backend = file_backend(path)
    for _ in range(n):
        # The lock of a key that is never stored: every purge finds it orphaned and deletes it.
        with backend.lock("conv:counted", 10):
            value = backend.cache.get("counter") or 0
            backend.cache.set("counter", value + 1, timeout=0)


def test_purging_a_contended_lock_over_and_over_loses_no_update(tmp_path):
    ctx = multiprocessing.get_context("fork")
    procs = [ctx.Process(target=_count, args=(tmp_path, 150)) for _ in range(3)]
    for p in procs:
        p.start()
    removed = 0
    while any(p.is_alive() for p in procs):
        removed += purge(file_backend(tmp_path))["locks"]
    for p in procs:
        p.join()
    assert file_backend(tmp_path).cache.get("counter") == 450
    assert removed > 0


def test_flask_purge_from_cron_prints_only_its_line(tmp_path):
    """As the README's crontab line runs it: no key, no SECRET_KEY in its environment. A serving
    process warns about a missing key; a cron job that mails its output must not."""
    env = {"PATH": os.environ["PATH"], "HOME": str(tmp_path), "SESSION_DIR": str(tmp_path / "sessions")}
    done = subprocess.run([sys.executable, "-m", "flask", "--app", "wsgi", "purge"], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert done.stderr == ""
    assert done.stdout.startswith("purge: removed 0 expired files") and done.stdout.count("\n") == 1

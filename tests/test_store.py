"""The conversation store: per-conversation locks across threads and processes, no pruning, recovery."""

import multiprocessing
import os
import threading
import time

import pytest
from cachelib.file import FileSystemCache

from webapp import conversation, turns
from webapp.store import FileBackend, FileCache, Store, StoreError


def file_store(path, ttl=3600):
    # The app's own cache (its leaner writes): the concurrency tests below run on what it runs on.
    return Store(FileBackend(FileCache(str(path), threshold=0), str(path / "locks")), ttl)


def test_the_lean_file_cache_writes_what_cachelib_reads(tmp_path, monkeypatch):
    lean, plain = FileCache(str(tmp_path), threshold=0), FileSystemCache(str(tmp_path), threshold=0)
    value = {"items": [{"text": "é" * 10}], "n": 3}
    assert lean.set("conv:a", value, timeout=100)
    assert plain.get("conv:a") == value and lean.get("conv:a") == value
    assert lean.set("conv:a", {"n": 4}, timeout=100)  # over an existing file
    assert plain.get("conv:a") == {"n": 4}
    assert lean.set("forever", 1, timeout=0) and plain.get("forever") == 1
    # Its expiry is cachelib's: read back as missing once it has passed.
    assert lean.set("short", "x", timeout=10)
    now = time.time()
    monkeypatch.setattr("cachelib.file.time", lambda: now + 11)
    assert plain.get("short") is None and plain.get("forever") == 1
    # Only the entries are left: no temporary file.
    assert sorted(os.listdir(tmp_path)) == sorted(os.path.basename(plain._get_filename(k))
                                                  for k in ("conv:a", "forever", "short"))


def test_a_failed_lean_write_is_a_store_error_and_leaves_the_old_value(tmp_path, monkeypatch):
    cache = FileCache(str(tmp_path), threshold=0)
    backend = FileBackend(cache, str(tmp_path / "locks"))
    backend.set("k", "old", 100)

    def disk_full(fd, data):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr("webapp.store.os.write", disk_full)
    with pytest.raises(StoreError):
        backend.set("k", "new", 100)
    monkeypatch.undo()
    assert backend.get("k") == "old"
    assert sorted(os.listdir(tmp_path)) == sorted([os.path.basename(cache._get_filename("k")), "locks"])


def _append_many(path, who, n):
    store = file_store(path)
    for i in range(n):
        with store.update("c") as conv:
            conversation.add_turn(conv, f"{who}-{i}", "msg_x", "completed", "reply")


def test_concurrent_updates_from_threads_lose_nothing(tmp_path):
    workers = [threading.Thread(target=_append_many, args=(tmp_path, f"t{k}", 25)) for k in range(4)]
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    assert len(file_store(tmp_path).load("c")["items"]) == 2 * 100


def test_concurrent_updates_from_processes_lose_nothing(tmp_path):
    ctx = multiprocessing.get_context("fork")
    procs = [ctx.Process(target=_append_many, args=(tmp_path, f"p{k}", 25)) for k in range(3)]
    for p in procs:
        p.start()
    for p in procs:
        p.join()
    assert len(file_store(tmp_path).load("c")["items"]) == 2 * 75


def test_the_file_store_never_prunes_other_conversations(tmp_path):
    store = file_store(tmp_path)
    for i in range(600):  # more than cachelib's usual 500-entry threshold
        store.save(f"c{i}", conversation.new())
    assert all(file_store(tmp_path).backend.get(f"conv:c{i}") for i in range(600))








def test_progress_saves_leave_the_history_record_alone(tmp_path):
    store = file_store(tmp_path)
    with store.update("c") as conv:
        conversation.add_turn(conv, "q", "msg_a", "completed", "a")
    history_file = store.backend.cache._get_filename("conv:c")
    before = os.stat(history_file).st_mtime_ns
    turns.begin(store, "c", "next")
    with store.update("c") as conv:
        conv["pending"]["partial"] = "some words"
    assert os.stat(history_file).st_mtime_ns == before
    assert store.load("c")["pending"]["partial"] == "some words"


def _count_decodes(store, monkeypatch):
    decoded = []
    original = store.backend.decode
    monkeypatch.setattr(store.backend, "decode", lambda blob: decoded.append(len(blob)) or original(blob))
    return decoded


def test_an_unchanged_history_is_decoded_once_per_process(tmp_path, monkeypatch):
    monkeypatch.setattr(Store, "check_decoded", False)  # the tests' own check decodes every reuse
    store = file_store(tmp_path)
    with store.update("c") as conv:
        conversation.add_turn(conv, "q", "msg_a", "completed", "a")
    decoded = _count_decodes(store, monkeypatch)
    for _ in range(3):
        assert [conversation.item_text(i) for i in store.load("c")["items"]] == ["q", "a"]
    assert decoded == []  # the process wrote it, so it knew it already
    reader = file_store(tmp_path)  # another worker
    decoded = _count_decodes(reader, monkeypatch)
    for _ in range(3):
        reader.load("c")
    assert len(decoded) == 1


def test_another_workers_write_is_always_seen(tmp_path):
    mine, theirs = file_store(tmp_path), file_store(tmp_path)
    for i in range(20):
        with theirs.update("c") as conv:
            conversation.add_turn(conv, f"q{i}", f"msg_{i}", "completed", "same")
        with mine.update("c") as conv:  # read from the cache when unchanged, else decoded anew
            assert len(conv["items"]) == 4 * i + 2
            conversation.add_turn(conv, f"r{i}", f"msg_r{i}", "completed", "same")
    assert len(theirs.load("c")["items"]) == 80


def test_changing_a_loaded_history_without_saving_changes_nothing_stored(tmp_path):
    store = file_store(tmp_path)
    with store.update("c") as conv:
        conversation.add_turn(conv, "q", "msg_a", "completed", "a")
    conv = store.load("c")
    conversation.add_turn(conv, "never saved", "msg_b", "completed", "b")
    conv["title"] = "never saved"
    del conv["meta"][0]
    try:
        with store.update("c") as conv:
            conversation.add_turn(conv, "failed", "msg_c", "completed", "c")
            raise RuntimeError("the turn failed before it was saved")
    except RuntimeError:
        pass
    again = store.load("c")
    assert [conversation.item_text(i) for i in again["items"]] == ["q", "a"]
    assert len(again["meta"]) == 2 and "title" not in again


def test_a_history_changed_in_place_is_caught_in_tests(tmp_path):
    """Loaded items are shared with the process's kept copy: code must replace them, never edit one.
    Tests check every reuse (conftest), so such code fails here; settings and failed are copies."""
    store = file_store(tmp_path)
    with store.update("c") as conv:
        conversation.add_turn(conv, "q", "msg_a", "completed", "a")
        conv["settings"] = {"model": "openai/o4-mini"}
        conv["rev"] += 1
    loaded = store.load("c")
    loaded["settings"]["model"] = "never/saved"
    assert store.load("c")["settings"]["model"] == "openai/o4-mini"
    store.load("c")["items"][0]["content"][0]["text"] = "edited in place"
    with pytest.raises(AssertionError, match="changed in place"):
        store.load("c")


def test_a_deleted_history_is_gone_in_every_process(tmp_path):
    mine, theirs = file_store(tmp_path), file_store(tmp_path)
    with mine.update("c") as conv:
        conversation.add_turn(conv, "q", "msg_a", "completed", "a")
    assert theirs.history("c")["items"]
    mine.delete("c")
    assert theirs.history("c") is None and mine.history("c") is None










def test_a_waiting_lock_backs_off_instead_of_spinning(tmp_path, monkeypatch):
    import fcntl

    from webapp import store as store_module

    backend = file_store(tmp_path).backend
    tries = []
    real_flock = fcntl.flock
    monkeypatch.setattr(store_module.fcntl, "flock", lambda fd, op: (tries.append(op), real_flock(fd, op))[1])
    got = []

    def wait_for_it():
        with backend.lock("conv:c", 5):
            got.append(time.monotonic())

    with backend.lock("conv:c", 1):
        waiter = threading.Thread(target=wait_for_it)
        waiter.start()
        time.sleep(1.0)
        released = time.monotonic()
    waiter.join()
    assert len(tries) < 40  # 1 s of waiting at 1, 2, 4 … 50 ms apart (it was 500 tries at 2 ms)
    assert got and got[0] - released < 0.2  # and it still gets the lock soon after its release


def test_ping_says_whether_the_file_store_is_writable(tmp_path):
    import shutil

    from webapp.store import StoreError

    store = file_store(tmp_path)
    store.ping()
    assert sorted(os.listdir(tmp_path)) == ["locks"]  # the probe leaves nothing behind
    shutil.rmtree(tmp_path / "locks")
    try:
        store.ping()
    except StoreError as exc:
        assert "not writable" in str(exc)
    else:
        raise AssertionError("ping passed on a store whose lock directory is gone")




def test_a_browsers_list_is_written_again_past_half_its_lifetime(tmp_path, monkeypatch):
    """Writing on in the conversation already at the top changes nothing in the list: it must still
    not expire under a browser that uses it every day."""
    store = file_store(tmp_path, ttl=100)
    with store.update_conversations("b") as entries:
        entries.append({"id": "c", "title": "t", "at": 1.0})
    writes = []
    original = store.backend.set
    monkeypatch.setattr(store.backend, "set", lambda key, *a: writes.append(key) or original(key, *a))
    with store.update_conversations("b"):
        pass  # young and unchanged: not written
    assert writes == []
    now = time.time()
    monkeypatch.setattr(time, "time", lambda: now + 60)
    with store.update_conversations("b"):
        pass
    assert writes == ["browser:b"] and store.conversations("b") == [{"id": "c", "title": "t", "at": 1.0}]

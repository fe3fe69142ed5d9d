"""The conversation store: per-conversation locks across threads and processes, no pruning, recovery."""

import multiprocessing
import os
import threading
import time

import pytest
from cachelib.file import FileSystemCache

from webapp import conversation, turns, usage
from webapp.turns import runner
from webapp.store import FileBackend, Store


def file_store(path, ttl=3600):
    return Store(FileBackend(FileSystemCache(str(path), threshold=0), str(path / "locks")), ttl)


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


def test_a_second_turn_waits_for_the_first_then_is_refused(tmp_path):
    store = file_store(tmp_path)
    turns.begin(store, "c", "first")
    started = time.monotonic()
    try:
        turns.begin(store, "c", "second", wait=0.3, waiter="w")
    except turns.Busy:
        pass
    else:
        raise AssertionError("a second turn started while the first was pending")
    assert time.monotonic() - started >= 0.3


def test_a_dead_pending_turn_is_recovered_with_the_users_text_kept(tmp_path):
    store = file_store(tmp_path)
    turns.begin(store, "c", "orphaned question")
    with store.update("c") as conv:
        conv["pending"]["beat"] -= 120  # its worker died two minutes ago
    conv = turns.current(store, "c")
    assert conv["pending"] is None
    assert conv["failed"]["text"] == "orphaned question"
    turn, items, _, _ = turns.begin(store, "c", "orphaned question")
    assert [i["role"] for i in items] == ["user"]


def test_a_crash_after_the_reply_was_stored_does_not_repeat_the_turn(tmp_path):
    store = file_store(tmp_path)
    turn, _, _, _ = turns.begin(store, "c", "question")
    conv = store.load("c")
    conversation.add_turn(conv, "question", "msg_a", "completed", "answer")
    store._save_history("c", conv)  # the worker died before it cleared the pending marker
    with store.update("c") as conv:
        conv["pending"]["beat"] -= 120
    conv = turns.current(store, "c")
    assert conv["pending"] is None and conv["failed"] is None
    assert [conversation.item_text(i) for i in conv["items"]] == ["question", "answer"]


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


def test_any_turn_whose_worker_died_is_recovered_within_seconds_not_the_read_timeout(tmp_path):
    store = file_store(tmp_path)
    turns.begin(store, "c", "streamed question")
    with store.update("c") as conv:
        conv["pending"].update(beat=conv["pending"]["beat"] - 45, item_id="msg_p", partial="half an")
    conv = turns.current(store, "c")
    assert conv["pending"] is None
    assert conversation.messages(conv)[-1]["text"] == "half an"
    assert conv["items"][-1]["status"] == "incomplete"


class BrokenAfterBegin(FileBackend):
    """A file store that stops accepting writes once armed (a full disk, a lost Redis)."""

    armed = False

    def set(self, key, value, ttl):
        if self.armed:
            from webapp.store import StoreError

            raise StoreError("disk full")
        super().set(key, value, ttl)


def test_a_store_failure_mid_turn_still_ends_the_stream_with_a_message(tmp_path, fake):
    from webapp.openrouter import Client

    backend = BrokenAfterBegin(FileSystemCache(str(tmp_path), threshold=0), str(tmp_path / "locks"))
    store = Store(backend, 3600)
    client = Client(fake.api_key, fake.base_url, "openai/o4-mini", 100)
    turn, items, _, _ = turns.begin(store, "c", "hello")
    backend.armed = True
    running = turns.start(store, client, "c", turn, items)
    events = list(running.relay.listen(tick=1.0))
    assert events[-1][1] == "error" and "could not be saved" in events[-1][2]["message"]
    backend.armed = False
    assert store.load("c")["pending"]["text"] == "hello"  # still there, to be recovered


def test_a_stop_no_worker_answers_is_settled_from_the_saved_progress_with_a_sentence(tmp_path):
    """The turn's worker is gone or stuck: the Stop itself settles it, within its short wait."""
    store = file_store(tmp_path)
    turn, _, _, _ = turns.begin(store, "c", "question")
    started = time.monotonic()
    turns.stop(store, "c", turn)
    assert time.monotonic() - started < 2
    conv = store.load("c")
    assert conv["pending"] is None
    assert conv["failed"] == {"text": "question", "error": "Stopped before the model answered.",
                              "replace": False, "stopped": True}
    turn, _, _, _ = turns.begin(store, "c", "again")
    with store.update("c") as conv:
        conv["pending"].update(item_id="msg_p", partial="some words")
    turns.stop(store, "c", turn)
    assert conversation.messages(store.load("c"))[-1]["text"] == "some words"
    assert conversation.messages(store.load("c"))[-1]["note"] == "Stopped."
    # Charged for, but never reported: estimated from the text sent and received, and marked so.
    spent = store.load("c")["meta"][-1]["usage"]
    assert spent == {"input_tokens": usage.estimate_items([conversation.user_item("again")]),
                     "output_tokens": usage.estimate_tokens("some words"), "estimated": True}
    shown = usage.turn_usage({"usage": spent}, (0.000001, 0.000002))["text"]
    assert shown.startswith("\u2248 ") and shown.endswith("(estimate)") and " in \u00b7 " in shown


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


def test_progress_saves_are_spaced_out_when_many_replies_stream_at_once(tmp_path, monkeypatch):
    """Each save is a locked store write: with hundreds of replies streaming in one process, each is
    saved less often (never less than a heartbeat), so the process makes about 100 saves a second."""
    assert runner.flush_interval(1) == runner.flush_interval(50) == runner.FLUSH_EVERY
    assert runner.flush_interval(300) == pytest.approx(3.0)
    assert runner.flush_interval(5000) == runner.HEARTBEAT
    store = file_store(tmp_path)
    saves = []
    monkeypatch.setattr(runner, "flush", lambda *args: saves.append(args) or "running")
    running = runner.Turn(store, "c", "t")
    start = running.saved[0]
    for step in range(1, 31):  # 3 s of the saver's rounds, a delta in each
        running.state.text += "word "
        running.save_progress(start + step * 0.1, runner.flush_interval(300))
    assert len(saves) == 1  # at 3 s, not every 0.5 s


def test_a_turn_beginning_on_an_old_history_restarts_its_lifetime(tmp_path, monkeypatch):
    """A history expires SESSION_LIFETIME_DAYS after its last write: one left alone almost that long
    must not expire under the turn that just began on it."""
    store = file_store(tmp_path, ttl=100)
    with store.update("c") as conv:
        conversation.add_turn(conv, "old question", "msg_a", "completed", "old answer")
    written = store.history("c")["saved"]
    turns.begin(store, "c", "soon after")  # young: the history is not written again
    assert store.history("c")["saved"] == written
    with store.update("c") as conv:
        conv["pending"] = None
    now = time.time()
    monkeypatch.setattr(time, "time", lambda: now + 60)  # past half its lifetime
    turns.begin(store, "c", "much later")
    assert store.history("c")["saved"] == now + 60
    assert [conversation.item_text(i) for i in store.load("c")["items"]] == ["old question", "old answer"]


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

"""Settling: a turn ends in the stored conversation exactly once, a dead worker's turn included."""

from tests.test_store import file_store
from webapp import conversation, turns


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


def test_any_turn_whose_worker_died_is_recovered_within_seconds_not_the_read_timeout(tmp_path):
    store = file_store(tmp_path)
    turns.begin(store, "c", "streamed question")
    with store.update("c") as conv:
        conv["pending"].update(beat=conv["pending"]["beat"] - 45, item_id="msg_p", partial="half an")
    conv = turns.current(store, "c")
    assert conv["pending"] is None
    assert conversation.messages(conv)[-1]["text"] == "half an"
    assert conv["items"][-1]["status"] == "incomplete"

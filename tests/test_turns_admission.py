"""Admission: a send queued behind a reply waits on that reply, not on a timer."""

import threading
import time

from tests.fake_openrouter import reply
from tests.test_store import file_store
from webapp import conversation, turns
from webapp.openrouter import Client


def test_a_queued_send_waits_on_the_reply_before_it_and_starts_when_it_ends(tmp_path, fake, monkeypatch):
    store = file_store(tmp_path)
    client = Client(fake.api_key, fake.base_url, "openai/o4-mini", 100)
    gate = threading.Event()
    fake.queue(reply("the first reply", gate=gate, chunks=["the first", " reply"]))
    turn, items, _, _ = turns.begin(store, "c", "first")
    running = turns.start(store, client, "c", turn, items)
    looks = []
    real = type(store).update
    monkeypatch.setattr(type(store), "update", lambda self, cid: looks.append(cid) or real(self, cid))
    second = {}
    waiting = threading.Thread(target=lambda: second.update(
        begun=turns.begin(store, "c", "second", wait=30.0, waiter="w")))
    waiting.start()
    assert not running.wait(1.5)  # the first reply is held: the second waits meanwhile…
    assert waiting.is_alive()
    looks_while_waiting = len(looks)
    gate.set()
    waiting.join(5)
    assert not waiting.is_alive() and second["begun"].text == "second"
    # …on the first reply itself (it is in this process): a look when it began, none while it
    # waited (a timer of a quarter second would have looked six times).
    assert looks_while_waiting <= 2, looks
    assert store.load("c")["pending"]["turn"] == second["begun"].turn


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

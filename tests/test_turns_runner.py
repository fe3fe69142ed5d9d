"""Running a turn: a store failure still ends the stream, a Stop nobody answers still settles, and
progress saves are spaced when many replies stream at once."""

import time

import pytest
from cachelib.file import FileSystemCache

from tests.conftest import messages, under_gevent
from tests.test_store import file_store
from webapp import conversation, turns, usage
from webapp.store import FileBackend, Store
from webapp.turns import runner


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


def test_under_gevent_a_turn_registers_without_letting_other_greenlets_run_under_the_lock(tmp_path):
    """Every send takes the lock that reserves and registers turns. Under gunicorn's gevent worker a
    registering turn used to ask whether the progress saver was alive (`Thread.is_alive()`), and
    gevent's answer runs the other greenlets first: the lock stayed held for a whole round of the
    event loop, and under a burst of sends each one queued behind the others, one round each."""
    seen = under_gevent("""
        import pathlib, sys, gevent
        from tests.test_store import file_store
        from webapp.turns import admission, runner
        store = file_store(pathlib.Path(sys.argv[1]))
        runner.register(store, "c1", "t1")  # the process's first turn starts its progress saver
        gevent.sleep(0.05)
        seen = []
        gevent.spawn(lambda: seen.append(admission.LOCK.locked()))  # ready to run at the next switch
        runner.register(store, "c2", "t2")
        gevent.sleep(0)
        print(seen)
    """, tmp_path)
    assert seen == [False]


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


def test_the_request_that_begins_a_turn_reads_it_and_a_thread_reads_on_once_it_leaves(tmp_path, fake):
    """`start(here=True)`: the reply is read by whoever iterates `reader.events()` (each delta is
    published and given back in that thread, no hand-off); `hand_over()` (the response closing, the
    tab gone) has a thread of its own read the rest, so the whole reply is still stored."""
    import threading

    from tests.fake_openrouter import reply
    from webapp.openrouter import Client

    store = file_store(tmp_path)
    client = Client(fake.api_key, fake.base_url, "openai/o4-mini", 100)
    gate = threading.Event()
    fake.queue(reply("one two three four", chunks=["one ", "two ", "three ", "four"], gate=gate))
    turn, items, _, _ = turns.begin(store, "c", "hello")
    running = turns.start(store, client, "c", turn, items, here=True)
    readers = []
    original = running.publish
    running.publish = lambda *args, **kwargs: readers.append(threading.current_thread()) or original(*args, **kwargs)
    events = running.reader.events()
    first = next(event for event in events if event[1] == "delta")
    assert first[2] == "one " and set(readers) == {threading.current_thread()}
    assert store.load("c")["pending"]["turn"] == turn  # nothing stored yet: the rest is held back
    here = len(readers)
    running.reader.hand_over()  # this "request" is over before the reply is
    gate.set()
    assert running.wait(5)
    assert readers[here:] and threading.current_thread() not in readers[here:]
    assert conversation.messages(store.load("c"))[-1]["text"] == "one two three four"
    assert turn not in turns.LIVE


def test_a_turn_begun_here_whose_request_never_read_it_is_read_by_a_thread(tmp_path, fake):
    """The client left before the stream's first byte: the response only closes, and the turn is
    still read and stored (no pending turn that nobody writes)."""
    from webapp.openrouter import Client

    store = file_store(tmp_path)
    client = Client(fake.api_key, fake.base_url, "openai/o4-mini", 100)
    turn, items, _, _ = turns.begin(store, "c", "hello")
    running = turns.start(store, client, "c", turn, items, here=True)
    running.reader.hand_over()
    assert running.wait(5)
    assert conversation.messages(store.load("c"))[-1]["text"] == "Reply 1: hello"
    assert store.load("c")["pending"] is None


def test_the_request_reading_a_turn_still_sends_keep_alives_and_renderings_while_the_model_pauses(
        client, fake, monkeypatch):
    """The reply is read by the request that streams it, so while the model is silent (without even
    keep-alive comments of its own) that request is waiting on the upstream: it stops waiting to send
    a keep-alive when one is due, and a rendering of the words so far, then reads on, nothing lost."""
    import threading

    from tests.fake_openrouter import reply
    from tests.sse import sse_events
    from webapp.views import streaming

    monkeypatch.setattr(streaming, "KEEPALIVE", 0.2)
    # Renderings spaced by the shortest interval (HTML_EVERY), whatever earlier tests left behind (the
    # process's last render cost and its running turns space them), and a second's pause after the
    # first words.
    monkeypatch.setattr(streaming._Snapshots, "_spaced", lambda self, cost: streaming.HTML_EVERY)
    gate = threading.Event()
    threading.Timer(1.7, gate.set).start()
    fake.queue(reply("**bold** start, then the rest", chunks=["**bold** start", ", then the rest"],
                     gate=gate, delay=0.7, reasoning=False))
    body = client.post("/c/new/turns", data={"message": "slow"}).get_data(as_text=True)
    before_words = body.split("event: delta")[0]
    assert before_words.count(": keep-alive") >= 2  # the silent 0.7 s before the first word
    found = sse_events(body)
    kinds = [kind for kind, _ in found]
    # The held-back rest comes after a rendering of the first words (sent during the pause).
    first_html = kinds.index("html")
    assert first_html < max(i for i, kind in enumerate(kinds) if kind == "delta")
    assert "<strong>bold</strong>" in found[first_html][1]
    assert "".join(data for kind, data in found if kind == "delta") == "**bold** start, then the rest"
    assert found[-1][0] == "done"


def test_a_streamed_reply_read_with_pauses_for_other_work_loses_nothing(fake):
    """`Client.stream(idle=…)`: while nothing arrives for that long, ("idle", None) comes and the
    reading goes on; every delta still comes, in order, whole."""
    import threading

    from tests.fake_openrouter import reply
    from webapp.openrouter import Client, StreamState

    client = Client(fake.api_key, fake.base_url, "openai/o4-mini", 100)
    words = [f"w{i} " for i in range(30)]
    gate = threading.Event()
    threading.Timer(0.5, gate.set).start()
    fake.queue(reply("".join(words), chunks=words, gate=gate))
    got = list(client.stream([{"type": "message", "role": "user",
                                "content": [{"type": "input_text", "text": "x"}]}],
                              StreamState(), idle=lambda: 0.05))
    kinds = [kind for kind, _ in got]
    assert kinds.count("idle") >= 3  # about ten 0.05 s waits in the half second held
    assert [value for kind, value in got if kind == "delta"] == words
    assert kinds[-1] == "done" and got[-1][1].text == "".join(words)


def test_a_store_failure_on_a_picked_up_reply_never_says_nothing_was_sent(app):
    """`unsent` tells the page to put its text back in the box: true only when no turn began. A reply
    picked up after a reload began long before its stream, whatever that stream sees first."""
    import json

    from webapp.store import StoreError
    from webapp.views import streaming

    def failing():
        yield None, "delta", "some words"
        raise StoreError("disk full")

    def last_error(body):
        block = [b for b in body if b.startswith("event: error")][-1]
        return json.loads(block.split("data: ", 1)[1])

    with app.app_context():
        picked_up = list(streaming._event_stream(failing(), "c", streaming._Snapshots(), begun=True))
        fresh = list(streaming._event_stream(failing(), "c", streaming._Snapshots()))
    assert last_error(picked_up)["unsent"] is False
    assert last_error(fresh)["unsent"] is True  # a send whose turn never started: text goes back


def test_events_read_together_go_out_in_one_write_and_nothing_waits_for_more(app):
    """The request's stream (`batched`) holds the words read from the upstream together until the
    reader says CAUGHT_UP (its next read would wait), then writes them at once, adjacent deltas as
    one event with the last one's id; the upstream's keep-alives among words add nothing."""
    from tests.sse import sse_events
    from webapp.views import streaming

    def upstream():
        yield "1", "delta", "Hel"
        yield "2", "alive", None
        yield "3", "delta", "lo"
        yield None, "caught_up", None
        yield "4", "delta", " world"
        yield None, "caught_up", None

    with app.app_context():
        batched = list(streaming._relay(upstream(), "c", streaming._Snapshots(), batched=True))
        one_by_one = list(streaming._relay(upstream(), "c", streaming._Snapshots()))
    assert [sse_events(chunk) for chunk in batched] == [[("delta", "Hello")], [("delta", " world")]]
    assert batched[0].startswith("id: 3\n")
    # Without `batched` (a follower's stream), each event is its own write, as it comes.
    assert [chunk.split("\n")[0] for chunk in one_by_one] == ["id: 1", ": keep-alive", "id: 3", "id: 4"]


def test_a_rendering_due_never_holds_back_the_words_read_with_it(app, monkeypatch):
    """When a rendering of the reply is due as words are written, the words go out first, in their
    own write: the rendering (which costs more the longer the reply) comes after them."""
    from tests.sse import sse_events
    from webapp.views import streaming

    rendered = []
    monkeypatch.setattr(streaming.render.Growing, "html",
                        lambda self, text: rendered.append(text) or f"<p>{text}</p>")
    snapshots = streaming._Snapshots(at_once=True)  # due at its first word

    def upstream():
        yield "1", "delta", "Hello"
        yield None, "caught_up", None

    with app.app_context():
        writes = streaming._relay(upstream(), "c", snapshots, batched=True)
        first = next(writes)
        assert sse_events(first) == [("delta", "Hello")] and rendered == []  # out before any render
        assert sse_events(next(writes)) == [("html", "<p>Hello</p>")]


def test_a_reader_says_caught_up_before_every_read_that_would_wait(fake):
    """`Client.stream(idle=…)` yields ("caught_up", None) after the first word, before the upstream
    (held by a gate) sends the rest: the stream writes that word then, not with the next."""
    import threading

    from tests.fake_openrouter import FakeOpenRouter, reply
    from webapp.openrouter import Client, StreamState

    for chunked in (True, False):  # a chunked body, and one that ends when the connection closes
        with FakeOpenRouter(api_key=fake.api_key, chunked=chunked) as upstream:
            client = Client(fake.api_key, upstream.base_url, "openai/o4-mini", 100)
            gate = threading.Event()
            upstream.queue(reply("ti ny", chunks=["ti", " ny"], gate=gate, reasoning=False))
            kinds = []
            for kind, value in client.stream([{"type": "message", "role": "user",
                                               "content": [{"type": "input_text", "text": "x"}]}],
                                             StreamState(), idle=lambda: 0.05):
                kinds.append((kind, value if kind == "delta" else None))
                if kind == "idle":
                    gate.set()
            first = kinds.index(("delta", "ti"))
            assert ("caught_up", None) in kinds[first:kinds.index(("delta", " ny"))], (chunked, kinds)
            assert kinds[-1][0] == "done"


def test_a_stored_reply_ends_its_stream_with_done_even_if_the_store_then_stops_answering(
        client, fake, monkeypatch):
    """The final event describes the conversation as the turn stored it (its articles, count, title):
    from the record the settle wrote, not from a second read of the store. So once the reply is
    stored, its stream ends with `done` and the reply's articles even when the store stops answering
    reads right after (a lost Redis); and the end of a turn costs one read of the conversation less."""
    from tests.fake_openrouter import reply
    from tests.sse import sse_events
    from webapp.store import Store, StoreError
    from webapp.turns import settle

    stored = []
    real_settle, real_load = settle.settle, Store.load

    def settle_then_lose_the_store(*args, **kwargs):
        outcome = real_settle(*args, **kwargs)
        stored.append(outcome)
        return outcome

    def load(self, cid):
        if stored:
            raise StoreError("the store stopped answering")
        return real_load(self, cid)

    monkeypatch.setattr(settle, "settle", settle_then_lose_the_store)
    monkeypatch.setattr(Store, "load", load)
    fake.queue(reply("Stored before the store went away"))
    found = sse_events(client.post("/c/new/turns", data={"message": "hi"}).get_data(as_text=True))
    assert stored and stored[0]  # the reply was stored (then reads failed)
    kind, done = found[-1]
    assert kind == "done", found[-1]
    assert done["count"] == 2 and done["title"] == "hi"
    assert messages(done["articles"]) == [("user", "hi"), ("assistant", "Stored before the store went away")]


def test_a_process_thread_starts_once_per_process_and_runs_again_after_its_work_fails(monkeypatch):
    """The progress saver and the Redis relay's reader: asked for at every turn, started once; if
    their work ever raises, it is logged and run again, so the process never goes on without them."""
    import threading

    from webapp.turns import daemons

    monkeypatch.setattr(daemons, "RESTART_AFTER", 0.01)
    runs, again = [], threading.Event()

    def work():
        runs.append(threading.current_thread().name)
        if len(runs) == 1:
            raise RuntimeError("the first round fails")
        again.set()
        threading.Event().wait()  # then runs for good, as the saver does

    worker = daemons.ProcessThread(work, "test-daemon")
    for _ in range(5):
        worker.ensure()
    assert again.wait(5)
    assert runs == ["test-daemon", "test-daemon"]  # one thread, its work run twice
    assert [t.name for t in threading.enumerate()].count("test-daemon") == 1

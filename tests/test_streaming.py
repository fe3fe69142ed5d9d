"""Streamed turns (the JS path) under a real gunicorn: deltas as they come, nothing lost, Stop, queueing."""

import re
import socket
import struct
import threading
import time
from urllib.parse import urlencode, urlsplit
from html import unescape

import pytest

from tests.conftest import alert, messages, textarea
from tests.fake_openrouter import FakeOpenRouter, hang, reply, stream_error
from tests.serving import Browser, Gunicorn
from tests.sse import events, until, wait_for




def start_turn(browser, server, text, **fields):
    response = browser.post(server.url + "/turns", data={"message": text, **fields}, stream=True,
                            headers={"Accept": "text/event-stream"}, timeout=30)
    assert response.status_code == 200, response.text
    assert response.headers["Content-Type"].startswith("text/event-stream")
    assert response.headers["X-Accel-Buffering"] == "no"
    return response






def shown(browser, server):
    return messages(browser.get(server.url + "/").text)


@pytest.fixture(scope="module")
def server(served):
    return served


def test_a_delta_reaches_the_browser_before_the_upstream_finishes(server, fake):
    first_delta_arrives_before_the_upstream_finishes(server, fake)


def first_delta_arrives_before_the_upstream_finishes(server, fake):
    gate = threading.Event()
    fake.queue(reply("Hello there, streaming world", gate=gate, chunks=["Hello", " there,", " streaming world"]))
    browser = Browser()
    stream = events(start_turn(browser, server, "hi"))
    first, _ = until("delta", stream)
    assert first == "Hello" and not gate.is_set()  # the fake is still holding the rest back
    gate.set()
    done, seen = until("done", stream)
    assert "".join(d for k, d in seen if k == "delta") == " there, streaming world"
    assert "Hello there, streaming world" in done["html"] and done["count"] == 2
    # The finished turn as the page renders it: both messages, with the last turn's tools.
    assert messages(done["articles"]) == [("user", "hi"), ("assistant", "Hello there, streaming world")]
    assert 'data-action="regenerate"' in done["articles"] and 'data-action="edit"' in done["articles"]
    assert done["title"] == "hi"
    assert shown(browser, server) == [("user", "hi"), ("assistant", "Hello there, streaming world")]


def test_deltas_are_not_held_back_when_the_upstream_stream_is_not_chunked(server, fake, tmp_path):
    gate = threading.Event()
    with FakeOpenRouter(api_key=fake.api_key, chunked=False) as plain:
        env = dict(server.env, OPENROUTER_BASE_URL=plain.base_url, SESSION_DIR=str(tmp_path))
        env.pop("BIND")
        with Gunicorn(env, tmp_path / "plain.log") as other:
            plain.queue(reply("tiny deltas here", gate=gate, chunks=["ti", "ny", " deltas here"]))
            stream = events(start_turn(Browser(), other, "hello"))
            first, _ = until("delta", stream)
            assert first == "ti" and not gate.is_set()
            gate.set()
            until("done", stream)


def test_keep_alives_are_relayed_during_a_long_silence(server, fake):
    fake.queue(reply("late answer", delay=1.2, keepalive_every=0.3))
    stream = events(start_turn(Browser(), server, "think hard"))
    _, seen = until("delta", stream)
    assert sum(1 for k, _ in seen if k == "comment") >= 3
    until("done", stream)


@pytest.mark.parametrize("style", ["flat", "nested", "failed", "truncated"])
def test_a_mid_stream_error_keeps_the_partial_reply_and_the_next_turn_works(server, fake, style):
    fake.queue(stream_error(after_chunks=2, style=style, text="partial answer text here"))
    browser = Browser()
    error, seen = until("error", events(start_turn(browser, server, "go")))
    partial = "".join(d for k, d in seen if k == "delta")
    assert partial and error["kept"] and error["message"]
    page = browser.get(server.url + "/").text
    assert messages(page) == [("user", "go"), ("assistant", partial.strip())]
    assert error["message"].split(":")[0] in page  # the reason is shown under the reply
    until("done", events(start_turn(browser, server, "again")))
    sent = fake.requests[-1]["body"]["input"]
    assert sent[1]["status"] == "incomplete" and sent[1]["id"] in fake.issued_ids


def test_closing_the_tab_mid_reply_still_stores_the_whole_reply(server, fake):
    gate = threading.Event()
    fake.queue(reply("every word of this reply", gate=gate))
    browser = Browser()
    response = start_turn(browser, server, "then I leave")
    until("delta", events(response))
    response.close()  # the tab is gone
    gate.set()
    assert wait_for(lambda: shown(browser, server)[-1:] == [("assistant", "every word of this reply")])
    assert fake.disconnects == 0  # the app read the upstream to the end


def test_a_reload_mid_reply_shows_it_still_writing_and_picks_it_up(server, fake):
    gate = threading.Event()
    fake.queue(reply("first part and the rest", gate=gate, chunks=["first part", " and the rest"]))
    browser = Browser()
    stream = events(start_turn(browser, server, "long one"))
    started, _ = until("started", stream)
    until("delta", stream)
    assert wait_for(lambda: "first part" in browser.get(server.url + "/").text)
    page = browser.get(server.url + "/").text
    assert f'data-pending-turn="{started["turn"]}"' in page and "Still writing" in page
    resumed = browser.get(f"{server.url}/turns/{started['turn']}", stream=True, timeout=30)
    gate.set()
    done, seen = until("done", events(resumed))
    assert "".join(d for k, d in seen if k == "delta") == "first part and the rest"
    assert shown(browser, server)[-1] == ("assistant", "first part and the rest")


def test_stop_keeps_the_partial_text_as_incomplete_and_the_next_turn_works(server, fake):
    fake.queue(reply("one two three four five six seven eight nine ten " * 20, chunk_delay=0.05))
    browser = Browser()
    stream = events(start_turn(browser, server, "count"))
    started, _ = until("started", stream)
    until("delta", stream)
    stopped = browser.post(server.url + "/stop", data={"turn": started["turn"]},
                           headers={"Accept": "application/json"})
    assert stopped.status_code == 200
    done, seen = until("done", stream)
    assert done["stopped"] and done["note"] == "Stopped."
    assert wait_for(lambda: fake.disconnects == 1)  # the upstream request was closed
    kept = shown(browser, server)[-1]
    assert kept[0] == "assistant" and kept[1] and len(kept[1]) < 500
    # OpenRouter charges for what was generated: the cost is estimated, and says so.
    assert done["usage"].startswith("\u2248 ") and done["usage"].endswith("(estimate)"), done["usage"]
    page = browser.get(server.url + "/").text
    assert unescape(re.findall(r'data-role="usage">([^<]*)<', page)[-1]) == done["usage"]
    assert "without cost" not in page and "cost unknown" not in page
    until("done", events(start_turn(browser, server, "next")))
    item = fake.requests[-1]["body"]["input"][1]
    assert item["status"] == "incomplete" and item["id"] in fake.issued_ids
    assert item["content"][0]["text"].strip() == kept[1]


def test_two_tabs_sending_at_once_both_keep_their_turns_in_order(server, fake):
    browser = Browser()
    browser.get(server.url + "/")
    browser.post(server.url + "/", data={"message": "warm up"})  # the cookie both tabs share
    fake.reset()
    fake.queue(reply("answer A", chunk_delay=0.1), reply("answer B", chunk_delay=0.1))
    results = {}

    def tab(name):
        results[name] = until("done", events(start_turn(browser, server, f"tab {name}")))[0]

    tabs = [threading.Thread(target=tab, args=(n,)) for n in ("one", "two")]
    for t in tabs:
        t.start()
    for t in tabs:
        t.join(30)
    texts = [t for _, t in shown(browser, server)]
    assert texts[:2] == ["warm up", "Reply 1: warm up"]
    assert sorted(texts[2::2]) == ["tab one", "tab two"] and texts[3::2] == ["answer A", "answer B"]
    assert [len(r["body"]["input"]) for r in fake.requests] == [3, 5]  # the second saw the first


def test_regenerate_replaces_the_last_reply_and_edit_replaces_the_last_message(server, fake):
    browser = Browser()
    until("done", events(start_turn(browser, server, "first")))
    second, _ = until("done", events(start_turn(browser, server, "second")))
    fake.queue(reply("a better answer"))
    done, _ = until("done", events(start_turn(browser, server, "", regenerate=second["last_reply"])))
    assert [t for _, t in shown(browser, server)] == ["first", "Reply 1: first", "second", "a better answer"]
    assert len(fake.requests[-1]["body"]["input"]) == 3
    assert done["last_reply"] != second["last_reply"]  # the new reply is what an edit now names
    until("done", events(start_turn(browser, server, "second, edited", edit=done["last_reply"])))
    assert [t for _, t in shown(browser, server)] == [
        "first", "Reply 1: first", "second, edited", "Reply 2: second, edited"]


def test_bad_input_on_the_streaming_route_is_a_clear_4xx(server, fake):
    browser = Browser()
    response = browser.post(server.url + "/turns", data={"message": "  "})
    assert response.status_code == 400 and "empty" in response.json()["error"]
    response = browser.post(server.url + "/turns", data={"message": "", "regenerate": "1"})
    assert response.status_code == 400
    assert fake.requests == []


# --- Stop in every phase, on the worker running the turn or on another ----------------------------

@pytest.fixture(scope="module")
def two_workers(fake_server, tmp_path_factory):
    """Two single-worker gunicorns sharing one store: a Stop sent to `b` for a turn running on `a`
    is exactly a Stop that lands on another worker (or host) than the one reading the reply."""
    path = tmp_path_factory.mktemp("two")
    env = {"OPENROUTER_API_KEY": fake_server.api_key, "OPENROUTER_BASE_URL": fake_server.base_url,
           "SECRET_KEY": "two-workers", "SESSION_DIR": str(path / "sessions"),
           "OPENROUTER_READ_TIMEOUT": "30"}
    with Gunicorn(env, path / "a.log", workers=1) as a, Gunicorn(env, path / "b.log", workers=1) as b:
        yield a, b


PHASES = {
    # nothing at all: no status line, no headers (queued at the provider, or a slow network)
    "waiting for headers": lambda: hang(20),
    # headers and keep-alive comments, no output yet (a reasoning model thinking)
    "thinking": lambda: reply("too late", delay=20, keepalive_every=0.5),
}


@pytest.mark.parametrize("where", ["same worker", "another worker"])
@pytest.mark.parametrize("phase", sorted(PHASES))
def test_stop_before_the_first_word_settles_at_once_and_gives_the_text_back(two_workers, fake, phase, where):
    a, b = two_workers
    fake.queue(PHASES[phase]())
    browser = Browser()
    stream = events(start_turn(browser, a, "a question to take back"))
    started, _ = until("started", stream)
    assert fake.wait_for_requests(1)
    asked = time.monotonic()
    stopper = a if where == "same worker" else b
    stopped = browser.post(stopper.url + "/stop", data={"turn": started["turn"]},
                           headers={"Accept": "application/json"}, timeout=30)
    assert stopped.status_code == 200
    done, _ = until("done", stream)
    # Settled long before the model would have answered (it holds for 20 s), not when it answers.
    assert time.monotonic() - asked < 5
    assert done["stopped"] and not done["kept"] and done["note"] == "Stopped before the model answered."
    assert wait_for(lambda: fake.disconnects == 1)  # the upstream request itself was closed
    page = browser.get(b.url + "/").text
    assert messages(page) == []  # nothing half-made in the history
    assert textarea(page) == "a question to take back"  # the text is back in the box
    assert alert(page) is None  # the user's own choice is not an error...
    assert "Stopped before the model answered" in page  # ...but a neutral note
    until("done", events(start_turn(browser, a, "next")))
    assert [t for _, t in shown(browser, a)] == ["next", "Reply 1: next"]


def test_stop_of_a_js_off_turn_waiting_for_the_model_returns_its_page_at_once(two_workers, fake):
    a, b = two_workers
    browser = Browser()
    browser.post(a.url + "/", data={"message": "warm up"})  # a conversation, open in another tab
    fake.reset()
    fake.queue(hang(20))
    result = {}
    sender = threading.Thread(target=lambda: result.update(
        page=browser.post(a.url + "/", data={"message": "whole reply please"}, timeout=30)))
    sender.start()
    assert fake.wait_for_requests(1)
    assert wait_for(lambda: "data-pending-turn" in browser.get(b.url + "/").text)
    started = time.monotonic()
    stop = browser.post(b.url + "/stop", data={}, timeout=30)  # JS off: the Stop button's form post
    assert stop.status_code == 200
    sender.join(10)
    assert not sender.is_alive() and time.monotonic() - started < 5
    page = result["page"].text
    assert messages(page) == [("user", "warm up"), ("assistant", "Reply 1: warm up")]
    assert textarea(page) == "whole reply please" and alert(page) is None
    assert "Stopped before the model answered" in page
    assert wait_for(lambda: fake.disconnects == 1)


def test_a_turn_whose_client_left_right_after_posting_is_still_answered(server, fake):
    """The turn is started before its response is returned: a client that is gone before the first
    byte (a closed tab, a dropped connection) must not leave the turn pending with nobody writing it
    (the conversation would show "writing" and hold new sends for 30 s, then say "interrupted")."""
    browser = Browser()
    first = browser.post(server.url + "/", data={"message": "a conversation"}, timeout=30)
    conv = urlsplit(first.url).path
    token = browser.token(server.url)
    body = urlencode({"message": "gone at once", "csrf_token": token})
    cookie = "; ".join(f"{c.name}={c.value}" for c in browser.cookies)
    with socket.create_connection(("127.0.0.1", server.port)) as sock:
        sock.sendall((f"POST {conv}/turns HTTP/1.1\r\nHost: 127.0.0.1:{server.port}\r\n"
                      f"Cookie: {cookie}\r\nX-CSRFToken: {token}\r\nAccept: text/event-stream\r\n"
                      f"Content-Type: application/x-www-form-urlencoded\r\n"
                      f"Content-Length: {len(body)}\r\n\r\n{body}").encode())
        # Gone without reading a byte: a reset, so the server's first write fails.
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    expected = [("user", "a conversation"), ("assistant", "Reply 1: a conversation"),
                ("user", "gone at once"), ("assistant", "Reply 2: gone at once")]
    assert wait_for(lambda: shown(browser, server) == expected, timeout=10), shown(browser, server)


def test_a_page_that_reconnects_gets_exactly_what_it_missed(two_workers, fake):
    """Each event carries an id; a page whose connection dropped asks with Last-Event-ID and gets the
    events after that one: no word twice, none missing. (On the worker running the turn: with the
    file store another worker follows the saved progress, from the start.)"""
    server, _ = two_workers
    gate = threading.Event()
    words = [f"w{i} " for i in range(8)]
    fake.queue(reply("".join(words), gate=gate, chunks=words))
    browser = Browser()
    ids = []
    stream = events(start_turn(browser, server, "resume me"), ids)
    started, _ = until("started", stream)
    first, _ = until("delta", stream)  # the fake holds the rest until the gate opens
    assert first == "w0 " and ids[-1]
    page = browser.get(server.url + "/").text
    conv = re.search(r'data-conversation="([^"]+)"', page)[1]
    follower = browser.get(f"{server.url}/c/{conv}/turns/{started['turn']}", stream=True, timeout=30,
                           headers={"Accept": "text/event-stream", "Last-Event-ID": ids[-1]})
    again = events(follower)
    resumed, _ = until("resumed", again)
    assert resumed == {"after": ids[-1]}
    gate.set()
    done, seen = until("done", again)
    assert "".join(d for k, d in seen if k == "delta") == "".join(words[1:])  # after w0, all of it
    assert "w0" in done["html"] and "w7" in done["html"]
    rendered = [d for k, d in seen if k == "html"]
    assert all(html.startswith("<p>w0 ") for html in rendered)  # renderings of the whole reply
    # A page that does not say (a reload) starts over, from the first word.
    fresh = events(browser.get(f"{server.url}/c/{conv}/turns/{started['turn']}", stream=True, timeout=30))
    assert until("resumed", fresh)[0] == {"after": None}

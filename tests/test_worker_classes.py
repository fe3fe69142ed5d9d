"""The key behaviours under a real gunicorn with each worker class gunicorn.conf.py offers
(GUNICORN_WORKER_CLASS=gthread, the default, and gevent): a JS-off turn, a streamed turn whose first
delta arrives before the upstream finishes, a rendering sent while the model pauses and Stop pressed
then, Stop before the first byte, and a graceful SIGTERM that stores a reply still being written."""

import signal
import time

import pytest

from tests.conftest import alert, messages, textarea
from tests.fake_openrouter import hang, reply
from tests.serving import Browser, Gunicorn, served_env
from tests.sse import events, until, wait_for
from tests.test_streaming import first_delta_arrives_before_the_upstream_finishes, start_turn

WORKER_CLASSES = ["gthread", "gevent"]
# gevent's warning when the master imported ssl users (requests, urllib3) before the worker patched.
LATE_PATCH = "Monkey-patching ssl after ssl has already been imported"


def app_env(fake, path):
    return served_env(fake, path, "worker-classes", OPENROUTER_READ_TIMEOUT="30",
                      GUNICORN_GRACEFUL_TIMEOUT="20")


@pytest.fixture(scope="module", params=WORKER_CLASSES)
def server(request, fake_server, tmp_path_factory):
    """One single-worker gunicorn per worker class, shared by this module's tests (fresh store)."""
    path = tmp_path_factory.mktemp(request.param)
    with Gunicorn(app_env(fake_server, path), path / "gunicorn.log", workers=1,
                  worker_class=request.param) as running:
        running.worker_class = request.param
        yield running




def test_the_worker_starts_with_the_chosen_class(server):
    output = server.output()
    assert "Chat ready:" in output
    if server.worker_class == "gevent":
        assert "Using worker: gevent" in output and "gevent worker × 1000 connections" in output
        assert LATE_PATCH not in output
    else:
        assert "Using worker: gthread" in output and "1 worker × 512 threads" in output


def test_a_js_off_turn(server, fake):
    browser = Browser()
    response = browser.post(server.url + "/", data={"message": "no script here"}, timeout=30)
    assert response.status_code == 200 and "#latest" in response.url  # followed the 303
    assert messages(response.text) == [("user", "no script here"), ("assistant", "Reply 1: no script here")]


def test_a_streamed_turn_delivers_its_first_delta_before_the_upstream_finishes(server, fake):
    first_delta_arrives_before_the_upstream_finishes(server, fake)


def test_while_the_model_pauses_the_words_so_far_are_rendered(server, fake):
    """The request reading the reply stops waiting on a silent upstream to send what is due (here
    the markdown of the first words), then reads on: under gevent by waiting on the socket's own
    watcher, under threads by a peek that waits. Without it the rendering would come only with
    the next words, after the pause."""
    import threading

    gate = threading.Event()
    fake.queue(reply("**bold** start, then the rest", chunks=["**bold** start", ", then the rest"],
                     gate=gate, reasoning=False))
    stream = events(start_turn(Browser(), server, "pause after the first words"))
    until("delta", stream)
    try:
        html, seen = until("html", stream)  # during the pause: nothing else can bring it
    finally:
        gate.set()
    assert "<strong>bold</strong>" in html and not [k for k, _ in seen if k == "delta"]
    _, rest = until("done", stream)
    assert "".join(d for k, d in rest if k == "delta") == ", then the rest"


def test_stop_while_the_model_pauses_after_its_first_words_settles_at_once(server, fake):
    """The request reading the reply is waiting on a silent upstream (under gevent on the socket's
    own watcher) for as long as a keep-alive allows: Stop cuts the upstream connection, which wakes
    that wait, and the reply ends stopped with its first words kept, well within half a second."""
    import threading

    gate = threading.Event()
    fake.queue(reply("First words, then a long pause", chunks=["First words,", " then a long pause"],
                     gate=gate, reasoning=False))
    browser = Browser()
    stream = events(start_turn(browser, server, "pause, then stop"))
    started, _ = until("started", stream)
    try:
        until("delta", stream)
        until("html", stream)  # a rendering, sent during the pause: now the reader waits up to a keep-alive
        asked = time.monotonic()
        stopped = browser.post(server.url + "/stop", data={"turn": started["turn"]},
                               headers={"Accept": "application/json"}, timeout=30)
        assert stopped.status_code == 200
        done, _ = until("done", stream)
        took = time.monotonic() - asked
    finally:
        gate.set()
    assert done["stopped"] and done["kept"] and took < 0.5, (done, took)
    assert wait_for(lambda: fake.disconnects == 1)  # the upstream request itself was closed
    assert messages(browser.get(server.url + "/").text)[-1] == ("assistant", "First words,")


def test_stop_before_the_first_byte_settles_at_once(server, fake):
    fake.queue(hang(20))  # no status line, no headers
    browser = Browser()
    stream = events(start_turn(browser, server, "a question to take back"))
    started, _ = until("started", stream)
    assert fake.wait_for_requests(1)
    asked = time.monotonic()
    stopped = browser.post(server.url + "/stop", data={"turn": started["turn"]},
                           headers={"Accept": "application/json"}, timeout=30)
    assert stopped.status_code == 200
    done, _ = until("done", stream)
    assert time.monotonic() - asked < 5
    assert done["stopped"] and not done["kept"]
    assert wait_for(lambda: fake.disconnects == 1)  # the upstream request itself was closed
    page = browser.get(server.url + "/").text
    assert messages(page) == [] and textarea(page) == "a question to take back" and alert(page) is None


@pytest.mark.parametrize("worker_class", WORKER_CLASSES)
def test_sigterm_lets_a_streamed_reply_finish_and_be_stored(fake, tmp_path, worker_class):
    words = [f"word{i} " for i in range(10)]
    text = "".join(words)
    fake.queue(reply(text, chunks=words, chunk_delay=0.25))  # about 2.5 s
    env = app_env(fake, tmp_path)
    browser = Browser()
    with Gunicorn(env, tmp_path / "first.log", workers=1, worker_class=worker_class) as first:
        response = start_turn(browser, first, "a long one")
        until("delta", events(response))
        response.close()  # the tab is gone too: only the turn's own reader is left
        first.proc.send_signal(signal.SIGTERM)
        first.proc.wait(timeout=30)
        assert "Traceback" not in first.output()
    with Gunicorn(env, tmp_path / "second.log", workers=1, worker_class=worker_class) as second:
        assert messages(browser.get(second.url + "/", timeout=10).text) == [
            ("user", "a long one"), ("assistant", text.strip())]


def test_an_unknown_worker_class_stops_startup_with_one_clear_line(fake, tmp_path):
    with pytest.raises(RuntimeError) as caught:
        Gunicorn(app_env(fake, tmp_path), tmp_path / "bad.log", worker_class="eventlet").start()
    assert "Configuration error: GUNICORN_WORKER_CLASS must be 'gevent' or 'gthread', got 'eventlet'" \
        in str(caught.value)
    assert "Traceback" not in str(caught.value)

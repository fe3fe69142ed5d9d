"""Running it for a team: health checks, the store going away and coming back, the total turn deadline,
a worker killed mid-turn, a graceful reload mid-reply, and one log line per turn."""

import os
import re
import shutil
import signal
import threading
import time
from urllib.parse import urlsplit

import pytest
import requests

from tests.conftest import alert, messages, textarea
from tests.fake_openrouter import error, hang, reply
from tests.serving import Browser, Gunicorn, require_program, served_env
from tests.sse import events, sse_events, until, wait_for
from tests.test_redis import RedisServer
from tests.test_streaming import start_turn

TIMEOUT_MESSAGE = "The model took too long to answer."






def fresh_get(server, path, browser=None, timeout=10):
    """A GET on a new connection (after a reload or a killed worker, pooled ones may be dead)."""
    return requests.get(server.url + path, cookies=browser.cookies if browser else None, timeout=timeout)


# --- 13. Health checks and the store -------------------------------------------------------------------------

def test_healthz_and_readyz_answer_with_the_file_store(make_app, fake, tmp_path):
    client = make_app().test_client()
    health = client.get("/healthz")
    assert health.status_code == 200 and health.get_json() == {"status": "ok"}
    ready = client.get("/readyz")
    assert ready.status_code == 200 and ready.get_json() == {"status": "ok"}
    # The store's folder broken (here: the lock folder replaced by a file): not ready, but alive.
    locks = tmp_path / "sessions" / "locks"
    shutil.rmtree(locks)
    locks.write_text("not a folder")
    broken = client.get("/readyz")
    assert broken.status_code == 503 and broken.get_json()["status"] == "unavailable"
    assert client.get("/healthz").status_code == 200
    locks.unlink()
    locks.mkdir()
    assert client.get("/readyz").status_code == 200
    assert fake.requests == []  # a probe never costs a model call




@pytest.fixture
def redis_served(fake, tmp_path):
    """A redis-server of this test's own and a one-worker gunicorn keeping everything in it."""
    store = RedisServer(require_program("redis-server", "redis-server"), tmp_path).start()
    env = {"OPENROUTER_API_KEY": fake.api_key, "OPENROUTER_BASE_URL": fake.base_url,
           "SECRET_KEY": "ops-redis", "SESSION_TYPE": "redis", "REDIS_URL": store.url,
           "OPENROUTER_READ_TIMEOUT": "20"}
    try:
        with Gunicorn(env, tmp_path / "gunicorn.log", workers=1) as server:
            yield store, server
    finally:
        store.stop()


BEFORE_OUTAGE = [("user", "before the outage"), ("assistant", "Reply 1: before the outage")]


def converse_then_stop_redis(store, server):
    browser = Browser()
    browser.post(server.url + "/", data={"message": "before the outage"}, timeout=30)
    assert messages(fresh_get(server, "/", browser).text) == BEFORE_OUTAGE
    assert fresh_get(server, "/readyz").status_code == 200
    store.stop()
    return browser


@pytest.mark.redis
def test_with_redis_readyz_and_pages_follow_the_store_down_and_back(redis_served, fake):
    store, server = redis_served
    browser = converse_then_stop_redis(store, server)
    began = time.monotonic()
    ready = fresh_get(server, "/readyz")
    assert ready.status_code == 503 and ready.json()["status"] == "unavailable"
    assert time.monotonic() - began < 5
    began = time.monotonic()
    page = fresh_get(server, "/", browser)
    assert page.status_code == 503  # the storage page, at once: never a hang
    assert time.monotonic() - began < 5
    assert fresh_get(server, "/healthz").status_code == 200  # alive, only not ready
    sent = browser.post(server.url + "/", data={"message": "during the outage"}, timeout=10)
    assert sent.status_code >= 500
    assert len(fake.requests) == 1  # nothing was sent to the model without a store

    store.start()  # same port, same AOF: no app restart
    assert wait_for(lambda: fresh_get(server, "/readyz").status_code == 200, 10)
    assert messages(fresh_get(server, "/", browser).text) == BEFORE_OUTAGE
    fresh = Browser()
    fresh.post(server.url + "/", data={"message": "after the outage"}, timeout=30)
    assert messages(fresh_get(server, "/", fresh).text) == [
        ("user", "after the outage"), ("assistant", "Reply 1: after the outage")]


@pytest.mark.redis
def test_with_redis_down_pages_say_the_store_is_unavailable(redis_served, fake):
    store, server = redis_served
    browser = converse_then_stop_redis(store, server)
    page = fresh_get(server, "/", browser)
    assert page.status_code == 503 and "Storage unavailable" in page.text
    sent = browser.post(server.url + "/", data={"message": "during the outage"}, timeout=10)
    assert sent.status_code == 503 and textarea(sent.text) == "during the outage"


# --- 14. The total turn deadline ----------------------------------------------------------------------------

def test_a_streamed_turn_that_only_sends_keep_alives_ends_at_its_deadline(make_app, fake):
    client = make_app(OPENROUTER_TURN_TIMEOUT=2.0, OPENROUTER_READ_TIMEOUT=20.0).test_client()
    client.post("/", data={"message": "before"})
    fake.queue(reply("late", delay=30, keepalive_every=0.2))
    began = time.monotonic()
    response = client.post("/turns", data={"message": "think forever"})
    body = response.get_data(as_text=True)
    elapsed = time.monotonic() - began
    assert response.status_code == 200
    assert body.count(": keep-alive") >= 3  # the read timeout alone would never have ended it
    kind, data = sse_events(body)[-1]
    assert kind == "error" and data["message"].startswith(TIMEOUT_MESSAGE)
    assert 1.8 <= elapsed < 6, elapsed
    page = client.get("/").get_data(as_text=True)
    assert messages(page) == [("user", "before"), ("assistant", "Reply 1: before")]
    assert textarea(page) == "think forever" and alert(page).startswith(TIMEOUT_MESSAGE)
    assert client.post("/", data={"message": "next"}).status_code == 303  # and the next turn works
    assert len(messages(client.get("/").get_data(as_text=True))) == 4


def test_a_js_off_turn_ends_at_its_deadline(make_app, fake):
    client = make_app(OPENROUTER_TURN_TIMEOUT=2.0, OPENROUTER_READ_TIMEOUT=20.0).test_client()
    client.post("/", data={"message": "before"})
    fake.queue(reply("late", delay=30, keepalive_every=0.2))
    began = time.monotonic()
    response = client.post("/", data={"message": "whole reply, slowly"}, follow_redirects=True)
    elapsed = time.monotonic() - began
    assert 1.8 <= elapsed < 6, elapsed
    page = response.get_data(as_text=True)
    assert messages(page) == [("user", "before"), ("assistant", "Reply 1: before")]
    assert textarea(page) == "whole reply, slowly" and alert(page).startswith(TIMEOUT_MESSAGE)


# --- 15-17. Under gunicorn: a killed worker, a reload, the log ---------------------------------------------

@pytest.fixture(scope="module")
def server(fake_server, tmp_path_factory):
    path = tmp_path_factory.mktemp("operations")
    env = served_env(fake_server, path, "ops-test", RATE_LIMIT_PER_SESSION="off")
    with Gunicorn(env, path / "gunicorn.log", workers=1) as running:
        yield running


def worker_pids(server):
    master = server.proc.pid
    with open(f"/proc/{master}/task/{master}/children") as f:
        return [int(pid) for pid in f.read().split()]


def new_worker_up(server, old):
    def check():
        pids = worker_pids(server)
        if not pids or set(pids) & set(old):
            return False
        try:
            return fresh_get(server, "/healthz", timeout=2).status_code == 200
        except requests.RequestException:
            return False
    return wait_for(check, 20, 0.1)


def test_a_worker_killed_mid_turn_is_replaced_and_the_message_comes_back(server, fake):
    browser = Browser()
    browser.post(server.url + "/", data={"message": "before the crash"}, timeout=30)
    before = [("user", "before the crash"), ("assistant", "Reply 1: before the crash")]
    fake.reset()
    fake.queue(hang(60))
    old = worker_pids(server)
    assert len(old) == 1
    result = {}

    def post():
        try:
            result["response"] = browser.post(server.url + "/", data={"message": "the interrupted one"},
                                              timeout=60)
        except requests.RequestException as exc:
            result["error"] = exc

    sender = threading.Thread(target=post)
    sender.start()
    assert fake.wait_for_requests(1)
    os.kill(old[0], signal.SIGKILL)
    killed = time.monotonic()
    sender.join(10)
    assert "error" in result  # the request died with its worker
    assert new_worker_up(server, old)
    page = fresh_get(server, "/", browser).text
    assert messages(page)[:2] == before and "data-pending-turn" in page  # not lost: still "writing"
    assert ("user", "the interrupted one") in messages(page)

    def recovered():
        return textarea(fresh_get(server, "/", browser).text) == "the interrupted one"

    assert wait_for(recovered, 40, 0.5), "the interrupted message never came back"
    assert time.monotonic() - killed < 35
    page = fresh_get(server, "/", browser).text
    assert messages(page) == before and "interrupted" in alert(page)
    began = time.monotonic()
    again = browser.post(server.url + "/", data={"message": "after the crash"}, timeout=30)
    assert again.status_code == 200 and time.monotonic() - began < 5
    assert messages(fresh_get(server, "/", browser).text) == before + [
        ("user", "after the crash"), ("assistant", "Reply 2: after the crash")]


@pytest.mark.parametrize("tab", ["open", "closed"])
def test_a_graceful_reload_lets_a_streamed_reply_finish_and_be_stored(server, fake, tab):
    words = [f"word{i} " for i in range(12)]
    text = "".join(words)
    fake.queue(reply(text, chunks=words, chunk_delay=0.25))  # about 3 s
    browser = Browser()
    response = start_turn(browser, server, "a long one")
    stream = events(response)
    until("delta", stream)
    if tab == "closed":
        response.close()  # only the turn's own thread is left writing it
    old = worker_pids(server)
    server.proc.send_signal(signal.SIGHUP)
    if tab == "open":
        done, _ = until("done", stream)
        assert not done.get("stopped") and done["text"] == text
    assert new_worker_up(server, old)
    assert wait_for(lambda: messages(fresh_get(server, "/", browser).text)[-1:] == [("assistant", text.strip())], 10)
    assert messages(fresh_get(server, "/", browser).text) == [("user", "a long one"), ("assistant", text.strip())]


def test_a_graceful_reload_lets_a_js_off_turn_finish_and_be_stored(server, fake):
    fake.queue(reply("the whole answer, after the reload", delay=3))
    browser = Browser()
    browser.get(server.url + "/", timeout=10)
    result = {}
    sender = threading.Thread(target=lambda: result.update(response=browser.post(
        server.url + "/", data={"message": "reload meanwhile"}, allow_redirects=False, timeout=30)))
    sender.start()
    assert fake.wait_for_requests(1)
    old = worker_pids(server)
    server.proc.send_signal(signal.SIGHUP)
    sender.join(30)
    assert result["response"].status_code == 303
    assert new_worker_up(server, old)
    assert messages(fresh_get(server, "/", browser).text) == [
        ("user", "reload meanwhile"), ("assistant", "the whole answer, after the reload")]


TURN_LINE = re.compile(
    r"turn session=(?P<session>\S+) conversation=(?P<conversation>\S+) model=(?P<model>\S+) "
    r"outcome=(?P<outcome>\S+) input_tokens=(?P<input>\S+) output_tokens=(?P<output>\S+) "
    r"cost=(?P<cost>\S+) latency_ms=(?P<latency>\d+)$", re.M)


def turn_lines(server, start, count):
    assert wait_for(lambda: len(TURN_LINE.findall(server.output()[start:])) >= count, 5, 0.1)
    output = server.output()[start:]
    lines = [m.groupdict() for m in TURN_LINE.finditer(output)]
    assert len(lines) == count, output
    return lines


def test_one_structured_log_line_per_turn_without_text_key_or_cookie(server, fake):
    start = len(server.output())
    alice, bob = Browser(), Browser()
    first = alice.post(server.url + "/", data={"message": "canary-first-5b0e"}, timeout=30)
    alice.post(server.url + "/", data={"message": "canary-js-off-7c1f"}, timeout=30)
    until("done", events(start_turn(alice, server, "canary-streamed-9d2e")))
    bobs = bob.post(server.url + "/", data={"message": "canary-bob-0a4d"}, timeout=30)
    conversations = [urlsplit(page.url).path.split("/")[2] for page in (first, bobs)]
    fake.queue(error(402, "Insufficient credits"))
    bob.post(server.url + "/", data={"message": "canary-failed-31ab"}, timeout=30)
    lines = turn_lines(server, start, 5)
    *completed, failed = lines
    for line in completed:
        assert line["outcome"] == "completed" and line["model"] == "openai/o4-mini"
        assert int(line["input"]) > 0 and int(line["output"]) > 0 and float(line["cost"]) > 0
        assert int(line["latency"]) >= 0
    assert failed["outcome"] == "failed"
    assert all(re.fullmatch(r"[0-9a-f]{12}", line["session"]) for line in lines)
    # Conversation ids are logged as a hash, as the access log masks them.
    assert all(re.fullmatch(r"[0-9a-f]{12}", line["conversation"]) for line in lines)
    # The app's lines look like gunicorn's own: time, process, level.
    logged = [line for line in server.output()[start:].splitlines() if " turn session=" in line]
    assert len(logged) == 5 and all(re.match(
        r"\[\d{4}-\d\d-\d\d \d\d:\d\d:\d\d [+-]\d{4}\] \[\d+\] \[INFO\] turn session=", line) for line in logged), logged
    # A session keeps its hash from turn to turn,
    # another session has another; a conversation keeps its id.
    assert lines[1]["session"] == lines[2]["session"] != lines[4]["session"]
    assert lines[0]["conversation"] == lines[1]["conversation"] == lines[2]["conversation"]
    assert lines[3]["conversation"] == lines[4]["conversation"] != lines[0]["conversation"]
    for browser in (alice, bob):
        sid = browser.cookies["session"]
        assert sid not in server.output() and sid[:12] not in {line["session"] for line in lines}
    everything = server.output()
    for secret in ["canary-first-5b0e", "canary-js-off-7c1f", "canary-streamed-9d2e", "canary-bob-0a4d",
                   "canary-failed-31ab", fake.api_key, *conversations]:
        assert secret not in everything


def test_a_sessions_first_turn_is_logged_under_the_same_hash_as_its_later_turns(server, fake):
    start = len(server.output())
    browser = Browser()
    browser.post(server.url + "/", data={"message": "first"}, timeout=30)
    browser.post(server.url + "/", data={"message": "second"}, timeout=30)
    first, second = turn_lines(server, start, 2)
    assert first["session"] == second["session"]

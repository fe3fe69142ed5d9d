"""The Redis relay: a turn's events go to a Redis Stream, and a follower on another worker or host reads
them live through its process's one reader, resuming after any id, joining late from the saved words."""

import re
import threading
import time

import pytest
import redis

from tests.fake_openrouter import reply
from tests.serving import Browser, Gunicorn, served_env
from tests.sse import events, until, wait_for
from tests.test_streaming import start_turn
from webapp.turns.events import DELTA, DONE, TICK
from webapp.turns.relay import RedisFollowing, RedisRelay, stream_key

pytestmark = pytest.mark.redis


def test_a_follower_in_another_process_gets_every_event_with_the_same_ids(redis_url):
    client = redis.Redis.from_url(redis_url)
    here = RedisRelay(client, "t-ids")
    elsewhere = RedisFollowing(redis.Redis.from_url(redis_url))  # another worker's reader
    mirror = elsewhere.follow("t-ids")
    for piece in ("one ", "two ", "three"):
        here.publish(DELTA, piece)
    here.publish(DONE, {"text": "one two three"}, final=True)
    seen = [event for event in mirror.listen(tick=5.0) if event[1] != TICK]
    assert "".join(d for _, k, d in seen if k == DELTA) == "one two three"
    ids = [event_id for event_id, _, _ in here.events]
    assert {i for i, _, _ in seen} <= set(ids) and seen[-1] == (ids[-1], DONE, {"text": "one two three"})
    assert mirror.before(here.events[0][0]) == (here.events[0][0], "one ")
    again = list(mirror.listen(after=here.events[0][0]))
    assert [d for _, k, d in again if k == DELTA] == ["two three"]  # after the first: the rest, once
    assert 0 < client.ttl(stream_key("t-ids")) <= 300  # kept a little while after the end
    elsewhere.leave("t-ids")


def test_a_late_follower_starts_from_the_saved_words_and_reads_on(redis_url):
    client = redis.Redis.from_url(redis_url)
    here = RedisRelay(client, "t-late")
    for piece in ("a ", "b ", "c "):
        here.publish(DELTA, piece)
    saved_id, saved_text = here.position()  # what a progress save records
    assert saved_text == "a b c "
    client.xtrim(stream_key("t-late"), maxlen=0)  # the stream's start is gone (capped)
    here.publish(DELTA, "d")
    here.publish(DONE, {}, final=True)
    mirror = RedisFollowing(redis.Redis.from_url(redis_url)).follow("t-late", saved_id, saved_text)
    text = "".join(d for _, k, d in mirror.listen(tick=5.0) if k == DELTA)
    assert text == "a b c d"


def test_followers_wait_in_the_reader_without_polling_redis(redis_url, monkeypatch):
    client = redis.Redis.from_url(redis_url)
    following = RedisFollowing(redis.Redis.from_url(redis_url))
    calls = []
    real = following.client.xread
    monkeypatch.setattr(following.client, "xread", lambda *a, **k: calls.append(k) or real(*a, **k))
    mirrors = [following.follow("t-wait") for _ in range(50)]  # fifty followers, one mirror, one reader
    assert all(m is mirrors[0] for m in mirrors)
    time.sleep(1.2)  # idle: a blocking read at a time (BLOCK_MS), not a poll per follower
    assert 1 <= len(calls) <= 6 and all(k.get("block") for k in calls)
    RedisRelay(client, "t-wait").publish(DONE, {}, final=True)
    assert mirrors[0].wait(5)


@pytest.fixture(scope="module")
def two_hosts(fake_server, redis_url, tmp_path_factory):
    """Two app servers sharing one Redis: what two hosts behind a balancer are."""
    path = tmp_path_factory.mktemp("hosts")
    env = served_env(fake_server, path, "two-hosts", SESSION_TYPE="redis", REDIS_URL=redis_url)
    with Gunicorn(env, path / "a.log", workers=1) as a, Gunicorn(env, path / "b.log", workers=1) as b:
        yield a, b


def test_a_page_on_another_host_sees_the_reply_grow_word_by_word(two_hosts, fake):
    a, b = two_hosts
    browser = Browser()
    browser.post(a.url + "/", data={"message": "warm up"}, timeout=30)  # the cookie both hosts know
    words = [f"w{i} " for i in range(20)]
    fake.queue(reply("".join(words), chunks=words, chunk_delay=0.1))
    ids = []
    stream = events(start_turn(browser, a, "grow"), ids)
    started, _ = until("started", stream)
    page = browser.get(b.url + "/", timeout=30).text  # the conversation, opened on the other host
    conv = re.search(r'data-conversation="([^"]+)"', page)[1]
    arrivals = []
    follower = events(browser.get(f"{b.url}/c/{conv}/turns/{started['turn']}", stream=True, timeout=30,
                                  headers={"Accept": "text/event-stream"}))
    done, seen = until("done", (e for e in follower if arrivals.append(time.monotonic()) or True))
    deltas = [d for k, d in seen if k == "delta"]
    assert "".join(deltas).endswith("w19 ") and "w19" in done["html"]
    # Word by word as the upstream sends them (one every 0.1 s), not in jumps of saved progress.
    assert len(deltas) >= 15, deltas
    until("done", stream)


def test_a_page_on_another_host_resumes_after_the_last_event_it_had(two_hosts, fake):
    a, b = two_hosts
    browser = Browser()
    browser.post(a.url + "/", data={"message": "warm up"}, timeout=30)
    gate = threading.Event()
    words = [f"v{i} " for i in range(6)]
    fake.queue(reply("".join(words), gate=gate, chunks=words))
    ids = []
    stream = events(start_turn(browser, a, "resume elsewhere"), ids)
    started, _ = until("started", stream)
    first, _ = until("delta", stream)
    conv = re.search(r'data-conversation="([^"]+)"', browser.get(b.url + "/", timeout=30).text)[1]
    follower = events(browser.get(f"{b.url}/c/{conv}/turns/{started['turn']}", stream=True, timeout=30,
                                  headers={"Accept": "text/event-stream", "Last-Event-ID": ids[-1]}))
    resumed, _ = until("resumed", follower)
    assert resumed == {"after": ids[-1]}
    gate.set()
    done, seen = until("done", follower)
    assert first + "".join(d for k, d in seen if k == "delta") == "".join(words)
    until("done", stream)


@pytest.mark.parametrize("phase", ["thinking", "streaming"])
def test_stop_pressed_on_another_host_stops_the_upstream_at_once(two_hosts, fake, phase, redis_url):
    """The Stop goes over Redis pub/sub to the host running the turn, and the host that pressed it
    waits for the turn's final event on its stream: no signal key read ten times a second."""
    a, b = two_hosts
    browser = Browser()
    browser.post(a.url + "/", data={"message": "warm up"}, timeout=30)
    if phase == "thinking":
        fake.queue(reply("too late", delay=20, keepalive_every=0.5))
    else:
        fake.queue(reply("one two three four five six seven eight nine ten " * 20, chunk_delay=0.05))
    stream = events(start_turn(browser, a, "stop me from elsewhere"))
    started, _ = until("started", stream)
    if phase == "streaming":
        until("delta", stream)
    assert fake.wait_for_requests(2)
    stopped = browser.post(b.url + "/stop", data={"turn": started["turn"]},
                           headers={"Accept": "application/json"}, timeout=30)
    assert stopped.status_code == 200 and stopped.json() == {"stopped": True}
    done, _ = until("done", stream)
    assert done["stopped"]
    # The host running it heard the Stop and closed the upstream request: while the model thinks,
    # nothing else would tell it for seconds (its next heartbeat save is 5 s away).
    assert wait_for(lambda: fake.disconnects >= 1, timeout=2)
    assert redis.Redis.from_url(redis_url).get("signal:stop") is None  # pub/sub, not the key

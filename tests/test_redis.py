"""SESSION_TYPE=redis against a real redis-server: sessions, conversations and locks live in Redis."""

import signal
import subprocess
import threading
import time
from contextlib import ExitStack

import pytest
import redis

from tests.conftest import PageClient, app_config, messages
from tests.serving import free_port, require_program
from webapp import conversation, create_app
from webapp.purge import purge, summary
from webapp.store import RedisBackend, Store, StoreError, redis_client

pytestmark = pytest.mark.redis


def make(fake, tmp_path, url):
    app = create_app(app_config(fake, tmp_path, SESSION_TYPE="redis", REDIS_URL=url), env={})
    app.test_client_class = PageClient
    return app


def test_a_conversation_lives_in_redis_and_survives_a_restart(fake, tmp_path, redis_url):
    client = make(fake, tmp_path, redis_url).test_client()
    client.post("/", data={"message": "stored in redis"})
    cookie = client.get_cookie("session").value
    keys = {k.decode() for k in redis.Redis.from_url(redis_url).keys("*")}
    assert f"session:{cookie}" in keys and any(k.startswith("conv:") for k in keys)
    again = make(fake, tmp_path, redis_url).test_client()
    again.set_cookie("session", cookie)
    assert messages(again.get("/").get_data(as_text=True)) == [
        ("user", "stored in redis"), ("assistant", "Reply 1: stored in redis")]
    assert not (tmp_path / "sessions").exists() or not any((tmp_path / "sessions").iterdir())


def test_redis_locks_serialise_concurrent_updates(redis_url):
    store = Store(RedisBackend(redis.Redis.from_url(redis_url)), ttl=60)

    def append(who):
        for i in range(20):
            with store.update("shared") as conv:
                conversation.add_turn(conv, f"{who}{i}", "msg_x", "completed", "reply")

    workers = [threading.Thread(target=append, args=(w,)) for w in "abcd"]
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    assert len(store.load("shared")["items"]) == 2 * 80


class RedisServer:
    """A redis-server of one test's own that it can stop, restart on the same port, and pause.
    AOF on (`--save ""` off): what was written before a stop is there after the restart."""

    def __init__(self, binary, directory):
        self.port = free_port()
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.args = [binary, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "",
                     "--appendonly", "yes", "--appendfsync", "always", "--dir", str(directory)]
        self.proc = None

    def start(self):
        self.proc = subprocess.Popen(self.args, stdout=subprocess.DEVNULL)
        probe = redis.Redis.from_url(self.url, socket_timeout=0.5)
        deadline = time.monotonic() + 10
        while True:
            try:
                probe.ping()
                return self
            except redis.ConnectionError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.05)

    def stop(self):
        if self.proc and self.proc.poll() is None:  # a test may stop it before its fixture does
            self.proc.terminate()  # redis writes its AOF out and exits
            self.proc.wait(10)

    def signal(self, sig):
        self.proc.send_signal(sig)


@pytest.fixture
def own_redis(tmp_path):
    server = RedisServer(require_program("redis-server", "redis-server"), tmp_path).start()
    yield server
    if server.proc.poll() is None:
        server.signal(signal.SIGCONT)
        server.stop()


def add_turn(store, cid, text="hello"):
    with store.update(cid) as conv:
        conversation.add_turn(conv, text, "msg_x", "completed", "reply")


def test_a_small_blocking_pool_serves_300_threads_at_once(redis_url):
    # A roomy wait for a free connection: this is about waiting instead of failing, on a busy machine.
    client = redis_client(redis_url, max_connections=20, timeout=5.0)
    store = Store(RedisBackend(client), ttl=60)
    errors = []
    start = threading.Barrier(300)

    def work(n):
        start.wait()
        try:
            for i in range(3):
                add_turn(store, f"pool-{n}", f"message {i}")
        except Exception as exc:  # "Too many connections" with redis-py's default pool
            errors.append(exc)

    workers = [threading.Thread(target=work, args=(n,)) for n in range(300)]
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    assert errors == []
    assert all(len(store.load(f"pool-{n}")["items"]) == 6 for n in range(300))
    assert len(client.connection_pool._connections) <= 20


def test_redis_down_fails_fast_and_comes_back_by_itself(own_redis):
    store = Store(RedisBackend(redis_client(own_redis.url, max_connections=10)), ttl=600)
    add_turn(store, "before", "stored before the stop")
    store.ping()
    own_redis.stop()
    attempts = {"load": lambda: store.load("before"),
                "update": lambda: ExitStack().enter_context(store.update("before")),
                "ping": store.ping}
    for name, attempt in attempts.items():
        started = time.monotonic()
        with pytest.raises(StoreError):
            attempt()
        assert time.monotonic() - started < 2, name
    own_redis.start()  # same port, same directory: the same client must just work again
    assert conversation.item_text(store.load("before")["items"][0]) == "stored before the stop"
    add_turn(store, "before", "after the restart")
    add_turn(store, "after")
    assert len(store.load("before")["items"]) == 4 and len(store.load("after")["items"]) == 2
    store.ping()


def test_a_redis_that_stops_answering_fails_within_seconds_then_recovers(own_redis):
    store = Store(RedisBackend(redis_client(own_redis.url, max_connections=10)), ttl=600)
    add_turn(store, "c")
    own_redis.signal(signal.SIGSTOP)  # connections are accepted by the kernel, nothing answers
    try:
        started = time.monotonic()
        with pytest.raises(StoreError):
            store.load("c")
        assert time.monotonic() - started < 3.5  # a 1 s reply timeout, tried twice
        with pytest.raises(StoreError):
            store.ping()
    finally:
        own_redis.signal(signal.SIGCONT)
    assert len(store.load("c")["items"]) == 2
    add_turn(store, "d")
    assert len(store.load("d")["items"]) == 2


def test_purge_leaves_redis_alone(redis_url):
    store = Store(RedisBackend(redis_client(redis_url, max_connections=5)), ttl=60)
    assert purge(store) == {}
    assert "Redis expires keys itself" in summary(purge(store))


class _Planted:
    """A pickle that, when loaded, makes a file: what a writer of the Redis server could plant."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (open, (self.marker, "w"))


def test_a_session_value_in_redis_is_never_unpickled(fake, tmp_path, redis_url):
    """Flask-Session 0.8 falls back to pickle.loads for a value that is neither JSON nor msgpack: whoever
    can write to Redis would run code in the app. A value that is not JSON is no session at all."""
    import pickle

    marker = tmp_path / "unpickled"
    redis.Redis.from_url(redis_url).set("session:planted-id", pickle.dumps(_Planted(str(marker))))
    client = make(fake, tmp_path, redis_url).test_client()
    client.set_cookie("session", "planted-id")
    page = client.get("/")
    assert page.status_code == 200 and "Start the conversation" in page.get_data(as_text=True)
    assert not marker.exists()
    assert client.post("/", data={"message": "still works"}).status_code == 303
    assert client.get_cookie("session").value != "planted-id"


def test_attachments_shares_and_versions_live_in_redis_too(fake, tmp_path, redis_url):
    import base64
    import hashlib
    import io
    import re

    png = base64.b64decode("iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mP8z8BQDwAEhQGAhKmMIQAAAABJRU5ErkJggg==")
    client = make(fake, tmp_path, redis_url).test_client()
    response = client.post("/c/new", data={"message": "look", "files": (io.BytesIO(png), "dot.png")},
                           content_type="multipart/form-data")
    cid = re.search(r"/c/([\w-]+)", response.headers["Location"]).group(1)
    sha = hashlib.sha256(png).hexdigest()
    assert client.get(f"/c/{cid}/files/{sha}").data == png
    reply_id = re.findall(r'name="regenerate" value="([^"]+)"', client.get(f"/c/{cid}").get_data(as_text=True))[-1]
    client.post(f"/c/{cid}", data={"message": "look again", "edit": reply_id})  # keeps the file, a new version
    assert fake.requests[-1]["body"]["input"][0]["content"][1]["type"] == "input_image"
    client.post(f"/c/{cid}/versions", data={"at": "0", "to": "0"})
    assert messages(client.get(f"/c/{cid}").get_data(as_text=True))[0] == ("user", "look")
    keys = {k.decode() for k in redis.Redis.from_url(redis_url).keys("*")}
    assert f"file:{cid}:{sha}" in keys and any(k.startswith(f"branch:{cid}:") for k in keys)
    client.post(f"/c/{cid}/share")
    link = re.search(r'value="http://localhost(/s/[\w-]+)"', client.get(f"/c/{cid}").get_data(as_text=True)).group(1)
    assert "look" in make(fake, tmp_path, redis_url).test_client().get(link).get_data(as_text=True)
    client.post(f"/c/{cid}/delete")
    keys = {k.decode() for k in redis.Redis.from_url(redis_url).keys("*")}
    assert not [k for k in keys if cid in k or k.startswith("share:")]


def test_with_redis_a_turn_lives_while_its_liveness_key_does_whatever_the_hosts_clocks_say(redis_url):
    """Liveness on Redis is a key its runner renews with a TTL: a turn begun on a host whose clock is
    a minute behind (its beat looks old) is not settled as dead while its key lives; a turn whose
    runner died (its key expired) is settled as interrupted at once, even if its host's clock is
    ahead (its beat looks fresh)."""
    from webapp import turns

    client = redis_client(redis_url, 16)
    store = Store(RedisBackend(client), 3600)
    cid = "alive-" + str(time.time())
    turn, _, _, _ = turns.begin(store, cid, "question")
    assert 0 < client.ttl("alive:" + turn) <= turns.settle.STALE
    with store.update_pending(cid) as pending:
        pending["beat"] -= 120  # a host whose clock is two minutes behind Redis's readers
    assert turns.current(store, cid)["pending"]["turn"] == turn  # still running: its key lives
    with store.update_pending(cid) as pending:
        pending.update(beat=time.time() + 120, item_id="msg_p", partial="half a")  # a clock ahead
    client.delete("alive:" + turn)  # its runner stopped renewing: the key expired
    conv = turns.current(store, cid)
    assert conv["pending"] is None
    assert conversation.messages(conv)[-1]["text"] == "half a"
    assert conversation.messages(conv)[-1]["note"] == turns.settle.INTERRUPTED


def test_with_redis_a_running_turns_progress_saves_renew_its_liveness_key(redis_url, fake):
    from webapp import turns
    from webapp.openrouter import Client
    from webapp.turns import runner
    from tests.fake_openrouter import reply

    client = redis_client(redis_url, 16)
    store = Store(RedisBackend(client), 3600)
    cid = "renewed-" + str(time.time())
    gate = threading.Event()
    fake.queue(reply("one two", chunks=["one ", "two"], gate=gate))
    turn, items, _, _ = turns.begin(store, cid, "question")
    client.expire("alive:" + turn, 2)  # about to lapse
    running = turns.start(store, Client(fake.api_key, fake.base_url, "openai/o4-mini", 100), cid, turn, items)
    deadline = time.monotonic() + 5
    while client.ttl("alive:" + turn) <= 2 and time.monotonic() < deadline:
        time.sleep(0.05)
    assert client.ttl("alive:" + turn) > 2  # renewed by a progress save
    assert runner.flush(running) == "running"
    gate.set()
    assert running.wait(5)
    assert conversation.messages(store.load(cid))[-1]["text"] == "one two"

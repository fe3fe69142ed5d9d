"""SESSION_TYPE=redis against a real redis-server: sessions, conversations and locks live in Redis."""

import subprocess
import threading
import time

import pytest
import redis

from tests.conftest import app_config, messages
from tests.serving import free_port, require_program
from webapp import conversation, create_app
from webapp.store import RedisBackend, Store

pytestmark = pytest.mark.redis


@pytest.fixture(scope="module")
def redis_url(tmp_path_factory):
    binary = require_program("redis-server", "redis-server")
    port = free_port()
    proc = subprocess.Popen([binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "",
                             "--appendonly", "no", "--dir", str(tmp_path_factory.mktemp("redis"))],
                            stdout=subprocess.DEVNULL)
    url = f"redis://127.0.0.1:{port}/0"
    client = redis.Redis.from_url(url)
    for _ in range(100):
        try:
            client.ping()
            break
        except redis.ConnectionError:
            time.sleep(0.05)
    yield url
    proc.terminate()
    proc.wait()


def make(fake, tmp_path, url):
    return create_app(app_config(fake, tmp_path, SESSION_TYPE="redis", REDIS_URL=url), env={})


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

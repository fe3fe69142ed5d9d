"""The app under a real gunicorn (production config, 2 workers) against the fake OpenRouter."""

import concurrent.futures
import re

import pytest
import requests

from tests.conftest import alert, messages, textarea
from tests.fake_openrouter import error, reply
from tests.serving import Browser, Gunicorn, served_env


@pytest.fixture
def app_env(fake, tmp_path):
    return served_env(fake, tmp_path, "gunicorn-test")


@pytest.fixture
def server(app_env, tmp_path):
    with Gunicorn(app_env, tmp_path / "gunicorn.log") as running:
        yield running


def send(browser, server, text):
    return browser.post(server.url + "/", data={"message": text}, timeout=30)


def test_a_conversation_over_gunicorn_keeps_every_turn(server, fake):
    browser = Browser()
    for text in ["one", "two", "three"]:
        response = send(browser, server, text)
        # followed the 303 to the conversation's own page
        assert response.status_code == 200 and re.search(r"/c/[\w-]+#latest$", response.url)
    shown = messages(browser.get(server.url + "/").text)
    assert [t for _, t in shown] == ["one", "Reply 1: one", "two", "Reply 2: two", "three", "Reply 3: three"]
    assert [len(r["body"]["input"]) for r in fake.requests] == [1, 3, 5]


def test_history_survives_a_gunicorn_restart(app_env, tmp_path, fake):
    browser = Browser()
    with Gunicorn(app_env, tmp_path / "first.log") as first:
        send(browser, first, "before the restart")
    with Gunicorn(app_env, tmp_path / "second.log") as second:
        shown = messages(browser.get(second.url + "/").text)
        assert shown[:2] == [("user", "before the restart"), ("assistant", "Reply 1: before the restart")]
        send(browser, second, "after")
        assert len(fake.requests[-1]["body"]["input"]) == 3


def test_many_browsers_wait_on_the_model_at_once(server, fake):
    """64 turns are held in flight together: the fake sees every request before answering any."""
    n = 64
    fake.queue(*[reply(delay=3.0) for _ in range(n)])

    def chat(i):
        browser = Browser()
        send(browser, server, f"user {i}")
        return messages(browser.get(server.url + "/").text)

    with concurrent.futures.ThreadPoolExecutor(n) as pool:
        futures = [pool.submit(chat, i) for i in range(n)]
        assert fake.wait_for_requests(n, timeout=2.9), "turns were not all in flight at once"
        results = [f.result() for f in futures]
    for i, shown in enumerate(results):
        assert shown == [("user", f"user {i}"), ("assistant", f"Reply 1: user {i}")]


def test_an_upstream_error_under_gunicorn_keeps_the_text(server, fake):
    browser = Browser()
    fake.queue(error(503, "No providers available"))
    html = send(browser, server, "try me").text
    assert "unavailable" in alert(html) and textarea(html) == "try me"
    assert messages(html) == []


def test_the_key_never_leaves_the_server(server, fake):
    browser = Browser()
    seen = []
    fake.queue(error(401, f"key {fake.api_key} is disabled"))
    for response in [send(browser, server, "hi"), browser.get(server.url + "/"),
                     send(browser, server, "hi again"), browser.get(server.url + "/missing"),
                     browser.get(server.url + "/static/app.js")]:
        seen += [response.text, str(response.headers)]
    seen += [c.value for c in browser.cookies]
    assert all(fake.api_key not in s for s in seen)
    assert fake.api_key not in server.output()


def test_gunicorn_starts_without_a_key_and_the_page_says_how_to_set_it(app_env, tmp_path, fake):
    app_env["OPENROUTER_API_KEY"] = ""
    with Gunicorn(app_env, tmp_path / "nokey.log") as server:
        page = requests.get(server.url + "/")
        assert page.status_code == 200 and "OPENROUTER_API_KEY" in page.text
        response = Browser().post(server.url + "/", data={"message": "hello"})
        assert response.status_code == 503 and textarea(response.text) == "hello"
        assert "Traceback" not in server.output()
    assert fake.requests == []


def test_a_bad_setting_stops_startup_with_one_clear_line(app_env, tmp_path):
    app_env["MAX_OUTPUT_TOKENS"] = "lots"
    with pytest.raises(RuntimeError) as caught:
        Gunicorn(app_env, tmp_path / "bad.log").start()
    assert "MAX_OUTPUT_TOKENS must be a whole number" in str(caught.value)
    assert re.search(r"Traceback", str(caught.value)) is None

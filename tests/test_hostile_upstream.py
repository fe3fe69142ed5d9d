"""A hostile (or just broken) upstream: its error text must never carry the API key to a user, a
stored conversation or a log line, must never fill the page, and its headers must never crash a turn.

Every path an upstream error text can take is driven end to end: the JS-off form post (a whole reply)
and the JS path (`/turns`, a streamed reply read as Server-Sent Events), through the test client and
once through a real gunicorn."""

import json
import re
import time
from datetime import datetime, timedelta, timezone
from email.utils import format_datetime, formatdate
from html import unescape
from pathlib import Path

import pytest

from tests.serving import Browser
from tests.sse import sse_events
from tests.conftest import alert, messages, textarea
from tests.fake_openrouter import error, raw, reply, stream_error
from webapp import openrouter
from webapp.openrouter import UpstreamError

LIMIT = 300  # upstream text shown to users, at most (then an ellipsis)
SLACK = 120  # the app's own words around it ("OpenRouter rejected the request (400): ")


def hostile(key):
    """A 5,000-character upstream message with the key early (so an unscrubbed one shows), near the
    300-character cut (so truncating before scrubbing would leave part of it) and at the end."""
    head = f"Invalid request from Authorization: Bearer {key} (check {key})"
    middle = "z" * (LIMIT - len(head) - 10) + key
    text = head + middle
    return text + "z" * (5000 - len(text) - len(key)) + key


def failed_response(message):
    return json.dumps({"id": "resp_1", "object": "response", "status": "failed", "output": [],
                       "error": {"code": "server_error", "message": message}})


def error_only(message):
    return json.dumps({"error": {"code": 200, "message": message}})




def notes(html):
    return [unescape(n) for n in re.findall(r'<p class="note">(.*?)</p>', html, re.S)]


def shown_error(html):
    """The error shown for a failed turn, without the sentence the page adds after it."""
    return re.split(r"\s+Your message was not sent", alert(html) or "")[0].strip()


def assert_short(shown):
    """At most ~300 characters of upstream text, cut with an ellipsis."""
    assert shown and shown.endswith("\u2026"), shown
    assert len(shown) <= LIMIT + SLACK, len(shown)
    assert "z" * (LIMIT + 1) not in shown


def assert_nowhere(key, *texts, store=None, caplog=None, log_text=""):
    """The key in no text given, in no file of the store (raw bytes: cachelib pickles values), in no
    log record (message, arguments or traceback) and in no log file."""
    for text in texts:
        assert key not in text and key not in unescape(text)
    if store is not None:
        files = [p for p in Path(store).rglob("*") if p.is_file()]
        assert files, "the store wrote nothing: the test proves nothing"
        for path in files:
            data = path.read_bytes()
            assert key.encode() not in data, path
            assert key.encode("utf-16-le") not in data, path
    if caplog is not None:
        assert key not in caplog.text
        for record in caplog.records:
            assert key not in record.getMessage()
    assert key not in log_text


@pytest.fixture
def logs(caplog):
    caplog.set_level("DEBUG")
    return caplog


@pytest.fixture
def store_dir(tmp_path):
    return tmp_path / "sessions"  # SESSION_DIR in conftest's app_config


# --- the JS-off form post: a whole reply ---------------------------------------------------------

WHOLE = {
    "http 400 body": lambda m: error(400, m),
    "http 403 body": lambda m: error(403, m),
    "http 418 body": lambda m: error(418, m),
    "failed response": lambda m: raw(200, failed_response(m), "application/json"),
    "200 with only an error": lambda m: raw(200, error_only(m), "application/json"),
}


@pytest.mark.parametrize("path", WHOLE)
def test_a_whole_reply_never_shows_stores_or_logs_the_key(client, fake, logs, store_dir, path):
    fake.queue(WHOLE[path](hostile(fake.api_key)))
    posted = client.post("/", data={"message": "hello"})
    assert posted.status_code == 303
    html = client.get("/").get_data(as_text=True)
    assert messages(html) == [] and textarea(html) == "hello"  # the message is kept for a retry
    shown = shown_error(html)
    assert "[redacted]" in shown
    assert_short(shown)
    assert_nowhere(fake.api_key, html, posted.get_data(as_text=True), store=store_dir, caplog=logs)


# --- the JS path: a streamed reply ---------------------------------------------------------------

STREAMED = {
    "http 400 before the stream": lambda m: error(400, m),
    "flat error event": lambda m: stream_error(0, style="flat", message=m),
    "nested error event": lambda m: stream_error(0, style="nested", message=m),
    "response.failed": lambda m: stream_error(0, style="failed", message=m),
    "failed response in response.completed": lambda m: stream_error(
        0, style="failed", message=m, terminal="response.completed"),
    "failed response in response.incomplete": lambda m: stream_error(
        0, style="failed", message=m, terminal="response.incomplete"),
    "plain JSON failed response": lambda m: raw(200, failed_response(m), "application/json"),
    "plain JSON error": lambda m: raw(200, error_only(m), "application/json"),
}

PARTIAL = {
    "flat error event": lambda m: stream_error(2, style="flat", message=m),
    "nested error event": lambda m: stream_error(2, style="nested", message=m),
    "response.failed": lambda m: stream_error(2, style="failed", message=m),
    "failed response in response.completed": lambda m: stream_error(
        2, style="failed", message=m, terminal="response.completed"),
    "failed response in response.incomplete": lambda m: stream_error(
        2, style="failed", message=m, terminal="response.incomplete"),
}


def stream_turn(client, text="hello"):
    response = client.post("/turns", data={"message": text}, headers={"Accept": "text/event-stream"})
    assert response.status_code == 200 and response.mimetype == "text/event-stream"
    body = response.get_data(as_text=True)
    return body, sse_events(body)


@pytest.mark.parametrize("path", STREAMED)
def test_a_streamed_failure_never_shows_stores_or_logs_the_key(client, fake, logs, store_dir, path):
    fake.queue(STREAMED[path](hostile(fake.api_key)))
    body, events = stream_turn(client)
    kind, final = events[-1]
    assert kind == "error" and not final["kept"], events[-1]
    assert "[redacted]" in final["message"]
    assert_short(final["message"])
    html = client.get("/").get_data(as_text=True)
    assert messages(html) == [] and textarea(html) == "hello"
    assert shown_error(html) == final["message"]
    assert_nowhere(fake.api_key, body, html, store=store_dir, caplog=logs)


@pytest.mark.parametrize("path", PARTIAL)
def test_a_failure_after_some_words_keeps_them_with_a_short_clean_note(client, fake, logs, store_dir, path):
    fake.queue(PARTIAL[path](hostile(fake.api_key)))
    body, events = stream_turn(client)
    partial = "".join(data for kind, data in events if kind == "delta")
    kind, final = events[-1]
    assert partial and kind == "error" and final["kept"], events[-1]
    assert_short(final["message"])
    html = client.get("/").get_data(as_text=True)
    assert messages(html) == [("user", "hello"), ("assistant", partial.strip())]
    assert notes(html) == [final["message"]]  # the reason, stored under the kept words
    assert_nowhere(fake.api_key, body, html, store=store_dir, caplog=logs)
    # The kept words go back upstream with the id the API gave them: the next turn works.
    assert stream_turn(client, "again")[1][-1][0] == "done"


def test_the_same_under_a_real_gunicorn(served, fake):
    """The real server: its own log file and store, a streamed and a whole reply."""
    fake.queue(stream_error(0, style="failed", message=hostile(fake.api_key), terminal="response.completed"),
               error(400, hostile(fake.api_key)))
    browser = Browser()
    streamed = browser.post(served.url + "/turns", data={"message": "hi"},
                            headers={"Accept": "text/event-stream"}, timeout=30)
    kind, final = sse_events(streamed.text)[-1]
    assert kind == "error"
    assert_short(final["message"])
    whole = browser.post(served.url + "/", data={"message": "hi"}, timeout=30)
    assert_short(shown_error(whole.text))
    deadline = time.monotonic() + 5  # the workers' log lines reach the file soon after the replies
    while served.output().count("upstream failure") < 2 and time.monotonic() < deadline:
        time.sleep(0.05)
    assert served.output().count("upstream failure") >= 2
    assert_nowhere(fake.api_key, streamed.text, whole.text, store=served.env["SESSION_DIR"],
                   log_text=served.output())


# --- the message itself --------------------------------------------------------------------------

def test_every_upstream_error_is_scrubbed_and_cut_where_it_is_built(fake):
    openrouter.Client(fake.api_key, fake.base_url, "m", 10)  # registers its key
    long = hostile(fake.api_key)
    for kind in ("bad_request", "moderation", "failed", "upstream", "connection", "timeout"):
        err = UpstreamError(kind, 400, long)
        for text in (err.message, err.detail, str(err)):
            assert fake.api_key not in text
        assert len(err.detail) <= LIMIT + 1 and err.detail.endswith("\u2026")
        assert len(err.message) <= LIMIT + SLACK
    short = UpstreamError("failed", detail="overloaded")
    assert short.message == "The model stopped with an error: overloaded" and short.detail == "overloaded"


def test_a_key_split_by_the_cut_leaves_no_prefix_of_it(fake):
    openrouter.Client(fake.api_key, fake.base_url, "m", 10)
    detail = "z" * (LIMIT - 10) + fake.api_key + "z" * 100
    err = UpstreamError("failed", detail=detail)
    assert fake.api_key[:10] not in err.message and "[redacted]" in err.message


def test_a_too_short_key_is_not_scrubbed_from_every_word():
    openrouter.Client("k", "http://127.0.0.1:9/api/v1", "m", 10)
    assert UpstreamError("failed", detail="keep looking").message.endswith("keep looking")


# --- Retry-After ---------------------------------------------------------------------------------

NOW = datetime(2026, 11, 2, 12, 0, 0, tzinfo=timezone.utc).timestamp()


@pytest.mark.parametrize("value,expected", [
    ("3", 3), (" 3 ", 3), ("0", 0), ("86400", 86400), ("007", 7),
    ("\u00b2", None), ("\u0663", None), ("\uff13", None),  # superscript two, Arabic-Indic and fullwidth 3
    ("-1", None), ("+3", None), ("3.5", None), ("1e3", None), ("3 4", None), ("86401", None),
    ("9" * 5000, None), ("", None), ("   ", None), (None, None), ("soon", None), ("garbage; 3", None),
    ("Mon, 99 Foo 2026 99:99:99 GMT", None),
])
def test_retry_after_accepts_only_ascii_seconds_or_an_http_date(value, expected):
    assert openrouter.parse_retry_after(value, now=NOW) == expected


def test_retry_after_as_an_http_date_is_seconds_from_now():
    when = datetime.fromtimestamp(NOW, timezone.utc) + timedelta(seconds=30)
    assert openrouter.parse_retry_after(format_datetime(when, usegmt=True), now=NOW) == 30
    assert openrouter.parse_retry_after(formatdate(NOW - 60, usegmt=True), now=NOW) == 0  # already past
    assert openrouter.parse_retry_after(formatdate(NOW + 2 * 86400, usegmt=True), now=NOW) is None  # absurd
    assert 28 <= openrouter.parse_retry_after(formatdate(time.time() + 30, usegmt=True)) <= 31  # now by default


@pytest.mark.parametrize("header,expected", [("\u00b2", None), ("-1", None), ("5", 5), ("tomorrow", None)])
@pytest.mark.parametrize("how", ["whole", "streamed"])
def test_a_hostile_retry_after_never_breaks_a_turn(client, fake, logs, header, expected, how):
    fake.queue(error(429, "slow down", retry_after=header))
    if how == "whole":
        client.post("/", data={"message": "hello"})
        shown = shown_error(client.get("/").get_data(as_text=True))
    else:
        kind, final = stream_turn(client)[1][-1]
        assert kind == "error"
        shown = final["message"]
    assert "rate limiting" in shown
    assert ("in 5 seconds" if expected else "Try again shortly") in shown
    assert not [r for r in logs.records if r.levelname in ("ERROR", "CRITICAL")]


def test_a_correct_reply_still_works(client, fake):
    fake.queue(reply("fine"))
    client.post("/", data={"message": "hello"})
    assert messages(client.get("/").get_data(as_text=True)) == [("user", "hello"), ("assistant", "fine")]

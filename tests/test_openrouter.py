"""The upstream client against the fake OpenRouter: request shape, reply parsing, every failure kind."""

import json
import time
from email.utils import formatdate

import pytest

from tests.fake_openrouter import error, hang, no_message, raw, reply, stream_error
from webapp import conversation
from webapp.openrouter import Client, StreamState, UpstreamError, reply_from_response

DETAIL_LIMIT = 300  # characters of upstream text shown, then an ellipsis


@pytest.fixture
def client(fake):
    return Client(fake.api_key, fake.base_url, "openai/o4-mini", 123, read_timeout=5.0,
                  app_url="https://chat.example", app_title="Test Chat")


def ask(client, text="hello"):
    return client.respond([conversation.user_item(text)])


def ask_streamed(client, state, text="hello"):
    """The streamed reply's events, as a list (raises the stream's UpstreamError)."""
    return list(client.stream([conversation.user_item(text)], state))


def test_a_reply_skips_the_reasoning_item_and_keeps_the_message_id_and_status(client, fake):
    got = ask(client)
    assert got.text == "Reply 1: hello" and got.status == "completed"
    assert got.item_id in fake.issued_ids and got.item_id.startswith("msg_")
    assert got.usage["total_tokens"] > 0


def test_the_request_carries_bearer_model_input_limit_and_attribution(client, fake):
    ask(client)
    sent = fake.requests[0]
    assert sent["headers"]["Authorization"] == f"Bearer {fake.api_key}"
    assert sent["headers"]["HTTP-Referer"] == "https://chat.example"
    assert sent["headers"]["X-OpenRouter-Title"] == "Test Chat"
    assert sent["body"]["model"] == "openai/o4-mini" and sent["body"]["max_output_tokens"] == 123
    assert sent["body"]["input"] == [conversation.user_item("hello")]


def test_the_connection_is_reused_between_turns(client, fake):
    ask(client)
    ask(client)
    pool = client.http.get_adapter(client.url).poolmanager
    assert len(pool.pools) == 1
    assert next(iter(pool.pools._container.values())).num_connections == 1


def test_an_incomplete_reply_keeps_its_status_and_reason(client, fake):
    fake.queue(reply("cut", status="incomplete"))
    got = ask(client)
    assert (got.status, got.incomplete_reason, got.text) == ("incomplete", "max_output_tokens", "cut")


@pytest.mark.parametrize("status,kind", [(400, "bad_request"), (401, "auth"), (402, "credits"),
                                         (403, "moderation"), (408, "timeout"), (429, "rate_limited"),
                                         (500, "unavailable"), (502, "unavailable"), (503, "unavailable"),
                                         (524, "unavailable"), (418, "upstream")])
def test_error_statuses_become_one_error_type(client, fake, status, kind):
    fake.queue(error(status, "upstream words"))
    with pytest.raises(UpstreamError) as caught:
        ask(client)
    assert (caught.value.kind, caught.value.status) == (kind, status)


def test_openrouters_own_message_is_passed_on_where_it_helps(client, fake):
    fake.queue(error(400, "context length exceeded: 9000 > 8192"))
    with pytest.raises(UpstreamError, match="context length exceeded"):
        ask(client)


def test_retry_after_is_read(client, fake):
    fake.queue(error(429, "slow down", retry_after=12))
    with pytest.raises(UpstreamError) as caught:
        ask(client)
    assert caught.value.retry_after == 12 and "12 seconds" in caught.value.message


@pytest.mark.parametrize("header,expected,said", [
    ("1", 1, "in 1 second."), ("\u00b2", None, "shortly"), ("-1", None, "shortly"),
    ("99999999", None, "shortly"), ("in a bit", None, "shortly")])
def test_a_retry_after_that_is_not_plain_seconds_is_ignored_not_a_crash(client, fake, header, expected, said):
    fake.queue(error(429, "slow down", retry_after=header))
    with pytest.raises(UpstreamError) as caught:
        ask(client)
    assert caught.value.kind == "rate_limited" and caught.value.retry_after == expected
    assert said in caught.value.message


def test_a_retry_after_date_becomes_seconds_from_now(client, fake):
    fake.queue(error(503, "overloaded", retry_after=formatdate(time.time() + 20, usegmt=True)))
    with pytest.raises(UpstreamError) as caught:
        ask(client)
    assert caught.value.kind == "unavailable" and 18 <= caught.value.retry_after <= 21


@pytest.mark.parametrize("behaviour,kind", [(raw(200, "not json"), "bad_response"),
                                            (raw(200, "[1, 2]", "application/json"), "bad_response"),
                                            (no_message(), "no_message")])
def test_unusable_success_bodies_are_errors(client, fake, behaviour, kind):
    fake.queue(behaviour)
    with pytest.raises(UpstreamError) as caught:
        ask(client)
    assert caught.value.kind == kind


def test_a_silent_upstream_hits_the_read_timeout(fake):
    slow = Client(fake.api_key, fake.base_url, "m", 10, connect_timeout=1, read_timeout=0.3)
    fake.queue(hang(2))
    with pytest.raises(UpstreamError) as caught:
        ask(slow)
    assert caught.value.kind == "timeout"


def test_a_refused_connection_is_an_error_not_a_crash():
    with pytest.raises(UpstreamError) as caught:
        ask(Client("k", "http://127.0.0.1:9/api/v1", "m", 10))
    assert caught.value.kind == "connection"


def test_no_key_means_no_request(fake):
    with pytest.raises(UpstreamError) as caught:
        ask(Client("", fake.base_url, "m", 10))
    assert caught.value.kind == "no_key" and fake.requests == []


def test_the_key_is_scrubbed_from_messages_shown_to_users(client, fake):
    fake.queue(error(400, f"bad request from {fake.api_key}"))
    with pytest.raises(UpstreamError) as caught:
        ask(client)
    assert fake.api_key not in caught.value.message and "[redacted]" in caught.value.message


def failed_body(message):
    return json.dumps({"status": "failed", "output": [], "error": {"code": "server_error", "message": message}})


@pytest.mark.parametrize("streamed", [False, True])
@pytest.mark.parametrize("behaviour", [
    lambda m: error(400, m), lambda m: error(418, m),
    lambda m: raw(200, failed_body(m), "application/json"),
    lambda m: raw(200, json.dumps({"error": {"code": 200, "message": m}}), "application/json"),
    lambda m: stream_error(0, style="flat", message=m), lambda m: stream_error(0, style="nested", message=m),
    lambda m: stream_error(0, style="failed", message=m),
    lambda m: stream_error(0, style="failed", message=m, terminal="response.completed"),
    lambda m: stream_error(0, style="failed", message=m, terminal="response.incomplete"),
], ids=["400", "418", "failed-json", "error-json", "flat", "nested", "failed", "in-completed", "in-incomplete"])
def test_every_error_text_is_scrubbed_and_cut_on_every_path(client, fake, behaviour, streamed):
    words = f"oops {fake.api_key} " + "w" * 5000 + fake.api_key
    fake.queue(behaviour(words))
    with pytest.raises(UpstreamError) as caught:
        ask_streamed(client, StreamState()) if streamed else ask(client)
    error_ = caught.value
    for text in (error_.message, error_.detail, str(error_)):
        assert fake.api_key not in text
    if error_.kind != "unavailable":  # a stream_error meeting a non-stream request is a bare 502
        assert "[redacted]" in error_.message and error_.message.endswith("\u2026")
        assert len(error_.detail) == DETAIL_LIMIT + 1 and error_.detail in error_.message


@pytest.mark.parametrize("terminal", ["response.failed", "response.completed", "response.incomplete"])
def test_a_failed_response_fails_the_stream_whatever_event_carries_it_and_keeps_the_words(client, fake, terminal):
    fake.queue(stream_error(2, style="failed", message="overloaded", terminal=terminal, text="abcdefgh"))
    state = StreamState()
    with pytest.raises(UpstreamError, match="overloaded") as caught:
        ask_streamed(client, state)
    assert caught.value.kind == "failed"
    assert state.text == "abcdefgh" and state.item_id in fake.issued_ids


def test_reply_parsing_accepts_several_message_items_and_a_failed_status():
    body = {"status": "completed", "output": [
        {"type": "reasoning", "id": "rs_1", "summary": ["plain string summary"]},
        {"type": "message", "id": "msg_1", "status": "completed", "role": "assistant",
         "content": [{"type": "output_text", "text": "a", "annotations": []}]},
        {"type": "message", "id": "msg_2", "status": "completed", "role": "assistant",
         "content": [{"type": "output_text", "text": "b", "annotations": []}]}]}
    got = reply_from_response(body)
    assert (got.text, got.item_id) == ("ab", "msg_2")
    with pytest.raises(UpstreamError, match="overloaded"):
        reply_from_response({"status": "failed", "output": [],
                             "error": {"code": "server_error", "message": "overloaded"}})

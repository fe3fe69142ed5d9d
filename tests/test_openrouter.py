"""The upstream client against the fake OpenRouter: request shape, reply parsing, every failure kind."""

import pytest

from tests.fake_openrouter import error, hang, no_message, raw, reply
from webapp import conversation
from webapp.openrouter import Client, UpstreamError, reply_from_response


@pytest.fixture
def client(fake):
    return Client(fake.api_key, fake.base_url, "openai/o4-mini", 123, read_timeout=5.0,
                  app_url="https://chat.example", app_title="Test Chat")


def ask(client, text="hello"):
    return client.respond([conversation.user_item(text)])


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

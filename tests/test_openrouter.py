"""The upstream client against the fake OpenRouter: request shape, reply parsing, every failure kind."""

import json
import threading
import time
from email.utils import formatdate

import pytest

from tests.fake_openrouter import MODELS, TINY_MODEL, error, hang, no_message, raw, reply, stream_error
from webapp import conversation, openrouter
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


def test_streamed_turns_reuse_one_connection(client, fake):
    # A streamed reply ends with its terminal event, then `[DONE]` and the chunked body's end. Read to
    # there, the connection goes back to the pool: the next turn skips the DNS lookup, TCP and TLS
    # handshakes (over HTTPS to openrouter.ai, the most of a short turn's own cost).
    for text in ("one", "two", "three"):
        events = client.stream([conversation.user_item(text)], StreamState())
        kinds = []
        for kind, _ in events:
            kinds.append(kind)
            if kind == "done":
                time.sleep(0.2)  # as the runner does: it stores the reply, then closes the stream
                events.close()
        assert kinds[-1] == "done"
    assert [sent["body"]["stream"] for sent in fake.requests] == [True] * 3
    assert len({sent["peer"] for sent in fake.requests}) == 1


def test_a_streamed_turn_whose_end_is_late_does_not_wait_for_it(client, fake):
    # An upstream that holds `[DONE]` back after the terminal event: the reply is done at once, and its
    # connection is closed rather than waited on (the next turn opens a new one).
    fake.queue(reply("Hi.", tail_delay=3.0))
    started = time.monotonic()
    events = ask_streamed(client, StreamState())
    assert events[-1][0] == "done" and events[-1][1].text == "Hi."
    assert time.monotonic() - started < 2.0
    assert ask(client).text.startswith("Reply")
    assert len({sent["peer"] for sent in fake.requests}) == 2


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
    slow = Client(fake.api_key, fake.base_url, "openai/o4-mini", 10, connect_timeout=1, read_timeout=0.3)
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


# --- the model list ------------------------------------------------------------------------------

def test_models_returns_the_data_list(client, fake):
    fake.models = {"data": MODELS["data"] + [{"name": "no id"}, "junk"], "total_count": 4, "links": {}}
    assert client.models() == MODELS["data"]
    assert fake.model_fetches == 1 and fake.requests == []  # a GET, never a turn


@pytest.mark.parametrize("behaviour,kind", [
    (error(503, "down"), "unavailable"), (error(401, "who"), "auth"),
    (raw(200, "not json", "application/json"), "bad_response"),
    (raw(200, "<html>hi</html>"), "bad_response"),
    (raw(200, json.dumps({"models": []}), "application/json"), "bad_response"),
    (raw(200, json.dumps({"data": {"id": "x"}}), "application/json"), "bad_response"),
    (raw(200, "[]", "application/json"), "bad_response"),
], ids=["503", "401", "not-json", "html", "no-data", "data-not-list", "list"])
def test_every_model_list_failure_is_an_upstream_error(client, fake, behaviour, kind):
    fake.models_response = behaviour
    with pytest.raises(UpstreamError) as caught:
        client.models()
    assert caught.value.kind == kind


def test_a_silent_model_list_times_out_quickly(client, fake, monkeypatch):
    monkeypatch.setattr(openrouter.client, "MODELS_READ_TIMEOUT", 0.3)
    fake.models_response = hang(2)
    started = time.monotonic()
    with pytest.raises(UpstreamError) as caught:
        client.models()
    assert caught.value.kind == "timeout" and time.monotonic() - started < 1.5


def test_an_unreachable_model_list_is_a_connection_error():
    with pytest.raises(UpstreamError) as caught:
        Client("k", "http://127.0.0.1:9/api/v1", "m", 10).models()
    assert caught.value.kind == "connection"


def test_a_finished_turns_stop_cannot_cut_a_model_list_on_its_connection(client, fake):
    state = StreamState()
    client.respond([conversation.user_item("hi")], state)
    pool = next(iter(client.http.get_adapter(client.url).poolmanager.pools._container.values()))
    (conn,) = [c for c in pool.pool.queue if c is not None]
    assert conn.chat_owner is state
    client.models()
    assert conn.chat_owner is not state  # the GET claimed the pooled connection for itself
    state.cancel()  # a late Stop of the finished turn
    assert [m["id"] for m in client.models()] == ["openai/o4-mini", "openai/gpt-4o-mini"]
    assert openrouter.connection._current.state is None


def test_turns_stay_stoppable_after_a_model_list(client, fake):
    client.models()
    gate = threading.Event()
    fake.queue(reply("abcdef", chunks=["ab", "cd", "ef"], gate=gate))
    state = StreamState()
    events = client.stream([conversation.user_item("hi")], state)
    assert next(kind for kind, _ in events if kind == "delta")
    threading.Timer(0.1, state.cancel).start()
    with pytest.raises(UpstreamError) as caught:
        list(events)
    gate.set()
    assert caught.value.kind == "stopped" and state.text == "ab"


# --- per-turn options ----------------------------------------------------------------------------

def test_no_options_sends_the_clients_defaults_only(client, fake):
    ask(client)
    list(client.stream([conversation.user_item("hi")], StreamState()))
    for sent in fake.requests:
        assert set(sent["body"]) == {"model", "input", "max_output_tokens", "stream"}
        assert sent["body"]["model"] == "openai/o4-mini" and sent["body"]["max_output_tokens"] == 123


@pytest.mark.parametrize("streamed", [False, True])
def test_options_given_are_sent(client, fake, streamed):
    items = [conversation.user_item("hi")]
    if streamed:
        list(client.stream(items, StreamState(), model="openai/gpt-4o-mini", instructions="Be brief.",
                           max_output_tokens=50, temperature=1))
        list(client.stream(items, StreamState(), reasoning_effort="high"))
    else:
        client.respond(items, model="openai/gpt-4o-mini", instructions="Be brief.", max_output_tokens=50,
                       temperature=1)
        client.respond(items, reasoning_effort="high")
    first, second = (sent["body"] for sent in fake.requests)
    assert {k: v for k, v in first.items() if k != "input"} == {
        "model": "openai/gpt-4o-mini", "instructions": "Be brief.", "max_output_tokens": 50,
        "temperature": 1.0, "stream": streamed}
    assert isinstance(first["temperature"], float)
    assert {k: v for k, v in second.items() if k != "input"} == {
        "model": "openai/o4-mini", "max_output_tokens": 123, "stream": streamed,
        "reasoning": {"effort": "high", "summary": "auto"}}


def test_none_and_blank_options_are_not_sent(client, fake):
    client.respond([conversation.user_item("hi")], model=None, instructions=" \n", max_output_tokens=None,
                   temperature=None, reasoning_effort=None)
    assert set(fake.requests[0]["body"]) == {"model", "input", "max_output_tokens", "stream"}


@pytest.mark.parametrize("option", [
    {"temperature": 2.5}, {"temperature": -0.1}, {"temperature": float("nan")}, {"temperature": True},
    {"temperature": "0.5"}, {"reasoning_effort": "extreme"}, {"reasoning_effort": ""},
    {"max_output_tokens": 0}, {"max_output_tokens": 1.5}, {"max_output_tokens": True},
    {"model": ""}, {"model": 5}, {"instructions": 5}])
@pytest.mark.parametrize("streamed", [False, True])
def test_a_bad_option_is_refused_before_anything_is_sent(client, fake, option, streamed):
    with pytest.raises(ValueError):
        if streamed:
            list(client.stream([conversation.user_item("hi")], StreamState(), **option))
        else:
            client.respond([conversation.user_item("hi")], **option)
    assert fake.requests == []


def test_an_unknown_option_is_a_type_error(client, fake):
    with pytest.raises(TypeError):
        client.respond([conversation.user_item("hi")], top_k=3)
    assert fake.requests == []


@pytest.mark.rejections_expected
@pytest.mark.parametrize("options,words", [
    ({"temperature": 0.5}, "not supported"),                      # o4-mini takes no temperature
    ({"model": "openai/gpt-4o-mini", "reasoning_effort": "low"}, "not supported"),
    ({"model": "nobody/nothing"}, "not a valid model"),
    ({"model": "tiny/4k", "max_output_tokens": 4000}, "maximum context length is 4096 tokens"),
])
def test_what_the_model_refuses_comes_back_as_a_bad_request(client, fake, options, words):
    fake.models = {"data": MODELS["data"] + [TINY_MODEL]}
    with pytest.raises(UpstreamError, match=words) as caught:
        client.respond([conversation.user_item("x" * 800)], **options)
    assert caught.value.kind == "bad_request" and len(fake.rejections) == 1


def test_a_small_model_takes_a_request_that_fits(client, fake):
    fake.models = {"data": MODELS["data"] + [TINY_MODEL]}
    got = client.respond([conversation.user_item("x" * 800)], model="tiny/4k", max_output_tokens=3800,
                         temperature=0.2)
    assert got.model == "tiny/4k" and got.text.startswith("Reply 1:")


# --- reasoning summaries -------------------------------------------------------------------------

def test_a_reply_carries_the_reasoning_summary_apart_from_its_text(client, fake):
    fake.queue(reply("The answer.", reasoning=["First I read.", "Then I wrote."]), reply("Plain.", reasoning=False))
    got = ask(client)
    assert got.text == "The answer." and got.reasoning == "First I read.\n\nThen I wrote."
    assert ask(client).reasoning is None


def test_a_streamed_reply_yields_the_summary_as_reasoning_events(client, fake):
    fake.queue(reply("The answer.", reasoning=["First I read the question.", "Then I wrote."]))
    state = StreamState()
    events = ask_streamed(client, state)
    pieces = [value for kind, value in events if kind == "reasoning"]
    done = events[-1][1]
    assert len(pieces) > 2 and "".join(pieces) == done.reasoning == "First I read the question.\n\nThen I wrote."
    assert "".join(value for kind, value in events if kind == "delta") == done.text == state.text == "The answer."
    kinds = [kind for kind, _ in events]
    assert kinds.index("reasoning") < kinds.index("delta")


def test_the_default_fake_reply_has_a_summary_either_way(client, fake):
    assert ask(client).reasoning == "thinking\u2026"
    events = ask_streamed(client, StreamState())
    assert events[-1][1].reasoning == "thinking\u2026" and "thinking" not in events[-1][1].text


def sse_body(*events, done=True):
    lines = [f"data: {json.dumps(dict(event, sequence_number=i))}\n\n" for i, event in enumerate(events)]
    return ": OPENROUTER PROCESSING\n\n" + "".join(lines) + ("data: [DONE]\n\n" if done else "")


def message(item_id, text="Hi.", status="completed"):
    return {"type": "message", "id": item_id, "status": status, "role": "assistant",
            "content": [{"type": "output_text", "text": text, "annotations": []}]}


def test_a_stream_whose_final_response_lacks_the_summary_keeps_the_streamed_one(client, fake):
    fake.queue(raw(200, sse_body(
        {"type": "response.output_item.added", "output_index": 0,
         "item": {"type": "reasoning", "id": "rs_1", "summary": []}},
        {"type": "response.reasoning_summary_text.delta", "item_id": "rs_1", "summary_index": 0, "delta": "Read "},
        {"type": "response.reasoning_summary_text.delta", "item_id": "rs_1", "summary_index": 0, "delta": "it."},
        # a part without its item id: it belongs to the reasoning item being streamed
        {"type": "response.reasoning_summary_text.delta", "summary_index": 1, "delta": "Wrote."},
        {"type": "response.reasoning_summary_text.delta", "item_id": "rs_1", "summary_index": [1], "delta": "!"},
        {"type": "response.output_item.added", "output_index": 1, "item": message("msg_r", None, "in_progress")},
        {"type": "response.output_text.delta", "item_id": "msg_r", "delta": "Hi."},
        {"type": "response.completed", "response": {"status": "completed", "output": [message("msg_r")]}}),
        "text/event-stream"))
    events = ask_streamed(client, StreamState())
    done = events[-1][1]
    assert done.text == "Hi." and done.reasoning == "Read it.!\n\nWrote."
    assert [v for k, v in events if k == "reasoning"] == ["Read ", "it.", "\n\nWrote."]  # then "!" is a correction


def test_a_summary_sent_only_whole_is_yielded_once_and_kept_without_a_final_response(client, fake):
    fake.queue(raw(200, sse_body(
        {"type": "response.output_item.done", "output_index": 0,
         "item": {"type": "reasoning", "id": "rs_2", "summary": ["plain string", {"type": "summary_text", "text": "part"}]}},
        {"type": "response.output_item.added", "output_index": 1, "item": message("msg_w", None, "in_progress")},
        {"type": "response.output_text.delta", "item_id": "msg_w", "delta": "Words."},
        {"type": "response.reasoning_summary_text.done", "item_id": "rs_2", "summary_index": 1, "text": "part"},
        {"type": "response.completed", "response": None}), "text/event-stream"))
    events = ask_streamed(client, StreamState())
    done = events[-1][1]
    assert (done.item_id, done.text, done.reasoning) == ("msg_w", "Words.", "plain string\n\npart")
    assert [v for k, v in events if k == "reasoning"] == ["plain string\n\npart"]


def test_reply_parsing_reads_both_summary_shapes_and_skips_junk():
    body = {"status": "completed", "output": [
        {"type": "reasoning", "id": "rs_1", "summary": ["plain", {"type": "summary_text", "text": "typed"},
                                                        {"type": "other", "text": "no"}, 5, ""]},
        {"type": "reasoning", "id": "rs_2", "summary": "not a list"},
        message("msg_1", "answer")]}
    got = reply_from_response(body)
    assert got.reasoning == "plain\n\ntyped" and got.text == "answer"
    assert reply_from_response({"status": "completed", "output": [message("msg_1")]}).reasoning is None


def test_bytes_already_buffered_count_as_arrived_even_a_lone_line_break():
    """`StreamState.ready` on a body that is not chunked (it ends when the connection closes): the
    blank line that ends an SSE event with CRLF line breaks may be all that sits in the reader's
    buffer. It is part of the reply, so reading on must not wait for more to come first (that
    would hold the event back until the upstream's next bytes)."""
    import socket
    from types import SimpleNamespace

    from webapp.openrouter import StreamState

    ours, upstream = socket.socketpair()
    try:
        reader = ours.makefile("rb")  # http.client's reader is the same: buffered, over a SocketIO
        raw = SimpleNamespace(_fp=SimpleNamespace(fp=reader))
        upstream.sendall(b"data: x\r\n\r\n")
        assert reader.readline() == b"data: x\r\n"  # the rest, "\r\n", now waits in the buffer
        assert StreamState().ready(raw)
        assert reader.read1(65536) == b"\r\n"
        assert not StreamState().ready(raw)  # nothing buffered, nothing on the socket
    finally:
        ours.close()
        upstream.close()

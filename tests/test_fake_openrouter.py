"""The fake OpenRouter itself: if it is not strict and faithful, every app test built on it proves less."""

import json
import threading
import time

import pytest
import requests

from tests.fake_openrouter import (MODELS, TINY_MODEL, FakeOpenRouter, error, hang, no_message, raw, reply,
                                   stream_error)

MODEL = "openai/o4-mini"


@pytest.fixture(scope="module")
def server():
    with FakeOpenRouter() as fake:
        yield fake


@pytest.fixture
def fake(server):
    server.reset()
    return server


def user(text):
    return {"type": "message", "role": "user", "content": [{"type": "input_text", "text": text}]}


def assistant(item_id, text="earlier answer", status="completed", **extra):
    return {"type": "message", "role": "assistant", "id": item_id, "status": status,
            "content": [{"type": "output_text", "text": text, "annotations": []}], **extra}


def post(fake, items=None, key=True, model=MODEL, **fields):
    body = {"model": model, "input": items if items is not None else [user("hi")], **fields}
    headers = {"Authorization": f"Bearer {fake.api_key}"} if key else {}
    return requests.post(fake.base_url + "/responses", json=body, headers=headers,
                         stream=bool(fields.get("stream")), timeout=5)


def sse(response):
    """Yield ("comment", text) or ("data", parsed JSON / "[DONE]") as they arrive."""
    for line in response.iter_lines(chunk_size=1, decode_unicode=True):
        if line.startswith(":"):
            yield "comment", line[1:].strip()
        elif line.startswith("data: "):
            yield "data", line[6:] if line[6:] == "[DONE]" else json.loads(line[6:])


def data_events(response):
    return [value for kind, value in sse(response) if kind == "data"]


def test_default_reply_has_reasoning_then_message_with_issued_id(fake):
    body = post(fake).json()
    assert body["object"] == "response" and body["model"] == MODEL and body["status"] == "completed"
    assert body["id"].startswith("resp_") and body["incomplete_details"] is None
    assert [item["type"] for item in body["output"]] == ["reasoning", "message"]
    assert body["output"][0]["summary"][0]["type"] == "summary_text"
    message = body["output"][1]
    assert message["id"].startswith("msg_") and message["id"] in fake.issued_ids
    assert message["content"] == [{"type": "output_text", "text": "Reply 1: hi", "annotations": []}]
    assert set(body["usage"]) >= {"input_tokens", "output_tokens", "output_tokens_details", "total_tokens"}
    assert isinstance(body["usage"]["cost"], float)
    # The issued id is accepted back on the next turn, and the default text counts user turns.
    second = post(fake, [user("hi"), assistant(message["id"]), user("again")]).json()
    assert second["output"][1]["content"][0]["text"] == "Reply 2: again"
    assert [r["accepted"] for r in fake.requests] == [True, True] and fake.rejections == []


def test_incomplete_and_no_message_and_raw_bodies(fake):
    fake.queue(reply("cut", status="incomplete", usage=False), no_message(), raw(502, "<html>Bad</html>"))
    cut = post(fake).json()
    assert cut["incomplete_details"] == {"reason": "max_output_tokens"} and cut["usage"] is None
    assert cut["output"][1]["status"] == "incomplete"
    assert [item["type"] for item in post(fake).json()["output"]] == ["reasoning"]
    page = post(fake)
    assert page.status_code == 502 and page.text == "<html>Bad</html>"
    assert page.headers["Content-Type"] == "text/html"


def test_stream_events_arrive_in_order(fake):
    fake.queue(reply("Hello streaming world"))
    response = post(fake, stream=True)
    assert response.headers["Content-Type"] == "text/event-stream"
    assert response.headers["Transfer-Encoding"] == "chunked"
    seen = list(sse(response))
    assert seen[0] == ("comment", "OPENROUTER PROCESSING")
    events = [value for kind, value in seen if kind == "data"]
    assert events[-1] == "[DONE]"
    types = [e["type"] for e in events[:-1]]
    assert types[:2] == ["response.created", "response.in_progress"]
    assert types.index("response.output_item.added") < types.index("response.output_text.delta")
    assert types[-2:] == ["response.output_item.done", "response.completed"]
    numbers = [e["sequence_number"] for e in events[:-1]]
    assert numbers == sorted(set(numbers))
    deltas = [e["delta"] for e in events if isinstance(e, dict) and e["type"] == "response.output_text.delta"]
    assert len(deltas) > 1 and "".join(deltas) == "Hello streaming world"
    item = events[-3]["item"]
    assert item["status"] == "completed" and item["id"] in fake.issued_ids
    assert events[-2]["response"]["output"][-1] == item and events[-2]["response"]["usage"]


def test_incomplete_stream_ends_with_response_incomplete(fake):
    fake.queue(reply("cut", status="incomplete", chunks=["c", "ut"]))
    events = data_events(post(fake, stream=True))
    assert events[-2]["type"] == "response.incomplete" and events[-1] == "[DONE]"
    assert events[-2]["response"]["incomplete_details"] == {"reason": "max_output_tokens"}


def test_unchunked_stream_closes_the_connection(fake):
    with FakeOpenRouter(api_key=fake.api_key, chunked=False) as plain:
        response = post(plain, stream=True)
        assert response.headers["Connection"] == "close" and "Transfer-Encoding" not in response.headers
        assert data_events(response)[-1] == "[DONE]"


def test_keepalives_fill_a_long_silence(fake):
    fake.queue(reply("late", delay=0.35, keepalive_every=0.1))
    comments = 0
    for kind, value in sse(post(fake, stream=True)):
        if kind == "comment":
            comments += 1
        elif value["type"] == "response.output_text.delta":
            break
    assert comments >= 1 + 3  # the opening one, then one per 0.1 s of silence


@pytest.mark.parametrize("key", [False, "wrong"])
def test_a_missing_or_wrong_key_is_a_401_and_consumes_nothing(fake, key):
    fake.queue(error(500, "queued"))
    if key:
        response = requests.post(fake.base_url + "/responses", json={"model": MODEL, "input": "hi"},
                                 headers={"Authorization": "Bearer sk-or-v1-other"}, timeout=5)
    else:
        response = post(fake, key=False)
    assert response.status_code == 401 and response.json()["error"]["code"] == 401
    assert fake.requests[0]["accepted"] is False and fake.rejections[0].startswith("401")
    assert post(fake).status_code == 500  # the queued behaviour was still waiting


@pytest.mark.parametrize("drop", ["id", "status"])
def test_an_assistant_item_needs_id_and_status(fake, drop):
    item_id = post(fake).json()["output"][1]["id"]
    item = assistant(item_id)
    del item[drop]
    response = post(fake, [user("hi"), item, user("again")])
    assert response.status_code == 400 and response.json()["error"]["code"] == 400
    assert len(fake.rejections) == 1 and f"'{drop}'" in fake.rejections[0]
    assert fake.requests[-1]["rejection"] == fake.rejections[0]


def test_an_invented_assistant_id_is_rejected(fake):
    response = post(fake, [user("hi"), assistant("msg_madeup"), user("again")])
    assert response.status_code == 400 and "invented" in fake.rejections[0]


def test_extra_keys_on_an_item_are_rejected(fake):
    response = post(fake, [dict(user("hi"), created_at=123)])
    assert response.status_code == 400 and "created_at" in fake.rejections[0]


@pytest.mark.parametrize("items,fields", [
    ("hi", {"store": True}),
    ("hi", {"previous_response_id": "resp_1"}),
    ("hi", {"max_output_tokens": 0}),
    ("hi", {"stream": "yes"}),
    ("hi", {"model": ""}),
    ([], {}),
    ([{"type": "message", "role": "user", "content": [{"type": "text", "text": "x"}]}], {}),
    ([{"type": "message", "role": "robot", "content": "x"}], {}),
    ([user("a"), {"type": "message", "role": "system", "content": "be brief"}], {}),
])
def test_other_requests_the_real_api_refuses(fake, items, fields):
    assert post(fake, items, **fields).status_code == 400 and len(fake.rejections) == 1


def test_reasoning_items_and_system_messages_are_allowed(fake):
    items = [{"type": "message", "role": "system", "content": "be brief"},
             {"type": "reasoning", "id": "rs_1", "summary": []}, user("hi")]
    assert post(fake, items, instructions="x", max_output_tokens=50).status_code == 200


def test_errors_carry_the_openrouter_shape_and_retry_after(fake):
    fake.queue(error(429, "Rate limited", retry_after=3),
               error(403, "Flagged", metadata={"reasons": ["violence"]}))
    limited = post(fake, stream=True)
    assert limited.status_code == 429 and limited.headers["Retry-After"] == "3"
    assert limited.headers["Content-Type"] == "application/json"
    assert limited.json() == {"error": {"code": 429, "message": "Rate limited"}}
    flagged = post(fake)
    assert flagged.json()["error"]["metadata"] == {"reasons": ["violence"]}
    assert "Retry-After" not in flagged.headers and fake.rejections == []


def test_hang_sends_nothing(fake):
    fake.queue(hang(0.5))
    with pytest.raises(requests.ReadTimeout):
        requests.post(fake.base_url + "/responses", json={"model": MODEL, "input": "hi"},
                      headers={"Authorization": f"Bearer {fake.api_key}"}, timeout=(2, 0.2))


@pytest.mark.parametrize("style", ["flat", "nested", "failed"])
def test_stream_error_styles(fake, style):
    fake.queue(stream_error(after_chunks=2, style=style))
    events = data_events(post(fake, stream=True))
    deltas = [e["delta"] for e in events if isinstance(e, dict) and e["type"] == "response.output_text.delta"]
    assert len(deltas) == 2 and "partial answer text here".startswith("".join(deltas))
    added = [e for e in events if isinstance(e, dict) and e["type"] == "response.output_item.added"]
    assert added[-1]["item"]["id"] in fake.issued_ids
    problem = {"code": "server_error", "message": "Provider disconnected"}
    if style == "flat":
        assert events[-1] == {"type": "error", "sequence_number": events[-1]["sequence_number"],
                              **problem, "param": None}
    elif style == "nested":
        assert events[-1]["type"] == "error" and events[-1]["error"] == problem
    else:
        assert events[-1] == "[DONE]" and events[-2]["type"] == "response.failed"
        assert events[-2]["response"]["status"] == "failed" and events[-2]["response"]["error"] == problem


@pytest.mark.parametrize("terminal", ["response.failed", "response.completed", "response.incomplete"])
def test_a_stream_error_carries_its_own_message_in_any_terminal_event(fake, terminal):
    fake.queue(stream_error(after_chunks=0, style="failed", message="x" * 5000, terminal=terminal))
    events = data_events(post(fake, stream=True))
    assert events[-1] == "[DONE]" and events[-2]["type"] == terminal
    assert not any(e["type"] == "response.output_text.delta" for e in events[:-1])
    assert events[-2]["response"]["status"] == "failed"
    assert events[-2]["response"]["error"] == {"code": "server_error", "message": "x" * 5000}
    fake.queue(stream_error(message="gone away"))
    flat = post(fake)  # a non-stream request gets the message as an HTTP error
    assert flat.status_code == 502 and flat.json()["error"]["message"] == "gone away"


def test_stream_error_refuses_unknown_terminals():
    with pytest.raises(ValueError):
        stream_error(style="failed", terminal="response.done")
    with pytest.raises(ValueError):
        stream_error(style="flat", terminal="response.completed")


def test_a_truncated_stream_just_stops(fake):
    fake.queue(stream_error(after_chunks=1, style="truncated"), stream_error())
    seen = []
    with pytest.raises(requests.exceptions.ChunkedEncodingError):
        for _, value in sse(post(fake, stream=True)):
            seen.append(value)
    assert seen[-1]["type"] == "response.output_text.delta" and "[DONE]" not in seen
    assert post(fake).status_code == 502  # a stream_error meeting a non-stream request


def test_gate_holds_the_stream_after_the_first_delta(fake):
    gate = threading.Event()
    fake.queue(reply("abc", gate=gate, chunks=["a", "b", "c"]))
    events = sse(post(fake, stream=True))
    first = next(v for k, v in events if k == "data" and v["type"] == "response.output_text.delta")
    assert first["delta"] == "a"
    rest = []
    reader = threading.Thread(target=lambda: rest.extend(v for k, v in events if k == "data"))
    reader.start()
    reader.join(0.3)
    assert reader.is_alive() and rest == []  # nothing more until the gate opens
    gate.set()
    reader.join(5)
    assert [e["delta"] for e in rest if e != "[DONE]" and e["type"].endswith("delta")] == ["b", "c"]
    assert rest[-1] == "[DONE]"


def test_a_client_closing_mid_stream_is_counted(fake):
    fake.queue(reply("word " * 100, chunk_delay=0.01))
    response = post(fake, stream=True)
    next(v for k, v in sse(response) if k == "data")
    response.close()
    deadline = time.monotonic() + 3
    while fake.disconnects == 0 and time.monotonic() < deadline:
        time.sleep(0.02)
    assert fake.disconnects == 1


def test_concurrent_requests_are_all_in_flight(fake):
    fake.queue(*[reply(delay=0.4) for _ in range(4)])
    threads = [threading.Thread(target=post, args=(fake,)) for _ in range(4)]
    for thread in threads:
        thread.start()
    assert fake.wait_for_requests(4, timeout=0.35)
    for thread in threads:
        thread.join()
    assert len(fake.requests) == 4 and not fake.wait_for_requests(5, timeout=0.01)


def test_models_and_unknown_paths(fake):
    models = requests.get(fake.base_url + "/models", timeout=5).json()["data"]
    assert [m["id"] for m in models] == ["openai/o4-mini", "openai/gpt-4o-mini"]
    assert models[0]["pricing"] == {"prompt": "0.0000011", "completion": "0.0000044"}
    missing = requests.get(fake.base_url + "/nope", timeout=5)
    assert missing.status_code == 404 and missing.json()["error"]["code"] == 404


def test_the_model_list_can_be_replaced_or_made_to_fail_and_reset_restores_it(fake):
    fake.models = {"data": MODELS["data"] + [TINY_MODEL]}
    assert [m["id"] for m in requests.get(fake.base_url + "/models", timeout=5).json()["data"]][-1] == "tiny/4k"
    fake.models_response = error(503, "No models", retry_after=2)
    down = requests.get(fake.base_url + "/models", timeout=5)
    assert down.status_code == 503 and down.headers["Retry-After"] == "2"
    fake.models_response = raw(200, "garbage", "application/json")
    assert requests.get(fake.base_url + "/models", timeout=5).text == "garbage"
    assert fake.model_fetches == 3 and fake.requests == []
    fake.reset()
    assert fake.model_fetches == 0 and fake.models_response is None and fake.models == MODELS
    assert fake.models is not MODELS  # a copy: a test changing it cannot change the default


def test_a_model_not_in_the_list_is_refused(fake):
    response = post(fake, model="openai/nope")
    assert response.status_code == 400 and "not a valid model ID" in response.json()["error"]["message"]
    fake.models = {"data": [TINY_MODEL]}
    assert post(fake).status_code == 400  # o4-mini is no longer listed
    assert post(fake, model="tiny/4k").status_code == 200 and len(fake.rejections) == 2


@pytest.mark.parametrize("model,fields", [
    ("openai/gpt-4o-mini", {"temperature": 0}), ("openai/gpt-4o-mini", {"temperature": 2}),
    ("openai/gpt-4o-mini", {"temperature": 0.7, "top_p": 0.9}),
    (MODEL, {"reasoning": {"effort": "minimal", "summary": "auto"}}),
    (MODEL, {"reasoning": {"effort": "high"}}), (MODEL, {"reasoning": {"summary": "detailed"}}),
    (MODEL, {"instructions": "Answer in French."}),
])
def test_options_the_model_supports_are_accepted(fake, model, fields):
    assert post(fake, model=model, **fields).status_code == 200


@pytest.mark.parametrize("model,fields,words", [
    (MODEL, {"temperature": 0.5}, "not supported"),
    ("openai/gpt-4o-mini", {"reasoning": {"effort": "low"}}, "not supported"),
    ("openai/gpt-4o-mini", {"temperature": 2.1}, "from 0 to 2"),
    ("openai/gpt-4o-mini", {"temperature": -1}, "from 0 to 2"),
    ("openai/gpt-4o-mini", {"temperature": "1"}, "from 0 to 2"),
    ("openai/gpt-4o-mini", {"temperature": True}, "from 0 to 2"),
    ("openai/gpt-4o-mini", {"top_p": 1.5}, "from 0 to 1"),
    (MODEL, {"reasoning": "high"}, "must be an object"),
    (MODEL, {"reasoning": {"effort": "max"}}, "reasoning.effort"),
    (MODEL, {"reasoning": {"effort": "low", "summary": "all"}}, "reasoning.summary"),
    (MODEL, {"reasoning": {"effort": "low", "depth": 3}}, "unknown keys"),
    (MODEL, {"instructions": ["be brief"]}, "instructions"),
])
def test_options_are_checked_like_the_real_api(fake, model, fields, words):
    response = post(fake, model=model, **fields)
    assert response.status_code == 400 and words in response.json()["error"]["message"]
    assert len(fake.rejections) == 1


def test_input_and_output_past_the_context_length_are_refused(fake):
    fake.models = {"data": [TINY_MODEL]}
    fits = post(fake, [user("x" * 4000)], model="tiny/4k", instructions="y" * 96, max_output_tokens=3071)
    assert fits.status_code == 200  # (4000 + 96) / 4 = 1024 tokens in, 3071 out, 4095 of 4096
    too_long = post(fake, [user("x" * 4000)], model="tiny/4k", instructions="y" * 100, max_output_tokens=3072)
    message = too_long.json()["error"]["message"]
    assert too_long.status_code == 400 and message.startswith(
        "This endpoint's maximum context length is 4096 tokens. However, you requested about 4097 tokens")
    assert "context length" in fake.rejections[0]
    assert post(fake, "z" * 20000, model="tiny/4k").status_code == 400  # a plain string input counts too
    fake.models = {"data": [{"id": "big/ctx", "top_provider": {"context_length": 100}, "supported_parameters": []}]}
    assert post(fake, "z" * 404, model="big/ctx").status_code == 400  # top_provider's length when the model has none


def test_reasoning_summary_parts_stream_and_end_up_in_the_response(fake):
    fake.queue(reply("ok", reasoning=["First part here.", "Second."]))
    events = [e for e in data_events(post(fake, stream=True)) if e != "[DONE]"]
    deltas = {}
    for e in events:
        if e["type"] == "response.reasoning_summary_text.delta":
            deltas[e["summary_index"]] = deltas.get(e["summary_index"], "") + e["delta"]
    assert deltas == {0: "First part here.", 1: "Second."}
    types = [e["type"] for e in events]
    assert types.count("response.reasoning_summary_part.added") == 2
    assert types.count("response.reasoning_summary_text.done") == 2
    summary = events[-1]["response"]["output"][0]["summary"]
    assert summary == [{"type": "summary_text", "text": "First part here."}, {"type": "summary_text", "text": "Second."}]
    fake.queue(reply("ok", reasoning="One."))
    assert post(fake).json()["output"][0]["summary"] == [{"type": "summary_text", "text": "One."}]

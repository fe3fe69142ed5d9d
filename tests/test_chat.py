"""The chat loop through Flask's test client, against the fake OpenRouter over real HTTP."""

import pytest

from tests.conftest import alert, messages, textarea
from tests.fake_openrouter import error, hang, no_message, raw, reply


def send(client, text):
    return client.post("/", data={"message": text})


def page(client):
    response = client.get("/")
    assert response.status_code == 200
    return response.get_data(as_text=True)


def test_an_empty_chat_has_a_message_box_and_a_send_button(client):
    html = page(client)
    assert '<form id="composer" class="composer" method="post"' in html
    assert 'name="message"' in html and ">Send</button>" in html
    assert messages(html) == []


def test_three_turns_carry_the_full_correctly_shaped_history(client, fake):
    for text in ["first", "second", "third"]:
        response = send(client, text)
        assert response.status_code == 303 and response.headers["Location"].startswith("/")
    shown = messages(page(client))
    assert shown == [("user", "first"), ("assistant", "Reply 1: first"),
                     ("user", "second"), ("assistant", "Reply 2: second"),
                     ("user", "third"), ("assistant", "Reply 3: third")]
    bodies = [r["body"] for r in fake.requests]
    assert [len(b["input"]) for b in bodies] == [1, 3, 5]
    last = bodies[-1]["input"]
    assert last[1]["id"] in fake.issued_ids and last[1]["status"] == "completed"
    assert last[1]["content"] == [{"type": "output_text", "text": "Reply 1: first", "annotations": []}]
    assert bodies[-1]["model"] == "openai/o4-mini" and bodies[-1]["max_output_tokens"] == 9000


def test_the_stored_assistant_id_is_the_message_items_not_the_response_id(client, fake):
    send(client, "hello")
    send(client, "again")
    assistant = fake.requests[1]["body"]["input"][1]
    assert assistant["id"].startswith("msg_")


def test_line_breaks_and_markup_in_a_message_are_kept_as_text(client):
    send(client, "line one\nline <b>two</b>")
    html = page(client)
    assert ("user", "line one\nline <b>two</b>") in messages(html)
    assert "<b>two</b>" not in html


def test_two_browsers_have_separate_conversations(app, fake):
    alice, bob = app.test_client(), app.test_client()
    send(alice, "I am Alice")
    send(bob, "I am Bob")
    assert [t for _, t in messages(page(alice))] == ["I am Alice", "Reply 1: I am Alice"]
    assert [t for _, t in messages(page(bob))] == ["I am Bob", "Reply 1: I am Bob"]
    assert len(fake.requests[1]["body"]["input"]) == 1


def test_history_survives_an_app_restart(make_app, fake):
    first = make_app()
    client = first.test_client()
    send(client, "remember me")
    cookie = client.get_cookie("session")
    assert cookie is not None
    second = make_app().test_client()
    second.set_cookie("session", cookie.value)
    assert messages(page(second))[0] == ("user", "remember me")
    send(second, "still there?")
    assert len(fake.requests[-1]["body"]["input"]) == 3


def test_new_chat_empties_the_history(client, fake):
    send(client, "old topic")
    assert client.post("/new").status_code == 303
    assert messages(page(client)) == []
    send(client, "new topic")
    assert len(fake.requests[-1]["body"]["input"]) == 1


def test_an_incomplete_reply_is_stored_as_such_and_the_page_says_it_was_cut_off(client, fake):
    fake.queue(reply("Half an ans", status="incomplete"))
    send(client, "long question")
    html = page(client)
    assert ("assistant", "Half an ans") in messages(html)
    assert "cut off" in html
    send(client, "go on")
    assert fake.requests[-1]["body"]["input"][1]["status"] == "incomplete"


ERRORS = [
    (error(400, "This model's maximum context length is 8192 tokens"), "maximum context length"),
    (error(401, "No auth credentials found"), "OPENROUTER_API_KEY"),
    (error(402, "Insufficient credits"), "out of credits"),
    (error(403, "Input was flagged", metadata={"reasons": ["violence"]}), "flagged"),
    (error(408, "Timed out"), "too long"),
    (error(429, "Rate limited", retry_after=7), "7 seconds"),
    (error(500, "Internal error"), "unavailable"),
    (error(502, "Provider returned error"), "unavailable"),
    (error(503, "No providers available"), "unavailable"),
    (raw(200, "<html>definitely not json</html>"), "could not read"),
    (raw(502, "<html>Bad gateway</html>"), "unavailable"),
    (no_message(), "without an answer"),
]


@pytest.mark.parametrize("behaviour,words", ERRORS, ids=[f"{b}"[:40] for b, _ in ERRORS])
def test_an_upstream_failure_keeps_the_text_and_history_and_the_next_turn_works(
        client, fake, behaviour, words):
    send(client, "before")
    fake.queue(behaviour)
    response = send(client, "my precious words")
    assert response.status_code == 303
    html = page(client)
    assert words in alert(html)
    assert textarea(html) == "my precious words"
    assert ">Retry</button>" in html
    assert messages(html) == [("user", "before"), ("assistant", "Reply 1: before")]
    send(client, "my precious words")
    assert messages(page(client))[-1] == ("assistant", "Reply 2: my precious words")
    assert alert(page(client)) is None


def test_a_read_timeout_is_a_clear_message(make_app, fake):
    client = make_app(OPENROUTER_READ_TIMEOUT=0.5).test_client()
    fake.queue(hang(3))
    send(client, "slow one")
    html = page(client)
    assert "too long" in alert(html) and textarea(html) == "slow one"


def test_connection_refused_is_a_clear_message(make_app, fake):
    client = make_app(OPENROUTER_BASE_URL="http://127.0.0.1:9/api/v1").test_client()
    send(client, "anyone there?")
    html = page(client)
    assert "Could not reach OpenRouter" in alert(html) and textarea(html) == "anyone there?"
    assert fake.requests == []


def test_a_missing_key_says_how_to_set_it_and_calls_nobody(make_app, fake):
    client = make_app(OPENROUTER_API_KEY="").test_client()
    html = page(client)
    assert "OPENROUTER_API_KEY" in html
    response = send(client, "hello?")
    html = response.get_data(as_text=True)
    assert response.status_code == 503
    assert "OPENROUTER_API_KEY" in alert(html) and textarea(html) == "hello?"
    assert fake.requests == []


@pytest.mark.parametrize("text", ["", "   \n\t  "])
def test_an_empty_message_is_not_sent_and_a_hint_says_why(client, fake, text):
    response = send(client, text)
    assert response.status_code == 400
    assert "empty message" in response.get_data(as_text=True)
    assert fake.requests == [] and messages(page(client)) == []


def test_a_message_over_the_limit_gets_a_413_page_and_nothing_is_stored(make_app, fake):
    client = make_app(MAX_MESSAGE_CHARS=50).test_client()
    response = send(client, "x" * 51)
    assert response.status_code == 413
    assert "limit is 50" in response.get_data(as_text=True)
    assert fake.requests == [] and messages(page(client)) == []


def test_a_body_over_max_content_length_gets_a_413_page(make_app, fake):
    client = make_app(MAX_CONTENT_LENGTH=1000).test_client()
    response = send(client, "y" * 5000)
    assert response.status_code == 413
    assert "too large" in response.get_data(as_text=True).lower()
    assert fake.requests == [] and messages(page(client)) == []


def test_unknown_pages_and_methods_get_clear_pages(client):
    assert client.get("/nope").status_code == 404
    assert client.put("/").status_code == 405


def test_the_api_key_appears_in_no_body_header_or_cookie(client, fake):
    pages = [send(client, "hi"), client.get("/"), client.get("/static/app.js"), client.get("/nope")]
    fake.queue(error(401, f"bad key {fake.api_key}"))
    pages += [send(client, "again"), client.get("/"), send(client, "")]
    for response in pages:
        assert fake.api_key not in response.get_data(as_text=True)
        assert fake.api_key not in str(response.headers)
    assert all(fake.api_key not in c.value for c in client._cookies.values())


def test_the_session_cookie_holds_only_an_id(client):
    response = send(client, "secret message text")
    cookie = response.headers["Set-Cookie"]
    assert "HttpOnly" in cookie and "SameSite=Lax" in cookie and "Secure" not in cookie
    assert "secret" not in cookie.split(";")[0]


def test_regenerate_and_edit_work_without_javascript(client, fake):
    send(client, "first")
    send(client, "second")
    fake.queue(reply("another take"))
    assert client.post("/", data={"message": "", "regenerate": "1"}).status_code == 303
    assert [t for _, t in messages(page(client))] == ["first", "Reply 1: first", "second", "another take"]
    editing = client.post("/edit", follow_redirects=True).get_data(as_text=True)
    assert textarea(editing) == "second" and 'name="edit" value="1"' in editing
    client.post("/", data={"message": "second, better", "edit": "1"})
    assert [t for _, t in messages(page(client))] == [
        "first", "Reply 1: first", "second, better", "Reply 2: second, better"]


def test_a_failed_regenerate_keeps_the_old_reply(client, fake):
    send(client, "question")
    fake.queue(error(502, "Provider returned error"))
    client.post("/", data={"message": "", "regenerate": "1"})
    html = page(client)
    assert messages(html) == [("user", "question"), ("assistant", "Reply 1: question")]
    assert "unavailable" in alert(html)
    assert textarea(html) == "question" and 'name="edit" value="1"' in html
    client.post("/", data={"message": "question", "edit": "1"})  # Retry replaces, not duplicates
    assert [t for _, t in messages(page(client))] == ["question", "Reply 1: question"]
    assert len(fake.requests[-1]["body"]["input"]) == 1

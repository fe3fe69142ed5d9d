"""The chat loop through Flask's test client, against the fake OpenRouter over real HTTP."""

import re

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


def test_new_chat_opens_an_empty_conversation_and_keeps_the_old_one(client, fake):
    send(client, "old topic")
    new = client.post("/new")
    assert new.status_code == 303
    blank = client.get(new.headers["Location"]).get_data(as_text=True)
    assert messages(blank) == [] and "old topic" in blank  # listed in the sidebar, not shown
    sent = client.post("/c/new", data={"message": "new topic"})
    assert sent.status_code == 303 and sent.headers["Location"].startswith("/c/")
    assert len(fake.requests[-1]["body"]["input"]) == 1
    assert [t for _, t in messages(page(client))] == ["new topic", "Reply 1: new topic"]


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
    # A context-length error offers the ways out of a full context instead of a plain Retry.
    way_out = ">Drop oldest turns</button>" if "context" in words else ">Retry</button>"
    assert way_out in html
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


def test_a_body_over_the_request_limit_gets_a_413_page(make_app, fake):
    # A send's limit is MAX_CONTENT_LENGTH plus the files a message may carry (settings.upload_limit).
    client = make_app(MAX_CONTENT_LENGTH=1000, MAX_ATTACHMENTS=1, MAX_ATTACHMENT_BYTES=1000).test_client()
    response = send(client, "y" * 70_000)
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


def last_reply(html):
    """The reply an Edit or Regenerate of the last turn on this page names as the one it replaces
    (every reply has its Regenerate: the last one's)."""
    found = re.findall(r'name="regenerate" value="([^"]+)"', html) or re.findall(r'name="edit" value="([^"]+)"', html)
    return found[-1]


def test_regenerate_and_edit_work_without_javascript(client, fake):
    send(client, "first")
    send(client, "second")
    fake.queue(reply("another take"))
    shown = page(client)
    assert client.post("/", data={"message": "", "regenerate": last_reply(shown)}).status_code == 303
    assert [t for _, t in messages(page(client))] == ["first", "Reply 1: first", "second", "another take"]
    editing = client.post("/edit", follow_redirects=True).get_data(as_text=True)
    assert textarea(editing) == "second" and f'name="edit" value="{last_reply(page(client))}"' in editing
    assert re.search(r'<button[^>]*>Cancel</button>', editing)
    client.post("/", data={"message": "second, better", "edit": last_reply(editing)})
    assert [t for _, t in messages(page(client))] == [
        "first", "Reply 1: first", "second, better", "Reply 2: second, better"]
    assert 'name="edit" value=""' in page(client)  # edit mode ends with the send


def test_an_edit_from_a_page_that_went_stale_replaces_nothing_and_keeps_the_text(client, fake):
    """The Edit trap: an edit names the reply it replaces; if that reply is no longer in the branch on
    screen (another tab switched to another version meanwhile), it is refused and the text kept."""
    send(client, "first")
    client.post("/", data={"message": "first, v2", "edit": last_reply(page(client))})  # two versions
    editing = client.post("/edit", follow_redirects=True).get_data(as_text=True)  # edits v2's reply
    client.post(f"/c/{conversation_id(client)}/versions", data={"at": "0", "to": "0"})  # another tab: v1
    refused = client.post("/", data={"message": "v2, edited", "edit": last_reply(editing)})
    assert refused.status_code == 409
    html = refused.get_data(as_text=True)
    assert textarea(html) == "v2, edited" and "changed" in alert(html)
    assert [t for _, t in messages(page(client))] == ["first", "Reply 1: first"]
    assert len(fake.requests) == 2  # nothing went upstream for the refused edit
    stale_regenerate = client.post("/", data={"message": "", "regenerate": last_reply(editing)})
    assert stale_regenerate.status_code == 409 and len(fake.requests) == 2


def test_an_edit_of_an_earlier_message_keeps_what_came_after_as_the_previous_version(client, fake):
    send(client, "first")
    editing = client.post("/edit", follow_redirects=True).get_data(as_text=True)
    send(client, "sent from another tab")  # the edited message is not the last one any more
    client.post("/", data={"message": "first, edited", "edit": last_reply(editing)})
    assert [t for _, t in messages(page(client))] == ["first, edited", "Reply 1: first, edited"]
    assert len(fake.requests[-1]["body"]["input"]) == 1  # only the branch on screen goes upstream
    client.post(f"/c/{conversation_id(client)}/versions", data={"at": "0", "to": "0"})
    assert [t for _, t in messages(page(client))] == [
        "first", "Reply 1: first", "sent from another tab", "Reply 2: sent from another tab"]


def conversation_id(client):
    return re.search(r'data-conversation="([\w-]+)"', page(client)).group(1)


def test_cancel_leaves_edit_mode_without_javascript(client, fake):
    send(client, "first")
    client.post("/edit")
    cancelled = client.post("/edit/cancel", data={"message": "first", "edit": "x"}, follow_redirects=True)
    html = cancelled.get_data(as_text=True)
    assert 'name="edit" value=""' in html and textarea(html) == ""
    assert re.search(r'data-action="cancel"\s+hidden', html)


def test_a_failed_regenerate_keeps_the_old_reply(client, fake):
    send(client, "question")
    fake.queue(error(502, "Provider returned error"))
    client.post("/", data={"message": "", "regenerate": last_reply(page(client))})
    html = page(client)
    assert messages(html) == [("user", "question"), ("assistant", "Reply 1: question")]
    assert "unavailable" in alert(html)
    bound = last_reply(html)
    assert textarea(html) == "question" and f'name="edit" value="{bound}"' in html
    client.post("/", data={"message": "question", "edit": bound})  # Retry replaces, not duplicates
    assert [t for _, t in messages(page(client))] == ["question", "Reply 1: question"]
    assert len(fake.requests[-1]["body"]["input"]) == 1


@pytest.mark.parametrize("status, kind", [(401, "auth"), (402, "credits"), (429, "rate_limited"),
                                          (503, "unavailable")])
def test_an_upstream_failure_is_logged_once_for_the_operator(client, fake, caplog, status, kind):
    fake.queue(error(status, f"refused {fake.api_key}"))
    with caplog.at_level("INFO"):
        send(client, "a private question")
    lines = [r for r in caplog.records if "upstream failure" in r.getMessage()]
    assert len(lines) == 1 and lines[0].levelname == "WARNING"
    line = lines[0].getMessage()
    assert f"kind={kind}" in line and f"status={status}" in line and "model=openai/o4-mini" in line
    assert "turn=" in line
    everything = "\n".join(r.getMessage() for r in caplog.records)
    assert fake.api_key not in everything and "a private question" not in everything


def test_the_page_title_comes_from_the_conversation_and_the_favicon_answers(client, fake):
    assert "<title>Chat</title>" in page(client)
    send(client, "What is   the capital\nof France?")
    assert "<title>What is the capital of France? · Chat</title>" in page(client)
    icon = client.get("/favicon.ico")
    assert icon.status_code == 200 and icon.mimetype == "image/svg+xml"


def test_an_anonymous_visit_is_stored_briefly_and_a_conversation_for_the_full_lifetime(client, fake, tmp_path):
    """Bots that only GET / must not grow the store for a month each; a real conversation must last."""
    import struct
    import time

    def expiries():
        folder = tmp_path / "sessions"
        return sorted(struct.unpack("I", f.read_bytes()[:4])[0] - time.time()
                      for f in folder.iterdir() if f.is_file())

    client.get("/")
    assert [3590 < e <= 3600 for e in expiries()] == [True]  # one session file (its CSRF token), an hour
    send(client, "hello")
    assert all(e > 29 * 86400 for e in expiries())  # session and conversation: the full 30 days


def test_a_first_send_stores_the_new_session_once_and_pages_after_it_store_none(client, fake, monkeypatch):
    """The new id is stored at once (a reply may take minutes); nothing after that rewrites it the same."""
    cache = client.application.session_interface.cache
    writes = []
    original = cache.set
    monkeypatch.setattr(cache, "set", lambda key, *a, **k: writes.append(key) or original(key, *a, **k))
    page(client)  # an anonymous session: stored, for its CSRF token
    writes.clear()
    send(client, "hello")
    page(client)
    page(client)
    assert len([key for key in writes if key.startswith("session:")]) == 1
    stored = cache.get(writes[0])
    assert "browser" in str(stored) and "day" in str(stored)  # kept alive without another write


def test_a_reply_is_rendered_once_when_it_settles_and_pages_reuse_it(client, fake, monkeypatch):
    """Render once: the page assembles stored fragments instead of running markdown on every view."""
    from webapp import render

    fake.queue(reply("Some **bold** words"))
    send(client, "render me")
    store = client.application.extensions["chat_store"]
    cid = re.search(r'href="/c/([\w-]+)" aria-current="page"', page(client)).group(1)
    meta = store.load(cid)["meta"][-1]
    assert meta["rv"] == render.VERSION and "<strong>bold</strong>" in meta["html"]
    assert "html" not in str(store.load(cid)["items"])  # never in what goes upstream

    def no_rendering(text):
        raise AssertionError("a stored reply was rendered again")

    monkeypatch.setattr(render, "markdown", no_rendering)
    assert "<strong>bold</strong>" in page(client)
    monkeypatch.setattr(render, "VERSION", render.VERSION + 1)  # a new renderer: render again
    with pytest.raises(AssertionError):
        page(client)


def test_static_files_have_versioned_urls_that_browsers_keep(client):
    """A repeat visit asks only for the page: the page's CSS and JS URLs carry the file's hash."""
    import hashlib
    import os

    html = page(client)
    urls = re.findall(r'(?:href|src)="(/static/[^"]+)"', html)
    assert {re.sub(r"\?.*", "", u) for u in urls} >= {"/static/app.css", "/static/code.css", "/static/app.js",
                                                      "/static/theme.js", "/static/favicon.svg"}
    root = os.path.dirname(client.application.static_folder.rstrip("/")) + "/static/"
    for url in urls:
        path, version = re.fullmatch(r"/static/([\w.-]+)\?v=([0-9a-f]{12})", url).groups()
        with open(root + path, "rb") as f:
            assert hashlib.sha256(f.read()).hexdigest()[:12] == version
        response = client.get(url)
        assert response.status_code == 200 and response.cache_control.max_age == 365 * 24 * 3600
        response.close()
    plain = client.get("/static/app.js")  # an unversioned URL may change: checked every time
    assert plain.cache_control.max_age != 365 * 24 * 3600
    plain.close()


def test_only_the_current_hash_of_a_static_file_is_cached_for_a_year(app, client):
    """An older release's hash, a made-up one or a name outside static/ never earns a year."""
    url = re.search(r'src="(/static/app\.js\?v=[0-9a-f]{12})"', page(client)).group(1)
    assert client.get(url).cache_control.max_age == 365 * 24 * 3600
    for wrong in ("/static/app.js?v=0123456789ab", "/static/app.js?v=bogus",
                  "/static/../webapp/__init__.py?v=0123456789ab"):
        response = client.get(wrong)
        assert response.cache_control.max_age != 365 * 24 * 3600, wrong
        assert "public" not in str(response.cache_control) or response.status_code != 200, wrong


def test_scripts_and_styles_go_gzip_compressed_to_a_browser_that_takes_it(client):
    """Most of a first visit's bytes are the script and the styles: compressed for a browser that
    says it takes gzip (the same bytes once decompressed, their own ETag, revalidated with a 304),
    as they are for any other client, and never for a range."""
    import gzip
    import os

    root = os.path.dirname(client.application.static_folder.rstrip("/")) + "/static/"
    for name in ("app.js", "app.css", "code.css"):
        url = re.search(rf'"(/static/{re.escape(name)}\?v=[0-9a-f]{{12}})"', page(client)).group(1)
        with open(root + name, "rb") as f:
            original = f.read()
        packed = client.get(url, headers={"Accept-Encoding": "gzip, deflate, br"})
        assert packed.status_code == 200 and packed.headers["Content-Encoding"] == "gzip"
        assert "Accept-Encoding" in packed.headers["Vary"]
        body = packed.get_data()
        assert int(packed.headers["Content-Length"]) == len(body) < len(original) / 2
        assert gzip.decompress(body) == original
        assert packed.cache_control.max_age == 365 * 24 * 3600
        again = client.get(url, headers={"Accept-Encoding": "gzip", "If-None-Match": packed.headers["ETag"]})
        assert again.status_code == 304 and not again.get_data()
        plain = client.get(url)  # no Accept-Encoding
        assert "Content-Encoding" not in plain.headers and plain.get_data() == original
        assert plain.headers["ETag"] != packed.headers["ETag"]
        assert client.get(url, headers={"Accept-Encoding": "gzip;q=0"}).get_data() == original
        part = client.get(url, headers={"Accept-Encoding": "gzip", "Range": "bytes=0-9"})
        assert part.status_code == 206 and part.get_data() == original[:10]


def test_a_static_file_never_carries_a_session_cookie(client):
    """Static files may sit in shared caches for a year: marking the session's day happens on pages."""
    send(client, "hello")
    with client.session_transaction() as stored:
        stored["day"] = 1  # marked long ago: the next request of a page marks it again
    response = client.get("/static/app.js?v=x")
    assert response.status_code == 200 and "Set-Cookie" not in response.headers
    assert "Set-Cookie" in client.get("/").headers  # a page does

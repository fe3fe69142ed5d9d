"""Production safety at the door: CSRF and same-origin checks, one session cookie, session ids issued
anew, security headers, trusted hosts, the access password, rate limits, turn ownership, the one
waiting place per conversation and the caps on running turns.

The Flask test client covers what one process decides; a real gunicorn covers what depends on
processes, threads and connections (ownership across workers, floods, orphaned streams)."""

import logging
import os
import re
import threading
import time
from html import unescape
from urllib.parse import urlsplit

import pytest
from requests.adapters import HTTPAdapter

from tests.conftest import alert, messages, textarea
from tests.fake_openrouter import hang, reply
from tests.serving import Browser, Gunicorn, csrf_token_in
from tests.sse import events, sse_events, until, wait_for
from tests.test_streaming import start_turn
from webapp import create_app
from webapp.factory import startup_warnings
from webapp.limits import limiter
from webapp import turns
from webapp.turns import Listeners, admission, runner
from webapp.settings import from_env

CSP = ("default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' blob:; connect-src 'self'; "
       "object-src 'none'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'")
TABLE = "| a | b |\n|:-:|--:|\n| 1 | 2 |"


# --- helpers ------------------------------------------------------------------------------------------

def send(client, text, **kwargs):
    return client.post("/", data={"message": text}, **kwargs)


def read(response):
    """Read the whole body now (a stream left unread would end outside its request context)."""
    response.get_data()
    return response


def html_of(response):
    return response.get_data(as_text=True)


def shown_in(client):
    return messages(html_of(client.get("/")))


def cookie(client):
    found = client.get_cookie("session")
    return found.value if found else None


def set_cookies(response):
    return response.headers.getlist("Set-Cookie")




def composer_action(html):
    """Where the page's message box sends to."""
    match = re.search(r'<form id="composer"[^>]*?action="([^"]+)"', html, re.S)
    assert match, "no composer on the page"
    return unescape(match.group(1))


def files_under(path):
    return sorted(os.path.join(d, f) for d, _, names in os.walk(path) for f in names)


def conversation_locks(tmp_path):
    """Lock files: the store makes one per conversation it writes (sessions never take one)."""
    return files_under(tmp_path / "sessions" / "locks")


def limited_app(make_app, **overrides):
    """An app with fresh rate-limit counters (Flask-Limiter's in-memory counters are shared by every
    app in this process; they exist once an app was made)."""
    app = make_app(**overrides)
    limiter.reset()
    return app


def with_conversation(make_app, **overrides):
    """An app and a client that already holds one finished turn."""
    app = make_app(**overrides)
    client = app.test_client()
    assert send(client, "my own words").status_code == 303
    assert shown_in(client) == [("user", "my own words"), ("assistant", "Reply 1: my own words")]
    return app, client


def conversation_path(client):
    """The path of the conversation the client's page shows (where its message box sends)."""
    return composer_action(html_of(client.get("/")))


# --- 1. CSRF tokens -------------------------------------------------------------------------------------

STATE_CHANGES = ["/", "/turns", "/stop", "/new", "/edit", "/edit/cancel", "/import",
                 "{conv}", "{conv}/turns", "{conv}/stop", "{conv}/edit", "{conv}/rename", "{conv}/delete",
                 "{conv}/drop"]


@pytest.mark.parametrize("path", STATE_CHANGES)
@pytest.mark.parametrize("token", ["missing", "wrong"])
def test_a_post_without_a_valid_csrf_token_is_refused_and_changes_nothing(make_app, fake, path, token):
    app, client = with_conversation(make_app)
    path = path.format(conv=conversation_path(client))
    before = cookie(client)
    fake.reset()
    data = {"message": "forged text", "title": "forged title"}
    headers = {}
    if token == "wrong":
        data["csrf_token"] = headers["X-CSRFToken"] = "not-the-token"
    response = read(client.post(path, data=data, headers=headers, csrf=False))
    assert response.status_code == 400
    if path == "/turns":  # ("{conv}/turns": see test_refusals_on_a_conversations_turns_route_are_json)
        body = response.get_json()
        assert set(body) == {"error"} and "security token" in body["error"]
    else:
        assert "security token" in html_of(response)
    assert fake.requests == []
    # Nothing happened to the conversation: not sent, not stopped, not emptied by a forged New chat.
    assert cookie(client) == before
    page = html_of(client.get("/"))
    assert messages(page) == [("user", "my own words"), ("assistant", "Reply 1: my own words")]
    assert "forged text" not in page and "forged title" not in page


def test_the_400_page_of_a_tokenless_send_keeps_the_typed_text_and_says_what_happened(make_app, fake):
    app = make_app()
    client = app.test_client()
    response = send(client, "please keep this\nsecond line", csrf=False)
    assert response.status_code == 400
    page = html_of(response)
    assert textarea(page) == "please keep this\nsecond line"
    assert "security token is missing or out of date" in page and "Nothing was sent" in page
    # The kept text can be sent again: the form posts back to the chat with a fresh token.
    form = re.search(r'<form method="post" action="/"[^>]*>(.*?)</form>', page, re.S)
    assert form and csrf_token_in(form.group(1))
    assert fake.requests == [] and shown_in(client) == [] and textarea(html_of(client.get("/"))) == ""


def test_a_tokenless_send_stores_nothing(make_app, fake, tmp_path):
    client = make_app().test_client()
    assert send(client, "forged", csrf=False).status_code == 400
    assert read(client.post("/turns", data={"message": "forged"}, csrf=False)).status_code == 400
    assert fake.requests == []
    assert conversation_locks(tmp_path) == []  # no conversation was ever written
    page = html_of(client.get("/"))
    assert messages(page) == [] and textarea(page) == ""


def test_with_the_token_every_state_change_works(make_app, fake):
    app, client = with_conversation(make_app)
    assert client.post("/edit").status_code == 303
    assert client.post("/edit/cancel").status_code == 303
    streamed = client.post("/turns", data={"message": "streamed"}, headers={"Accept": "text/event-stream"})
    assert streamed.status_code == 200
    assert [k for k, _ in sse_events(html_of(streamed))][-1] == "done"
    assert len(fake.requests) == 2
    new = client.post("/new")
    assert new.status_code == 303
    assert messages(html_of(client.get(new.headers["Location"]))) == []


def test_refusals_on_a_conversations_turns_route_are_json(make_app, fake):
    app, client = with_conversation(make_app, RATE_LIMIT_PER_SESSION="1/minute")
    limiter.reset()
    turns = conversation_path(client) + "/turns"
    like_app_js = {"Accept": "text/event-stream"}
    forged = read(client.post(turns, data={"message": "x"}, headers=like_app_js, csrf=False))
    foreign = read(client.post(turns, data={"message": "x"}, headers={**like_app_js, "Sec-Fetch-Site": "cross-site"}))
    assert read(client.post(turns, data={"message": "one"}, headers=like_app_js)).status_code == 200
    limited = read(client.post(turns, data={"message": "two"}, headers=like_app_js))
    for response, status in [(forged, 400), (foreign, 403), (limited, 429)]:
        assert response.status_code == status
        assert response.is_json and set(response.get_json()) == {"error"}, (status, html_of(response)[:80])


# --- 2, 3. Same origin ----------------------------------------------------------------------------------

FOREIGN = {
    "cross-site": {"Sec-Fetch-Site": "cross-site"},
    "same-site": {"Sec-Fetch-Site": "same-site"},
    "cross-site, own Origin": {"Sec-Fetch-Site": "cross-site", "Origin": "http://localhost"},
    "other Origin": {"Origin": "http://evil.example"},
    "other port": {"Origin": "http://localhost:8080"},
    "other scheme": {"Origin": "https://localhost"},
    "null Origin": {"Origin": "null"},
}


@pytest.mark.parametrize("path", ["/", "/turns", "/new", "/stop", "{conv}", "{conv}/delete"])
@pytest.mark.parametrize("origin", sorted(FOREIGN))
def test_a_post_from_another_site_is_refused_even_with_the_right_token(make_app, fake, path, origin):
    app, client = with_conversation(make_app)
    path = path.format(conv=conversation_path(client))
    fake.reset()
    response = read(client.post(path, data={"message": "planted by another site"}, headers=FOREIGN[origin]))
    assert response.status_code == 403
    assert set_cookies(response) == []
    assert fake.requests == []
    if path == "/turns":
        assert "another site" in response.get_json()["error"]
    else:
        page = html_of(response)
        assert "another site" in page
        assert textarea(page) is None  # the other site's words are not offered to this person
    assert shown_in(client) == [("user", "my own words"), ("assistant", "Reply 1: my own words")]


@pytest.mark.parametrize("headers", [{"Sec-Fetch-Site": "same-origin"}, {"Origin": "http://localhost"},
                                     {"Sec-Fetch-Site": "same-origin", "Origin": "http://localhost"}],
                         ids=["same-origin", "own Origin", "both"])
def test_a_post_from_the_apps_own_pages_works(make_app, fake, headers):
    client = make_app().test_client()
    assert send(client, "from our page", headers=headers).status_code == 303
    assert shown_in(client) == [("user", "from our page"), ("assistant", "Reply 1: from our page")]


def test_a_cross_site_post_without_a_cookie_creates_no_session_and_sets_no_cookie(make_app, fake, tmp_path):
    client = make_app().test_client()
    before = files_under(tmp_path / "sessions")
    response = send(client, "top-level form from evil.example", csrf=False,
                    headers={"Sec-Fetch-Site": "cross-site", "Origin": "http://evil.example"})
    assert response.status_code == 403
    assert "Set-Cookie" not in response.headers
    assert files_under(tmp_path / "sessions") == before  # no session, no conversation
    assert fake.requests == []


# --- 4. One session cookie --------------------------------------------------------------------------------

def test_two_session_cookies_are_refused_with_an_explanation(make_app, fake):
    app, victim = with_conversation(make_app)
    real = cookie(victim)
    raw = app.test_client(use_cookies=False)
    fake.reset()
    for method, path in [("get", "/"), ("post", "/"), ("post", "/new"), ("post", "/turns")]:
        response = read(getattr(raw, method)(path, data={"message": "hi"} if method == "post" else None,
                                             headers={"Cookie": f"session={real}; session=planted"},
                                             **({"csrf": False} if method == "post" else {})))
        assert response.status_code == 400, (method, path)
        text = unescape(html_of(response))
        assert "session cookie twice" in text and "Clear this site's cookies" in text
    get = raw.get("/", headers={"Cookie": f"session=planted; session={real}"})
    assert get.status_code == 400 and set_cookies(get) == []
    assert fake.requests == []
    # The New chat in there did not run: the victim's conversation is untouched.
    assert shown_in(victim) == [("user", "my own words"), ("assistant", "Reply 1: my own words")]


def test_two_session_cookies_on_a_send_set_no_cookie_and_store_no_session(make_app, fake, tmp_path):
    app, victim = with_conversation(make_app)
    raw = app.test_client(use_cookies=False)
    before = files_under(tmp_path / "sessions")
    response = raw.post("/", data={"message": "hi"}, csrf=False,
                        headers={"Cookie": f"session=planted; session={cookie(victim)}"})
    assert response.status_code == 400
    assert set_cookies(response) == []
    assert files_under(tmp_path / "sessions") == before


# --- 5. Session ids issued anew ---------------------------------------------------------------------------

def test_the_session_id_changes_at_the_first_send_and_a_made_up_one_is_never_adopted(make_app, fake):
    app = make_app()
    client = app.test_client()
    client.get("/")
    before = cookie(client)
    assert before
    send(client, "first message")
    after = cookie(client)
    assert after and after != before
    stale = app.test_client()
    stale.set_cookie("session", before)
    assert shown_in(stale) == []  # the id the browser had before the send holds nothing

    chosen = app.test_client()
    chosen.set_cookie("session", "attacker-chosen")
    response = send(chosen, "my secret")
    ids = [c.split(";")[0].split("=", 1)[1] for c in set_cookies(response) if c.startswith("session=")]
    assert ids and "attacker-chosen" not in ids
    assert cookie(chosen) != "attacker-chosen"
    attacker = app.test_client()
    attacker.set_cookie("session", "attacker-chosen")
    page = html_of(attacker.get("/"))
    assert messages(page) == [] and "my secret" not in page


def test_a_planted_real_session_id_never_holds_the_victims_messages(make_app, fake):
    app = make_app()
    attacker = app.test_client()
    attacker.get("/")  # a real anonymous session id, issued by the server
    planted = cookie(attacker)
    victim = app.test_client()
    victim.set_cookie("session", planted)  # cookie tossing / fixation
    assert send(victim, "my private question").status_code == 303
    assert cookie(victim) != planted
    assert shown_in(victim)[0] == ("user", "my private question")
    page = html_of(attacker.get("/"))
    assert messages(page) == [] and "my private question" not in page


# --- 6. Security headers, no inline script or style --------------------------------------------------------

def assert_security_headers(response, cached=False):
    assert response.headers["Content-Security-Policy"] == CSP
    assert response.headers["X-Content-Type-Options"] == "nosniff"
    assert response.headers["Referrer-Policy"] == "same-origin"
    if not cached:
        assert response.headers["Cache-Control"] == "no-store"


def test_pages_turns_and_error_pages_carry_the_security_headers(make_app, fake):
    client = make_app().test_client()
    assert_security_headers(client.get("/"))
    streamed = client.post("/turns", data={"message": "hi"}, headers={"Accept": "text/event-stream"})
    assert streamed.status_code == 200
    assert_security_headers(streamed)
    html_of(streamed)  # read to the end
    refused = client.post("/turns", data={"message": "  "})
    assert refused.status_code == 400
    assert_security_headers(refused)
    missing = client.get("/no-such-page")
    assert missing.status_code == 404
    assert_security_headers(missing)
    forged = send(client, "x", csrf=False)
    assert forged.status_code == 400
    assert_security_headers(forged)
    static = client.get("/static/app.css")
    assert static.status_code == 200
    assert_security_headers(static, cached=True)


def assert_no_inline_script_or_style(html):
    scripts = re.findall(r"<script\b([^>]*)>(.*?)</script>", html, re.S | re.I)
    assert scripts, "the page should load its script"
    for attributes, body in scripts:
        assert "src=" in attributes and body.strip() == "", attributes
    assert not re.search(r"<style\b", html, re.I)
    assert not re.search(r"<[^>]*\sstyle\s*=", html, re.I)
    assert not re.search(r"<[^>]*\son[a-z]+\s*=", html, re.I)  # no inline event handlers either
    assert "javascript:" not in html.lower()


def test_no_page_has_inline_script_or_style_even_with_an_aligned_table(make_app, fake):
    client = make_app().test_client()
    assert_no_inline_script_or_style(html_of(client.get("/")))
    fake.queue(reply(TABLE))
    send(client, "a table please")
    page = html_of(client.get("/"))
    assert "<table>" in page and 'class="align-center"' in page and 'class="align-right"' in page
    assert_no_inline_script_or_style(page)
    assert_no_inline_script_or_style(html_of(client.get("/?edit=1")))
    # The streamed reply's HTML obeys the same policy.
    fake.queue(reply(TABLE))
    streamed = sse_events(html_of(client.post("/turns", data={"message": "again"})))
    done = [d for k, d in streamed if k == "done"][0]
    snapshots = [d for k, d in streamed if k == "html"]
    for fragment in [done["html"], *snapshots]:
        assert not re.search(r"\sstyle\s*=", fragment)
    assert 'class="align-center"' in done["html"]
    assert_no_inline_script_or_style(html_of(client.get("/no-such-page")))
    assert_no_inline_script_or_style(html_of(send(client, "kept", csrf=False)))


# --- 7. Trusted hosts ------------------------------------------------------------------------------------

def test_by_default_only_loopback_host_names_are_answered(make_app, fake):
    client = make_app().test_client()
    for host in ["evil.example", "evil.example:8000", "rebind.attacker.test"]:
        response = client.get("/", headers={"Host": host})
        assert response.status_code == 400, host
        assert "does not answer to that host" in html_of(response)
        post = client.post("/", data={"message": "rebound"}, headers={"Host": host}, csrf=False)
        assert post.status_code == 400
    assert fake.requests == []
    for host in ["localhost", "127.0.0.1", "localhost:8000", "127.0.0.1:8000"]:
        assert client.get("/", headers={"Host": host}).status_code == 200, host
    assert client.get("/healthz", base_url="http://evil.example").status_code == 400


def post_on_host(client, base_url, path, data):
    """A POST with the token of a page loaded from `base_url` (PageClient always loads localhost)."""
    token = csrf_token_in(html_of(client.get("/", base_url=base_url)))
    assert token
    return client.post(path, base_url=base_url, csrf=False, data={"csrf_token": token, **data})


def test_the_ipv6_loopback_is_a_trusted_host_too(make_app, fake):
    client = make_app().test_client()
    for host in ["[::1]", "[::1]:8000"]:
        assert client.get("/", headers={"Host": host}).status_code == 200, host
    base = "http://[::1]:8000"
    assert post_on_host(client, base, "/", {"message": "over ipv6"}).status_code == 303
    assert client.get("/", headers={"Host": "[::2]:8000"}).status_code == 400
    configured = from_env({"TRUSTED_HOSTS": "[2001:db8::5], chat.example.com"})["TRUSTED_HOSTS"]
    client = make_app(TRUSTED_HOSTS=configured).test_client()
    assert client.get("/", headers={"Host": "[2001:db8::5]:443"}).status_code == 200
    assert client.get("/", headers={"Host": "[::1]:8000"}).status_code == 400


def test_configured_trusted_hosts_replace_the_loopback_names(make_app, fake):
    client = make_app(TRUSTED_HOSTS=["chat.example.com"]).test_client()
    base = "http://chat.example.com"
    assert client.get("/", base_url=base).status_code == 200
    assert post_on_host(client, base, "/", {"message": "hello"}).status_code == 303
    assert messages(html_of(client.get("/", base_url=base))) == [("user", "hello"), ("assistant", "Reply 1: hello")]
    assert client.get("/", base_url="http://localhost").status_code == 400
    assert client.get("/", base_url="http://127.0.0.1").status_code == 400


def test_trusted_hosts_settings_and_the_public_bind_warning(fake, tmp_path):
    assert set(from_env({})["TRUSTED_HOSTS"]) >= {"localhost", "127.0.0.1"}
    assert "evil.example" not in from_env({})["TRUSTED_HOSTS"]
    assert from_env({"BIND": "0.0.0.0:8000"})["TRUSTED_HOSTS"] is None
    assert from_env({"BIND": "0.0.0.0:8000", "TRUSTED_HOSTS": "a.example, b.example"})["TRUSTED_HOSTS"] == [
        "a.example", "b.example"]
    base = {"OPENROUTER_API_KEY": fake.api_key, "OPENROUTER_BASE_URL": fake.base_url,
            "SESSION_DIR": str(tmp_path / "sessions")}

    def warnings(env):
        return [w for w in startup_warnings(create_app(env={**base, **env}).config)
                if "ACCESS_PASSWORD is not set" in w]

    public = warnings({"BIND": "0.0.0.0:8000"})
    assert len(public) == 1 and "0.0.0.0:8000" in public[0]
    assert warnings({"BIND": "0.0.0.0:8000", "ACCESS_PASSWORD": "pw-xyz"}) == []
    assert warnings({"BIND": "127.0.0.1:8000"}) == []
    assert all("pw-xyz" not in w for w in startup_warnings(create_app(env={**base, "ACCESS_PASSWORD": "pw-xyz"}).config))


# --- 8. The access password -----------------------------------------------------------------------------

PASSWORD = "s3cret"


def log_in(client, password=PASSWORD, next_path=None):
    data = {"password": password}
    if next_path is not None:
        data["next"] = next_path
    return client.post("/login", data=data)


def is_local(location, path="/"):
    parts = urlsplit(location)
    return parts.scheme in ("", "http") and parts.netloc in ("", "localhost") and parts.path == path


def test_without_the_password_every_page_but_login_and_health_asks_for_it(make_app, fake):
    client = make_app(ACCESS_PASSWORD=PASSWORD).test_client()
    response = client.get("/")
    assert response.status_code == 302 and is_local(response.headers["Location"], "/login")
    login = html_of(client.get(response.headers["Location"]))
    assert re.search(r'<form method="post"', login) and re.search(r'<input[^>]*type="password"', login)
    for path in ["/healthz", "/readyz", "/static/app.css", "/login"]:
        assert client.get(path).status_code == 200, path
    page = send(client, "let me in")
    assert page.status_code == 401 and "log in" in html_of(page).lower()
    turn = read(client.post("/turns", data={"message": "let me in"}))
    assert turn.status_code == 401 and "error" in turn.get_json()
    assert client.get("/turns/abc").status_code == 401
    assert client.post("/new").status_code == 401
    models = client.get("/models.json", headers={"Accept": "application/json"})
    assert models.status_code in (302, 401) and "openai/o4-mini" not in models.get_data(as_text=True)
    assert fake.requests == []


def test_a_wrong_password_is_a_401_logged_without_the_password(make_app, fake, caplog):
    client = make_app(ACCESS_PASSWORD=PASSWORD).test_client()
    with caplog.at_level(logging.INFO):
        response = log_in(client, "wrong-guess-4711")
    assert response.status_code == 401
    assert "not right" in html_of(response) and "wrong-guess-4711" not in html_of(response)
    failed = [r for r in caplog.records if r.levelno == logging.WARNING and "failed login" in r.getMessage()]
    assert len(failed) == 1 and "127.0.0.1" in failed[0].getMessage()
    assert not any("wrong-guess-4711" in r.getMessage() or PASSWORD in r.getMessage() for r in caplog.records)
    assert client.get("/").status_code == 302


def test_the_right_password_logs_in_with_a_new_session_id_and_the_chat_works(make_app, fake):
    client = make_app(ACCESS_PASSWORD=PASSWORD).test_client()
    client.get("/login")
    before = cookie(client)
    assert before
    response = log_in(client, next_path="/?edit=1")
    assert response.status_code in (302, 303)
    assert urlsplit(response.headers["Location"]).path == "/" and "edit=1" in response.headers["Location"]
    after = cookie(client)
    assert after and after != before  # rotated at login: a planted id never becomes a logged-in one
    assert client.get("/").status_code == 200
    assert send(client, "now I may").status_code == 303
    assert shown_in(client) == [("user", "now I may"), ("assistant", "Reply 1: now I may")]
    stale = client.application.test_client()
    stale.set_cookie("session", before)
    assert stale.get("/").status_code == 302  # the pre-login id is not logged in


@pytest.mark.parametrize("target", ["https://evil.example", "//evil.example", "/\\evil.example",
                                    "http://evil.example/"])
def test_next_only_goes_to_a_local_path(make_app, fake, target):
    client = make_app(ACCESS_PASSWORD=PASSWORD).test_client()
    response = log_in(client, next_path=target)
    assert response.status_code in (302, 303) and is_local(response.headers["Location"])
    already = client.get("/login", query_string={"next": target})  # logged in: straight on
    assert already.status_code in (302, 303) and is_local(already.headers["Location"])


def test_log_out_locks_the_browser_until_the_password_is_given_again(make_app, fake):
    client = make_app(ACCESS_PASSWORD=PASSWORD).test_client()
    log_in(client)
    assert send(client, "before logging out").status_code == 303
    page = html_of(client.get("/", follow_redirects=True))
    assert re.search(r'<form method="post" action="/logout"[^>]*>\s*<input type="hidden" name="csrf_token"', page)
    assert re.search(r'<button type="submit"[^>]*>Log out</button>', page)
    sid = client.get_cookie("session").value
    assert client.post("/logout", csrf=False).status_code == 400  # a forged log out changes nothing
    out = client.post("/logout")
    assert out.status_code == 303 and is_local(out.headers["Location"], "/login")
    assert client.get_cookie("session").value != sid  # the old id opens nothing any more
    response = client.get("/")
    assert response.status_code == 302 and is_local(response.headers["Location"], "/login")
    assert "Log out" not in html_of(client.get("/login"))
    log_in(client)  # the same browser, its conversations kept
    assert messages(html_of(client.get("/"))) == [
        ("user", "before logging out"), ("assistant", "Reply 1: before logging out")]


def test_changing_the_password_logs_everyone_out(make_app, fake):
    client = make_app(ACCESS_PASSWORD=PASSWORD).test_client()
    log_in(client)
    assert client.get("/").status_code == 200
    restarted = make_app(ACCESS_PASSWORD="a-new-password")  # same store, the operator changed it
    again = restarted.test_client()
    again.set_cookie("session", client.get_cookie("session").value)
    response = again.get("/")
    assert response.status_code == 302 and is_local(response.headers["Location"], "/login")
    assert log_in(again, PASSWORD).status_code == 401
    assert log_in(again, "a-new-password").status_code == 303
    assert again.get("/").status_code == 200


def test_failed_logins_are_rate_limited_per_address(make_app, fake):
    app = limited_app(make_app, ACCESS_PASSWORD=PASSWORD, LOGIN_RATE_LIMIT="3/minute")
    first = app.test_client()
    assert log_in(first, "nope-1").status_code == 401
    assert log_in(first, "nope-2").status_code == 401
    assert log_in(first, PASSWORD).status_code in (302, 303)  # not counted, and not refused
    other = app.test_client()  # another browser, same address
    assert log_in(other, "nope-3").status_code == 401
    refused = log_in(other, "nope-4")
    assert refused.status_code == 429
    assert "Retry-After" in refused.headers and "nope-4" not in html_of(refused)
    assert log_in(other, PASSWORD).status_code == 429  # until the minute is over, from this address
    assert first.get("/").status_code == 200  # who logged in stays logged in


# --- 9. Rate limits ----------------------------------------------------------------------------------------

def test_sends_over_the_per_session_limit_are_refused_keeping_the_text(make_app, fake):
    client = limited_app(make_app, RATE_LIMIT_PER_SESSION="3/minute").test_client()
    for i in range(3):
        assert send(client, f"ok {i}").status_code == 303
    refused = send(client, "one too many")
    assert refused.status_code == 429
    assert textarea(html_of(refused)) == "one too many"
    assert int(refused.headers["Retry-After"]) > 0
    refused = client.post("/turns", data={"message": "js too many"})  # the streamed route: JSON
    assert refused.status_code == 429 and set(refused.get_json()) == {"error"}
    assert int(refused.headers["Retry-After"]) > 0
    assert len(fake.requests) == 3


def test_the_limiter_never_logs_the_session_secret_it_counts_by(make_app, fake, caplog):
    client = limited_app(make_app, RATE_LIMIT_PER_SESSION="1/minute").test_client()
    with caplog.at_level(logging.DEBUG):
        assert send(client, "one").status_code == 303
        assert send(client, "two").status_code == 429
    with client.session_transaction() as session:
        secret = session["csrf_token"]
    assert any("exceeded" in r.getMessage() for r in caplog.records)  # Flask-Limiter's own line
    assert all(secret not in r.getMessage() for r in caplog.records)


def test_the_fourth_send_of_a_new_session_is_refused_at_three_a_minute(make_app, fake):
    client = limited_app(make_app, RATE_LIMIT_PER_SESSION="3/minute").test_client()
    assert [send(client, f"m{i}").status_code for i in range(4)] == [303, 303, 303, 429]


def test_the_per_session_limit_counts_every_send_route_together(make_app, fake):
    client = limited_app(make_app, RATE_LIMIT_PER_SESSION="3/minute").test_client()
    first = send(client, "first")  # one of the three
    conv = urlsplit(first.headers["Location"]).path
    statuses = []
    for i in range(2):
        for path in ["/", conv, "/turns", conv + "/turns"]:
            statuses.append(read(client.post(path, data={"message": f"{path} {i}"})).status_code)
    assert statuses.count(429) == 6, statuses  # 3 a minute across all the routes: 2 more pass


def test_new_chat_does_not_reset_the_per_session_limit(make_app, fake):
    """The session id is issued anew only once per browser, so New chat is no way around the limit."""
    client = limited_app(make_app, RATE_LIMIT_PER_SESSION="3/minute").test_client()
    statuses = [send(client, "first").status_code]
    for i in range(5):
        blank = html_of(client.post("/new", follow_redirects=True))  # what the browser then shows
        statuses.append(client.post(composer_action(blank), data={"message": f"m{i}"}).status_code)
    assert 429 in statuses, statuses


def test_the_per_address_limit_counts_every_session_from_one_address(make_app, fake):
    app = limited_app(make_app, RATE_LIMIT_PER_ADDRESS="2/minute", RATE_LIMIT_PER_SESSION=None)
    alice, bob = app.test_client(), app.test_client()
    assert send(alice, "alice").status_code == 303
    assert send(bob, "bob").status_code == 303
    refused = send(alice, "alice again")
    assert refused.status_code == 429 and textarea(html_of(refused)) == "alice again"
    assert send(app.test_client(), "carol").status_code == 429
    other = app.test_client()
    assert send(other, "from elsewhere", environ_base={"REMOTE_ADDR": "10.0.0.7"}).status_code == 303
    assert len(fake.requests) == 3


def test_off_disables_a_limit(make_app, fake):
    assert from_env({"RATE_LIMIT_PER_SESSION": "off"})["RATE_LIMIT_PER_SESSION"] is None
    assert from_env({})["RATE_LIMIT_PER_SESSION"] == "20/minute"
    client = limited_app(make_app, RATE_LIMIT_PER_SESSION=None).test_client()
    assert [send(client, f"m{i}").status_code for i in range(6)] == [303] * 6
    limited = limited_app(make_app, RATE_LIMIT_PER_SESSION="2/minute").test_client()
    assert 429 in [send(limited, f"m{i}").status_code for i in range(6)]


def test_one_limit_off_leaves_the_other_counting(make_app, fake):
    # With both off a send skips Flask-Limiter altogether; with only one off the other still counts.
    app = limited_app(make_app, RATE_LIMIT_PER_SESSION=None, RATE_LIMIT_PER_ADDRESS="2/minute")
    assert [send(app.test_client(), f"m{i}").status_code for i in range(3)] == [303, 303, 429]
    app = limited_app(make_app, RATE_LIMIT_PER_SESSION=None, RATE_LIMIT_PER_ADDRESS=None)
    assert [send(app.test_client(), f"m{i}").status_code for i in range(4)] == [303] * 4


def test_a_send_refused_for_a_taken_waiting_place_neither_locks_nor_reads_the_history(make_app, fake,
                                                                                    monkeypatch):
    """300 sends at once into one busy conversation took seconds to refuse, each waiting for the
    conversation's lock and reading its history: the waiting place is checked first."""
    app = make_app()
    client = app.test_client()
    conv = urlsplit(send(client, "a conversation").headers["Location"]).path
    cid = conv.rsplit("/", 1)[1]
    store = app.extensions["chat_store"]
    now = time.time()
    with store.update(cid) as stored:  # a reply being written, another send already waiting for it
        stored["pending"] = {"turn": "t-running", "text": "q", "started": now, "beat": now, "partial": "",
                             "item_id": None, "stop": False, "replace": False, "rev": stored["rev"],
                             "waiter": {"id": "someone-else", "until": now + 60}}
    token = csrf_token_in(html_of(client.get(conv)))  # the page's form, loaded before
    touched = []
    monkeypatch.setattr(type(store), "update", lambda *a, **k: touched.append("update"))
    monkeypatch.setattr(type(store), "history", lambda *a, **k: touched.append("history"))
    monkeypatch.setattr(type(store), "update_conversations", lambda *a, **k: touched.append("list"))
    streamed = read(client.post(conv + "/turns", data={"message": "too many", "csrf_token": token},
                                csrf=False))
    assert streamed.status_code == 409 and "already waiting" in streamed.get_json()["error"]
    assert touched == []
    # JS off, the refusal page shows the conversation (so it reads it), but takes no lock.
    page = client.post(conv, data={"message": "JS off", "csrf_token": token}, csrf=False)
    assert page.status_code == 409 and textarea(html_of(page)) == "JS off"
    assert "update" not in touched and "list" not in touched
    assert len(fake.requests) == 1


# --- 10-12. Under gunicorn: ownership, the waiting place, caps ------------------------------------------------

def gunicorn_env(fake_server, path, **extra):
    return {"OPENROUTER_API_KEY": fake_server.api_key, "OPENROUTER_BASE_URL": fake_server.base_url,
            "SECRET_KEY": "guards-test", "SESSION_DIR": str(path / "sessions"),
            "OPENROUTER_READ_TIMEOUT": "30", "RATE_LIMIT_PER_SESSION": "off", **extra}


@pytest.fixture(scope="module")
def servers(fake_server, tmp_path_factory):
    """One gunicorn with 1 worker (deterministic) and one with 2 (requests land on either)."""
    path = tmp_path_factory.mktemp("guards")
    with Gunicorn(gunicorn_env(fake_server, path / "one"), path / "one.log", workers=1) as one, \
            Gunicorn(gunicorn_env(fake_server, path / "two"), path / "two.log", workers=2) as two:
        yield {1: one, 2: two}


@pytest.fixture(scope="module")
def capped(fake_server, tmp_path_factory):
    path = tmp_path_factory.mktemp("capped")
    env = gunicorn_env(fake_server, path, MAX_RUNNING_TURNS="3", MAX_TURNS_PER_SESSION="1",
                       MAX_LISTENERS_PER_SESSION="4", MAX_LISTENERS_PER_TURN="6")
    with Gunicorn(env, path / "capped.log", workers=1) as running:
        yield running


def pooled_browser():
    browser = Browser()
    adapter = HTTPAdapter(pool_connections=4, pool_maxsize=100)
    browser.mount("http://", adapter)
    return browser


CLOSE = {"Connection": "close"}


def page_of(browser, server):
    return browser.get(server.url + "/", timeout=30).text


@pytest.mark.parametrize("workers", [1, 2])
def test_another_browser_can_neither_follow_nor_stop_nor_reach_a_reply(servers, fake, workers):
    server = servers[workers]
    other = Browser()
    other.post(server.url + "/", data={"message": "B's own"}, timeout=30)  # B has a conversation too
    nobody = Browser()  # and C has none
    owner = Browser()
    first = owner.post(server.url + "/", data={"message": "A's first"}, timeout=30)
    conv = urlsplit(first.url).path  # A's conversation page, where the send led
    gate = threading.Event()
    fake.reset()
    fake.queue(reply("A's private answer, whole", gate=gate, chunks=["A's private", " answer, whole"]))
    stream = events(start_turn(owner, server, "A's question"))
    started, _ = until("started", stream)
    until("delta", stream)
    turn = started["turn"]
    json_accept = {"Accept": "application/json", **CLOSE}
    try:
        for _ in range(4):  # a new connection each time: with 2 workers, both get asked
            for browser in (other, nobody):
                for path in [f"/turns/{turn}", f"{conv}/turns/{turn}", conv, f"{conv}/export.md"]:
                    reached = browser.get(server.url + path, timeout=10, headers=CLOSE)
                    assert reached.status_code == 404, path
                    assert "A's" not in reached.text
                for path in ["/stop", f"{conv}/stop"]:
                    stopped = browser.post(server.url + path, data={"turn": turn}, timeout=10, headers=json_accept)
                    assert stopped.status_code == 404, path
                    page = browser.post(server.url + path, data={"turn": turn}, timeout=10, headers=CLOSE)
                    assert page.status_code == 404, path
                for path in [conv, f"{conv}/delete"]:
                    assert browser.post(server.url + path, data={"message": "planted"}, timeout=10,
                                        headers=CLOSE).status_code == 404, path
    finally:
        gate.set()
    done, _ = until("done", stream)
    assert not done.get("stopped")
    assert done["text"] == "A's private answer, whole"
    assert messages(page_of(owner, server)) == [
        ("user", "A's first"), ("assistant", "Reply 1: A's first"),
        ("user", "A's question"), ("assistant", "A's private answer, whole")]
    assert "A's" not in page_of(other, server)
    assert len(fake.requests) == 1 and fake.disconnects == 0  # nothing planted reached the model


def flood(count, post):
    """Run `post(i)` for i in range(count) at once; return {i: (response or exception, seconds)}."""
    results = {}
    start = threading.Barrier(count)

    def one(i):
        start.wait()
        began = time.monotonic()
        try:
            outcome = post(i)
        except Exception as exc:  # noqa: BLE001 - reported by the assertions
            outcome = exc
        results[i] = (outcome, time.monotonic() - began)

    threads = [threading.Thread(target=one, args=(i,), daemon=True) for i in range(count)]
    for t in threads:
        t.start()
    return threads, results


def hold_a_reply(browser, server, fake, text="the first reply, held"):
    gate = threading.Event()
    fake.queue(reply(text, gate=gate, chunks=[text[:9], text[9:]]))
    stream = events(start_turn(browser, server, "first"))
    until("delta", stream)
    return gate, stream


def test_a_flood_of_streamed_sends_gets_one_waiting_place_and_prompt_409s(servers, fake):
    server = servers[1]
    browser = pooled_browser()
    until("done", events(start_turn(browser, server, "warm up")))  # the conversation exists
    gate, first = hold_a_reply(browser, server, fake)
    fake.reset()
    threads, results = flood(50, lambda i: browser.post(
        server.url + "/turns", data={"message": f"flood {i}"}, stream=True, timeout=60,
        headers={"Accept": "text/event-stream"}))
    try:
        for t in threads:
            t.join(20)
        assert len(results) == 50, "some sends hung"
        errors = [r for r, _ in results.values() if isinstance(r, Exception)]
        assert errors == []
        queued = [i for i, (r, _) in results.items() if r.status_code == 200]
        refused = [i for i, (r, _) in results.items() if r.status_code == 409]
        assert len(queued) == 1 and len(refused) == 49, sorted(r.status_code for r, _ in results.values())
        assert max(results[i][1] for i in refused) < 10  # promptly, not after the 30 s queue wait
        for i in refused:
            assert "already waiting" in results[i][0].json()["error"]
        waiting = events(results[queued[0]][0])
        assert until("queued", waiting)[0]["message"]
    finally:
        gate.set()
    until("done", first)
    until("done", waiting)
    texts = [t for _, t in messages(page_of(browser, server))]
    k = queued[0]
    assert texts == ["warm up", "Reply 1: warm up", "first", "the first reply, held",
                     f"flood {k}", f"Reply 3: flood {k}"]
    assert len(fake.requests) == 1  # only the one queued send reached the model


def test_a_flood_of_js_off_sends_gets_one_waiting_place_and_prompt_409_pages(servers, fake):
    server = servers[1]
    browser = pooled_browser()
    browser.post(server.url + "/", data={"message": "warm up"}, timeout=30)
    gate, first = hold_a_reply(browser, server, fake)
    fake.reset()
    threads, results = flood(50, lambda i: browser.post(
        server.url + "/", data={"message": f"flood {i}"}, allow_redirects=False, timeout=60))
    try:
        assert wait_for(lambda: len(results) >= 49, timeout=15), f"only {len(results)} answered"
        refused = {i: r for i, (r, _) in results.items() if not isinstance(r, Exception) and r.status_code == 409}
        assert len(refused) == 49, {i: getattr(r, "status_code", r) for i, (r, _) in results.items()}
        assert max(results[i][1] for i in refused) < 10
        for i, response in refused.items():
            assert textarea(response.text) == f"flood {i}"
            assert "already waiting" in alert(response.text)
        waiting = [i for i in range(50) if i not in refused]
        assert len(waiting) == 1
    finally:
        gate.set()
    until("done", first)
    for t in threads:
        t.join(30)
    k = waiting[0]
    assert results[k][0].status_code == 303
    texts = [t for _, t in messages(page_of(browser, server))]
    assert texts == ["warm up", "Reply 1: warm up", "first", "the first reply, held",
                     f"flood {k}", f"Reply 3: flood {k}"]
    assert len(fake.requests) == 1


def test_running_turns_are_capped_per_process_and_the_refusal_never_hangs(capped, fake):
    fake.queue(hang(20), hang(20), hang(20))
    orphans = []
    for i in range(3):
        browser = Browser()
        response = start_turn(browser, capped, f"held {i}")
        started, _ = until("started", events(response))
        response.close()  # the tab is gone: its turn goes on in the background
        orphans.append((browser, started["turn"]))
    assert fake.wait_for_requests(3)
    late = Browser()
    late.get(capped.url + "/", timeout=10)
    began = time.monotonic()
    streamed = late.post(capped.url + "/turns", data={"message": "one too many"}, timeout=10)
    assert streamed.status_code == 503
    assert "as many messages as it can" in streamed.json()["error"]
    page = late.post(capped.url + "/", data={"message": "one too many, JS off"}, timeout=10)
    assert page.status_code == 503
    assert textarea(page.text) == "one too many, JS off" and "as many messages as it can" in alert(page.text)
    assert time.monotonic() - began < 5
    assert len(fake.requests) == 3
    for browser, turn in orphans:
        stopped = browser.post(capped.url + "/stop", data={"turn": turn},
                               headers={"Accept": "application/json"}, timeout=10)
        assert stopped.status_code == 200
    assert wait_for(lambda: fake.disconnects == 3)

    def try_again():
        response = late.post(capped.url + "/turns", data={"message": "now there is room"},
                             stream=True, timeout=10)
        if response.status_code == 503:
            response.close()
            return False
        assert response.status_code == 200
        until("done", events(response))
        return True

    assert wait_for(try_again, timeout=5)
    assert messages(page_of(late, capped)) == [("user", "now there is room"),
                                               ("assistant", "Reply 1: now there is room")]


def test_turns_per_session_are_capped_per_process(capped, fake):
    """MAX_TURNS_PER_SESSION=1 here: while one reply of a session is written, its send in a new
    conversation and its send queued behind that reply are both refused with 429. (The session's
    first send is made first.)"""
    browser = Browser()
    browser.post(capped.url + "/", data={"message": "settled"}, timeout=30)
    gate, first = hold_a_reply(browser, capped, fake)
    try:
        blank = browser.post(capped.url + "/new", timeout=10).text  # New chat, then send there
        elsewhere = browser.post(capped.url + composer_action(blank) + "/turns",
                                 data={"message": "in a new chat"}, timeout=10)
        assert elsewhere.status_code == 429
        assert "as many replies being written as one browser may" in elsewhere.json()["error"]
        streamed = browser.post(capped.url + "/turns", data={"message": "second"}, timeout=10)
        assert streamed.status_code == 429
        assert "as many replies being written as one browser may" in streamed.json()["error"]
        page = browser.post(capped.url + "/", data={"message": "second, JS off"}, timeout=10)
        assert page.status_code == 429 and textarea(page.text) == "second, JS off"
        # Another browser is not affected.
        assert Browser().post(capped.url + "/", data={"message": "someone else"}, timeout=10).status_code == 200
    finally:
        gate.set()
    until("done", first)
    assert [t for _, t in messages(page_of(browser, capped))] == [
        "settled", "Reply 1: settled", "first", "the first reply, held"]


def test_listeners_to_a_reply_are_capped_per_session_and_per_turn(capped, fake):
    """One session once opened 1,005 listeners to one reply and every other user timed out. Here
    (MAX_LISTENERS_PER_SESSION=4, MAX_LISTENERS_PER_TURN=6, one worker) the 5th listener of one
    session is a clear 429, a closed one frees its place, and the reply is not disturbed."""
    browser = pooled_browser()
    # Words keep coming (a closed listener is noticed at its next write), for about 10 s.
    fake.queue(reply("".join(f"w{i} " for i in range(40)), chunks=[f"w{i} " for i in range(40)],
                     chunk_delay=0.25))
    first = events(start_turn(browser, capped, "first"))
    until("delta", first)
    page = browser.get(capped.url + "/", timeout=10).text
    turn = re.search(r'data-pending-turn="([^"]+)"', page)[1]
    conv = re.search(r'data-conversation="([^"]+)"', page)[1]
    url = f"{capped.url}/c/{conv}/turns/{turn}"
    listeners = []
    try:
        for _ in range(4):
            listeners.append(browser.get(url, stream=True, timeout=10))
            assert listeners[-1].status_code == 200
        refused = browser.get(url, timeout=10)
        assert refused.status_code == 429 and "too many" in refused.json()["error"].lower()
        listeners.pop().close()

        def one_more():
            listener = browser.get(url, stream=True, timeout=10)
            if listener.status_code == 200:
                listeners.append(listener)
                return True
            listener.close()
            return False

        assert wait_for(one_more, timeout=5)  # the closed one's place is free again
    finally:
        for listener in listeners:
            listener.close()
    assert until("done", first)[0]["count"] == 2


def test_running_turns_never_pass_the_cap_however_many_sends_arrive_at_once(fake_server, fake, tmp_path):
    """MAX_RUNNING_TURNS is reserved under the lock that registers a turn: checked long before
    (check-then-act), sends arriving together all passed the check and all started."""
    env = gunicorn_env(fake_server, tmp_path, MAX_RUNNING_TURNS="3", MAX_TURNS_PER_SESSION="50")
    gate = threading.Event()
    with Gunicorn(env, tmp_path / "cap.log", workers=1) as server:
        browsers = [Browser() for _ in range(12)]
        for browser in browsers:
            browser.token(server.url)  # each its page first, as people do
        fake.queue(*[reply("held", gate=gate, chunks=["he", "ld"]) for _ in range(12)])
        threads, results = flood(12, lambda i: browsers[i].post(
            server.url + "/c/new/turns", data={"message": f"at once {i}"}, stream=True, timeout=60,
            headers={"Accept": "text/event-stream"}))
        for t in threads:
            t.join(60)
        try:
            statuses = sorted(r.status_code for r, _ in results.values())
            assert statuses == [200] * 3 + [503] * 9, statuses
            assert not fake.wait_for_requests(4, timeout=1)  # only three reached the model
        finally:
            gate.set()
            for response, _ in results.values():
                if hasattr(response, "close"):
                    response.close()


def test_a_reserved_place_counts_until_released_or_taken_by_its_running_turn():
    first, second = turns.reserve(2, "alice", 5), turns.reserve(2, "bob", 5)
    try:
        with pytest.raises(turns.Full):
            turns.reserve(2, "carol", 5)
        first.release()
        first.release()  # giving up twice frees one place, once
        third = turns.reserve(2, "carol", 5)
        with pytest.raises(turns.Full):
            turns.reserve(2, "dave", 5)
        running = runner.register(None, "c", "t-reserved", slot=third)  # the turn takes its place
        with pytest.raises(turns.Full):
            turns.reserve(2, "dave", 5)
        third.release()  # already taken: changes nothing
        with pytest.raises(turns.Full):
            turns.reserve(2, "dave", 5)
        with pytest.raises(turns.Full) as per_session:
            turns.reserve(10, "bob", 1)
        assert per_session.value.too_many_for_session
    finally:
        turns.LIVE.pop("t-reserved", None)
        admission.RUNNING.pop(None, None)
        second.release()
    assert running.owner is None and not admission._RESERVED


def test_the_listener_counts_cap_each_turn_and_each_session_and_free_what_leaves():
    listeners = Listeners()
    assert [listeners.admit("t1", "alice", per_turn=2, per_owner=3) for _ in range(3)] == [True, True, False]
    assert listeners.admit("t2", "alice", 2, 3) and not listeners.admit("t3", "alice", 2, 3)
    assert listeners.admit("t1", "bob", 3, 3)  # another session, on a turn with room
    listeners.leave("t1", "alice")
    assert listeners.admit("t3", "alice", 2, 3)
    for turn, owner in [("t1", "alice"), ("t1", "bob"), ("t2", "alice"), ("t3", "alice")]:
        listeners.leave(turn, owner)
    assert not listeners.by_turn and not listeners.by_owner  # nothing kept for turns long gone


def test_the_first_turn_of_a_session_counts_toward_its_cap(capped, fake):
    browser = Browser()
    gate, first = hold_a_reply(browser, capped, fake)
    second = None
    try:
        second = browser.post(capped.url + "/turns", data={"message": "second"}, stream=True, timeout=10)
        assert second.status_code == 429
    finally:
        if second is not None:
            second.close()
            time.sleep(2.5)  # the queued send notices its client left (it writes every second)
        gate.set()
        until("done", first)

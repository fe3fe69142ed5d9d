"""Sign in with OpenRouter (OAuth PKCE): each person chats on their own OpenRouter account and key.

The whole flow runs against the fake upstream, which plays OpenRouter's sign-in page too: the test
follows the app's redirect to `{fake}/auth`, which issues a single-use code bound to the S256
challenge the browser brought and sends it back to the app's callback; the fake's POST /auth/keys
gives a key only for the verifier whose SHA-256 is that challenge. Every /responses request records
the key it carried, so the tests see who paid."""

import base64
import hashlib
import logging
import re
import time
from urllib.parse import parse_qs, urlsplit

import pytest
import requests

from tests.conftest import API_KEY, PageClient, alert, app_config, messages, textarea
from tests.fake_openrouter import error
from tests.serving import Browser, Gunicorn, served_env
from webapp import create_app, signin
from webapp.openrouter import Client, UpstreamError, scrub
from webapp.settings import SettingsError, from_env
from webapp.store import FileBackend

SIGN_IN = "Sign in with OpenRouter"
OWN = {"SIGN_IN_WITH_OPENROUTER": True}


@pytest.fixture
def own_app(make_app, fake):
    """Sign-in on, no operator key: everyone pays with their own."""
    return lambda **more: make_app(**OWN, OPENROUTER_API_KEY="", OPENROUTER_AUTH_URL=fake.auth_url, **more)


@pytest.fixture
def both_app(make_app, fake):
    """Sign-in on and an operator key: people who have not signed in chat on the operator's."""
    return lambda **more: make_app(**OWN, OPENROUTER_AUTH_URL=fake.auth_url, **more)


def text(response):
    return response.get_data(as_text=True)


def send(client, message, cid="new"):
    return client.post(f"/c/{cid}", data={"message": message})


def sign_in(client, fake):
    """The whole flow in this browser: /signin → OpenRouter's page (the fake) → the callback. Returns
    the key the fake issued, after checking each step."""
    start = client.get("/signin")
    assert start.status_code == 303
    location = start.headers["Location"]
    assert location.startswith(fake.auth_url + "?")
    query = parse_qs(urlsplit(location).query)
    assert query["callback_url"] == ["http://localhost/signin/callback"]
    assert query["code_challenge_method"] == ["S256"]
    assert re.fullmatch(r"[A-Za-z0-9_-]{43}", query["code_challenge"][0])  # no padding
    at_openrouter = requests.get(location, allow_redirects=False, timeout=5)
    assert at_openrouter.status_code == 302
    back = urlsplit(at_openrouter.headers["Location"])
    before = set(fake.user_keys)
    client.signin_callback = f"{back.path}?{back.query}"
    done = client.get(client.signin_callback)
    assert done.status_code == 303 and done.headers["Location"] == "/", text(done)
    (key,) = set(fake.user_keys) - before
    # The verifier never went to the browser: only its challenge did.
    verifier = fake.exchanges[-1]["body"]["code_verifier"]
    assert signin.challenge(verifier) == query["code_challenge"][0]
    assert verifier not in location + text(start) + str(start.headers) + str(client.get_cookie("session").value)
    return key


def keys_used(fake):
    return [r["key"] for r in fake.requests]


# --- the plain module: PKCE, pending sign-ins, the encrypted key box --------------------------------

def test_verifiers_are_fresh_random_and_within_rfc_7636():
    made = {signin.new_verifier() for _ in range(50)}
    assert len(made) == 50
    assert all(re.fullmatch(r"[A-Za-z0-9_-]{43,128}", v) for v in made)


def test_the_challenge_is_unpadded_base64url_of_sha256():
    # RFC 7636, appendix B
    assert signin.challenge("dBjftJeZ4CVP-mB92K27uhbUJU1p1r_wW1gFWFOEjXk") == \
        "E9Melhoa2OwvFrEMTJguCHaoeK1t8URWbuGJSstw-cM"
    verifier = signin.new_verifier()
    expected = base64.urlsafe_b64encode(hashlib.sha256(verifier.encode()).digest()).decode().rstrip("=")
    assert signin.challenge(verifier) == expected and "=" not in expected


def test_a_pending_sign_in_is_taken_once_and_lapses_after_ten_minutes():
    session = {}
    url = signin.start(session, "https://openrouter.ai/auth", "https://chat.example.org/signin/callback", now=1000)
    query = parse_qs(urlsplit(url).query)
    verifier = session[signin.SESSION_FIELD]["verifier"]
    assert url.startswith("https://openrouter.ai/auth?")
    assert query == {"callback_url": ["https://chat.example.org/signin/callback"],
                     "code_challenge": [signin.challenge(verifier)], "code_challenge_method": ["S256"]}
    assert signin.take_pending(session, now=1000 + 599) == verifier
    assert signin.take_pending(session, now=1000 + 600) is None  # taken: a replay finds nothing
    signin.start(session, "https://a/auth", "https://b/cb", now=1000)
    assert signin.take_pending(session, now=1000 + signin.PENDING_FOR + 1) is None
    assert signin.take_pending({signin.SESSION_FIELD: "junk"}) is None
    # Each sign-in has its own verifier.
    first = signin.start(session, "https://a/auth", "https://b/cb")
    assert signin.start(session, "https://a/auth", "https://b/cb") != first


def test_keys_are_encrypted_at_rest_per_browser_under_secret_key(tmp_path):
    from cachelib.file import FileSystemCache

    backend = FileBackend(FileSystemCache(str(tmp_path), threshold=0), str(tmp_path / "locks"))
    box = signin.KeyBox(backend, "the-secret", 3600)
    key = "sk-or-v1-user-" + "ab12" * 12
    box.put("browser-1", key)
    assert box.get("browser-1") == key and box.has("browser-1")
    assert box.get("browser-2") is None
    on_disk = b"".join(p.read_bytes() for p in tmp_path.rglob("*") if p.is_file())
    for form in forms_of(key):
        assert form not in on_disk
    # Another SECRET_KEY cannot read it (that person is signed out), nor can another browser's id
    # (a record copied under it).
    assert signin.KeyBox(backend, "another-secret", 3600).get("browser-1") is None
    backend.set_blob(signin.KEY_PREFIX + "browser-2", backend.get_blob(signin.KEY_PREFIX + "browser-1"), 60)
    assert box.get("browser-2") is None
    box.delete("browser-1")
    assert box.get("browser-1") is None


def test_a_key_in_use_is_written_again_past_half_its_lifetime(tmp_path):
    from cachelib.file import FileSystemCache

    backend = FileBackend(FileSystemCache(str(tmp_path), threshold=0), str(tmp_path / "locks"))
    box = signin.KeyBox(backend, "s", 100)
    box.put("b", "sk-or-v1-user-renewed-0000")
    sealed = backend.get_blob(signin.KEY_PREFIX + "b")
    assert box.get("b", now=time.time() + 10) == "sk-or-v1-user-renewed-0000"
    assert backend.get_blob(signin.KEY_PREFIX + "b") == sealed  # young: not rewritten
    assert box.get("b", now=time.time() + 60) == "sk-or-v1-user-renewed-0000"
    assert backend.get_blob(signin.KEY_PREFIX + "b") != sealed  # past half: sealed anew


def test_credit_text():
    assert signin.credit_text({"limit": 10, "limit_remaining": 9.75, "usage": 0.25}) == "$9.75 left"
    assert signin.credit_text({"limit": 10, "limit_remaining": -2, "usage": 12}) == "$0 left"
    assert signin.credit_text({"limit": None, "limit_remaining": None, "usage": 1.5}) == "$1.50 used"
    assert signin.credit_text({"limit": 5, "limit_remaining": "lots", "usage": True}) is None


def forms_of(key):
    """The key as it might leak: itself, its base64 (either alphabet) and its hex."""
    raw = key.encode()
    return [raw, base64.b64encode(raw), base64.urlsafe_b64encode(raw), base64.b64encode(raw).rstrip(b"="),
            raw.hex().encode(), raw.hex().upper().encode()]


# --- settings ------------------------------------------------------------------------------------

def test_settings():
    config = from_env({})
    assert config["SIGN_IN_WITH_OPENROUTER"] is False
    assert config["OPENROUTER_AUTH_URL"] == "https://openrouter.ai/auth"
    config = from_env({"SIGN_IN_WITH_OPENROUTER": "true", "OPENROUTER_AUTH_URL": "https://or.example/auth/"})
    assert config["SIGN_IN_WITH_OPENROUTER"] is True and config["OPENROUTER_AUTH_URL"] == "https://or.example/auth"
    with pytest.raises(SettingsError, match="OPENROUTER_AUTH_URL must be an http"):
        from_env({"OPENROUTER_AUTH_URL": "https://or.example/auth?x=1"})
    with pytest.raises(SettingsError, match="SIGN_IN_WITH_OPENROUTER must be true or false"):
        from_env({"SIGN_IN_WITH_OPENROUTER": "maybe"})


# --- the client: the code for a key, a person's key per request -------------------------------------

def test_the_client_trades_a_code_without_the_operator_key(fake):
    client = Client(API_KEY, fake.base_url, "openai/o4-mini", 100)
    verifier = signin.new_verifier()
    at_openrouter = requests.get(fake.auth_url, params={
        "callback_url": "http://localhost/cb", "code_challenge": signin.challenge(verifier),
        "code_challenge_method": "S256"}, allow_redirects=False, timeout=5)
    code = parse_qs(urlsplit(at_openrouter.headers["Location"]).query)["code"][0]
    key = client.exchange_code(code, verifier)
    assert key in fake.user_keys
    (exchange,) = fake.exchanges
    assert exchange["body"] == {"code": code, "code_verifier": verifier, "code_challenge_method": "S256"}
    assert "Authorization" not in exchange["headers"]  # this request needs no key: none is sent
    assert scrub(f"oops {key}") == "oops [redacted]"  # registered for scrubbing at once
    # A person's key per request, and a 401/402 on it is theirs.
    client.respond([{"type": "message", "role": "user", "content": "hi"}], api_key=key)
    assert keys_used(fake) == [key]
    fake.queue(error(402, "Insufficient credits"))
    with pytest.raises(UpstreamError) as caught:
        client.respond([{"type": "message", "role": "user", "content": "hi"}], api_key=key)
    assert caught.value.kind == "own_credits" and keys_used(fake) == [key, key]
    assert client.key_info(key)["limit_remaining"] == 9.75


@pytest.mark.rejections_expected
def test_a_spent_or_intercepted_code_is_refused(fake):
    client = Client("", fake.base_url, "openai/o4-mini", 100)
    verifier = signin.new_verifier()
    at_openrouter = requests.get(fake.auth_url, params={
        "callback_url": "http://localhost/cb", "code_challenge": signin.challenge(verifier),
        "code_challenge_method": "S256"}, allow_redirects=False, timeout=5)
    code = parse_qs(urlsplit(at_openrouter.headers["Location"]).query)["code"][0]
    with pytest.raises(UpstreamError) as caught:
        client.exchange_code(code, signin.new_verifier())  # someone else's verifier
    assert caught.value.kind == "signin_refused" and caught.value.status == 403
    with pytest.raises(UpstreamError):
        client.exchange_code(code, verifier)  # single-use: spent by the try above
    assert fake.user_keys == {}


# --- the app: the whole flow ----------------------------------------------------------------------

def test_without_an_operator_key_the_page_offers_sign_in_and_a_send_is_refused(own_app, fake):
    client = own_app().test_client()
    html = text(client.get("/"))
    assert f">{SIGN_IN}</a>" in html and 'href="/signin"' in html
    assert textarea(html) == "" and 'data-action="send"' in html  # the chat form stays
    assert "No OpenRouter API key is configured" not in html
    refused = send(client, "hello before signing in")
    assert refused.status_code == 401
    assert "Sign in with OpenRouter" in alert(text(refused)) and textarea(text(refused)) == "hello before signing in"
    streamed = client.post("/c/new/turns", data={"message": "hello by script"})
    assert streamed.status_code == 401 and "Sign in with OpenRouter" in streamed.get_json()["error"]
    assert fake.requests == []


def test_a_person_signs_in_and_chats_on_their_own_key(own_app, fake):
    app = own_app()
    client = app.test_client()
    client.get("/")
    before = client.get_cookie("session").value
    key = sign_in(client, fake)
    assert client.get_cookie("session").value != before  # a new session id at sign-in
    html = text(client.get("/"))
    assert SIGN_IN not in html
    signout = re.search(r'<form method="post" action="/signout"[^>]*>\s*<input type="hidden" '
                        r'name="csrf_token" value="[^"]+">\s*<button type="submit"[^>]*>Sign out</button>', html)
    assert signout, html
    assert re.search(r'data-role="credits"[^>]*>OpenRouter: \$9.75 left<', html)
    send(client, "on my own account")
    streamed = client.post("/c/new/turns", data={"message": "and by script"})
    assert streamed.status_code == 200 and "Reply 1: and by script" in text(streamed)
    assert keys_used(fake) == [key, key]
    assert messages(text(client.get("/", follow_redirects=True)))[-1] == ("assistant", "Reply 1: and by script")


def test_two_browsers_pay_with_their_own_keys_and_others_with_the_operators(both_app, fake):
    app = both_app()
    alice, bob, carol = app.test_client(), app.test_client(), app.test_client()
    alice_key, bob_key = sign_in(alice, fake), sign_in(bob, fake)
    assert alice_key != bob_key
    send(alice, "alice 1")
    send(bob, "bob 1")
    send(carol, "carol has not signed in")
    send(alice, "alice 2")
    assert keys_used(fake) == [alice_key, bob_key, API_KEY, alice_key]
    assert f">{SIGN_IN}</a>" in text(carol.get("/")) and "Sign out" not in text(carol.get("/"))


def test_a_callback_in_a_browser_that_never_started_is_refused(own_app, fake, tmp_path):
    app = own_app()
    client = app.test_client()
    for path in ("/signin/callback?code=made-up", "/signin/callback"):
        response = client.get(path)
        assert response.status_code == 400 and "Location" not in response.headers
        assert "No sign-in under way" in text(response)
    assert fake.exchanges == [] and fake.user_keys == {} and _no_key_for(app, client)
    assert f">{SIGN_IN}</a>" in text(client.get("/"))


@pytest.mark.rejections_expected
def test_forged_and_replayed_callbacks_store_nothing(own_app, fake, tmp_path):
    app = own_app()
    mallory, victim = app.test_client(), app.test_client()
    # A made-up code, in a browser that did start a sign-in: OpenRouter refuses it (403).
    mallory.get("/signin")
    forged = mallory.get("/signin/callback?code=made-up")
    assert forged.status_code == 403 and "Location" not in forged.headers
    assert "did not accept this sign-in" in text(forged)
    # A code issued for another browser's sign-in (intercepted): this browser's verifier does not fit.
    start = victim.get("/signin")
    at_openrouter = requests.get(start.headers["Location"], allow_redirects=False, timeout=5)
    stolen = urlsplit(at_openrouter.headers["Location"])
    mallory.get("/signin")
    intercepted = mallory.get(f"{stolen.path}?{stolen.query}")
    assert intercepted.status_code == 403 and fake.user_keys == {}
    # The code is spent: the victim's own callback with it fails too, and stores nothing.
    assert victim.get(f"{stolen.path}?{stolen.query}").status_code == 403
    assert fake.user_keys == {} and _no_key_for(app, mallory, victim)
    # A real sign-in, then its callback replayed: no sign-in is under way any more.
    key = sign_in(victim, fake)
    exchanges = len(fake.exchanges)
    replayed = victim.get(victim.signin_callback)
    assert replayed.status_code == 400 and len(fake.exchanges) == exchanges
    # ... and in another browser that starts its own sign-in, the spent code is refused upstream.
    mallory.get("/signin")
    assert mallory.get(victim.signin_callback).status_code == 403
    assert send(mallory, "mallory has no key").status_code == 401 and _no_key_for(app, mallory)
    send(victim, "the victim's")
    assert keys_used(fake) == [key]


def test_sign_out_deletes_the_key_and_the_next_send_is_refused(own_app, fake):
    app = own_app()
    client = app.test_client()
    key = sign_in(client, fake)
    bid = _bid(client, app)
    assert app.extensions["signin_keys"].get(bid) == key
    forged = client.post("/signout", csrf=False)
    assert forged.status_code == 400 and app.extensions["signin_keys"].get(bid) == key
    done = client.post("/signout")
    assert done.status_code == 303 and done.headers["Location"] == "/"
    assert app.extensions["signin_keys"].get(bid) is None
    assert app.extensions["chat_store"].backend.get_blob(signin.KEY_PREFIX + bid) is None
    assert f">{SIGN_IN}</a>" in text(client.get("/"))
    refused = send(client, "after signing out")
    assert refused.status_code == 401 and textarea(text(refused)) == "after signing out"
    assert fake.requests == []


def test_after_sign_out_the_operator_key_answers_again(both_app, fake):
    client = both_app().test_client()
    key = sign_in(client, fake)
    send(client, "mine")
    client.post("/signout")
    send(client, "the operator's")
    assert keys_used(fake) == [key, API_KEY]


def test_a_restart_keeps_people_signed_in(own_app, fake):
    client = own_app().test_client()
    key = sign_in(client, fake)
    cookie = client.get_cookie("session").value
    again = own_app().test_client()  # a new process on the same store
    again.set_cookie("session", cookie)
    assert "Sign out" in text(again.get("/"))
    send(again, "after the restart")
    assert keys_used(fake) == [key]


def test_another_secret_key_signs_people_out(own_app, fake):
    client = own_app().test_client()
    sign_in(client, fake)
    cookie = client.get_cookie("session").value
    again = own_app(SECRET_KEY="another-secret").test_client()
    again.set_cookie("session", cookie)
    assert f">{SIGN_IN}</a>" in text(again.get("/"))


@pytest.mark.rejections_expected
def test_a_401_on_a_persons_key_says_sign_in_again_and_never_falls_back(both_app, fake):
    client = both_app().test_client()
    key = sign_in(client, fake)
    fake.revoked.add(key)
    failed = send(client, "revoked meanwhile")
    html = text(client.get(failed.headers["Location"]))
    assert "sign in with OpenRouter again" in alert(html) and textarea(html) == "revoked meanwhile"
    assert keys_used(fake) == [key]  # one request, on the person's key: never the operator's
    assert "Sign out" in html and 'data-role="credits"' not in html  # GET /key refused it too


def test_a_402_on_a_persons_key_says_they_are_out_of_credit(both_app, fake):
    client = both_app().test_client()
    key = sign_in(client, fake)
    fake.queue(error(402, "Insufficient credits"))
    streamed = client.post("/c/new/turns", data={"message": "no credit left"})
    body = text(streamed)
    assert "Your OpenRouter account is out of credit (402)" in body
    assert "operator" not in body.lower()
    assert keys_used(fake) == [key]


def test_an_upstream_error_quoting_a_persons_key_is_scrubbed(both_app, fake):
    client = both_app().test_client()
    key = sign_in(client, fake)
    fake.queue(error(400, f"bad request from {key}"))
    failed = send(client, "quote me")
    html = text(client.get(failed.headers["Location"]))
    assert key not in html and "[redacted]" in alert(html)


def test_a_store_failing_on_keys_is_the_storage_page_not_a_crash(own_app, fake, monkeypatch):
    from webapp.store import StoreError

    client = own_app().test_client()
    sign_in(client, fake)

    def down(self, bid, now=None):
        raise StoreError("down")

    monkeypatch.setattr(signin.KeyBox, "get", down)
    assert client.get("/").status_code == 200  # the page, without the header's sign-in controls
    refused = send(client, "while the store is down")
    assert refused.status_code == 503 and "Storage unavailable" in text(refused)
    assert "while the store is down" in text(refused) and fake.requests == []


def test_sign_in_off_means_no_routes_and_no_control(make_app, fake):
    client = make_app().test_client()
    assert SIGN_IN not in text(client.get("/"))
    assert client.get("/signin").status_code == 404
    assert client.get("/signin/callback?code=x").status_code == 404
    assert client.post("/signout").status_code == 404


def test_the_access_gate_comes_first(own_app, fake):
    client = own_app(ACCESS_PASSWORD="pw-123").test_client()
    response = client.get("/signin")
    assert response.status_code == 302 and response.headers["Location"].startswith("/login")
    assert SIGN_IN not in text(client.get("/login"))
    client.post("/login", data={"password": "pw-123"})
    assert f">{SIGN_IN}</a>" in text(client.get("/"))
    key = sign_in(client, fake)
    send(client, "behind the gate")
    assert keys_used(fake) == [key]


def test_the_callback_url_is_the_one_the_browser_used_behind_a_proxy(own_app, fake):
    client = own_app(TRUSTED_PROXIES=1, TRUSTED_HOSTS=["chat.example.org"]).test_client()
    response = client.get("/signin", headers={"X-Forwarded-Proto": "https", "X-Forwarded-Host": "chat.example.org",
                                               "X-Forwarded-For": "203.0.113.9"}, base_url="http://127.0.0.1:8000")
    query = parse_qs(urlsplit(response.headers["Location"]).query)
    assert query["callback_url"] == ["https://chat.example.org/signin/callback"]
    direct = own_app().test_client().get("/signin", base_url="http://127.0.0.1:8123")
    assert parse_qs(urlsplit(direct.headers["Location"]).query)["callback_url"] == [
        "http://127.0.0.1:8123/signin/callback"]


def test_the_app_starts_without_a_key_and_says_nothing_about_spending(own_app):
    from webapp.factory import startup_warnings

    app = own_app(BIND="0.0.0.0:8000")
    assert startup_warnings(app.config) == []


def _bid(client, app):
    """This browser's id, as its stored session holds it (None before it has one)."""
    from flask import request

    cookie = client.get_cookie("session")
    with app.test_request_context(headers={"Cookie": f"session={cookie.value}"} if cookie else {}):
        return app.session_interface.open_session(app, request).get("browser")


def _no_key_for(app, *clients):
    box = app.extensions["signin_keys"]
    return all(_bid(c, app) is None or box.get(_bid(c, app)) is None for c in clients)


# --- the key never leaves the server -------------------------------------------------------------

def _everything_the_browser_got(responses, client):
    seen = []
    for response in responses:
        seen.append(response.get_data())
        seen.append("\n".join(f"{k}: {v}" for k, v in response.headers.items()).encode())
    seen.append(repr([(c.key, c.value) for c in client._cookies.values()]).encode())
    return b"\n".join(seen)


def _assert_nowhere(key, blob, where):
    for form in forms_of(key):
        assert form not in blob, f"the key (as {form[:12]!r}…) is in {where}"


@pytest.mark.rejections_expected
def test_the_key_never_leaves_the_server_with_the_file_store(own_app, fake, tmp_path, caplog):
    caplog.set_level(logging.DEBUG)
    app = own_app()
    client = app.test_client()
    key = sign_in(client, fake)
    responses = [client.get("/"), send(client, "hello"), client.get("/", follow_redirects=True),
                 client.post("/c/new/turns", data={"message": "streamed"})]
    fake.queue(error(401, "key rejected"))
    responses.append(send(client, "fails"))
    responses.append(client.get("/", follow_redirects=True))
    responses += [client.get("/signin/callback?code=again"), client.get("/models.json")]
    _assert_nowhere(key, _everything_the_browser_got(responses, client), "what the browser got")
    _assert_nowhere(key, "\n".join(r.getMessage() for r in caplog.records).encode(), "the log")
    on_disk = b"".join(p.read_bytes() for p in tmp_path.rglob("*") if p.is_file())
    _assert_nowhere(key, on_disk, "the store's files")
    assert app.extensions["signin_keys"].get(_bid(client, app)) == key  # yet it is there, encrypted


@pytest.mark.redis
def test_the_key_never_leaves_the_server_with_redis_and_holds_across_hosts(fake, tmp_path, redis_url):
    import redis

    def host():
        app = create_app(app_config(fake, tmp_path, SESSION_TYPE="redis", REDIS_URL=redis_url,
                                    OPENROUTER_API_KEY="", OPENROUTER_AUTH_URL=fake.auth_url, **OWN), env={})
        app.test_client_class = PageClient
        return app

    one, two = host(), host()
    client = one.test_client()
    key = sign_in(client, fake)
    elsewhere = two.test_client()  # another host, the same Redis
    elsewhere.set_cookie("session", client.get_cookie("session").value)
    send(elsewhere, "from the other host")
    assert keys_used(fake) == [key]
    server = redis.Redis.from_url(redis_url)
    names = server.keys("*")
    assert any(name.startswith(b"signin:") for name in names)
    dumped = b"\n".join(server.dump(name) or b"" for name in names) + b"\n".join(names)
    _assert_nowhere(key, dumped, "Redis")
    client.post("/signout")
    assert not any(name.startswith(b"signin:") for name in server.keys("*"))
    refused = send(elsewhere, "signed out everywhere")
    assert refused.status_code == 401


# --- under a real gunicorn -----------------------------------------------------------------------

def test_sign_in_under_gunicorn_holds_across_workers(fake, tmp_path):
    env = served_env(fake, tmp_path, "signin-gunicorn", OPENROUTER_API_KEY="", SIGN_IN_WITH_OPENROUTER="true",
                     OPENROUTER_AUTH_URL=fake.auth_url)
    with Gunicorn(env, tmp_path / "gunicorn.log", workers=2) as server:
        browser = Browser()
        page = browser.get(server.url + "/", timeout=30)
        assert SIGN_IN in page.text
        assert browser.post(server.url + "/c/new", data={"message": "too soon"}, timeout=30).status_code == 401
        # The browser follows the redirects itself: app → OpenRouter (the fake) → the app's callback.
        done = browser.get(server.url + "/signin", timeout=30)
        assert done.status_code == 200 and done.url == server.url + "/"
        assert [r.status_code for r in done.history] == [303, 302, 303]
        assert parse_qs(urlsplit(done.history[0].headers["Location"]).query)["callback_url"] == [
            server.url + "/signin/callback"]
        (key,) = fake.user_keys
        browser.tokens.clear()  # a new session id: a new CSRF token
        for i in range(6):  # spread over both workers
            assert browser.post(server.url + "/c/new", data={"message": f"turn {i}"}, timeout=30).status_code == 200
        assert keys_used(fake) == [key] * 6
        assert "Sign out" in browser.get(server.url + "/", timeout=30).text
        seen = b"".join([r.content for r in done.history] + [done.content])
        _assert_nowhere(key, seen + repr(browser.cookies.get_dict()).encode(), "what the browser got")
    _assert_nowhere(key, (tmp_path / "gunicorn.log").read_bytes(), "gunicorn's log")
    _assert_nowhere(key, b"".join(p.read_bytes() for p in tmp_path.rglob("*") if p.is_file()), "the store")

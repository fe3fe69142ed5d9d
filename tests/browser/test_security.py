"""Cross-site attacks, replayed in a real Chromium against the app under gunicorn.

The attacker is a tiny page server on loopback started here. Chromium treats `localhost` and
`127.0.0.1` as different sites, and two ports of one host as the same site but different origins:
the app is always `http://127.0.0.1:<port>`, a cross-site attacker `http://localhost:<other>`, a
same-site one (it can toss cookies, and the victim's SameSite=Lax cookie goes with its requests)
`http://127.0.0.1:<other>`. Each test fails on the app as it was before its protections (no
origin check, no CSRF token, no CSP, no duplicate-cookie check, no login).
"""

import itertools
import json
import re
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
import requests
from playwright.sync_api import expect

from tests.fake_openrouter import reply
from tests.serving import Gunicorn, served_env

USER = '[data-role="user"]'
ASSISTANT = '[data-role="assistant"]'
BOX = 'textarea[name="message"]'
WCAG = {"runOnly": {"type": "tag", "values": ["wcag2a", "wcag2aa", "wcag21a", "wcag21aa"]}}
PASSWORD = "correct horse battery staple"


# --- the attacker's site ---------------------------------------------------------------------------

class Attacker:
    """Serves the HTML pages a test gives it, each at a path of its own, on one loopback port."""

    def __init__(self):
        self.pages, self.numbers, self.headers = {}, itertools.count(), {}
        pages, headers = self.pages, self.headers

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def do_GET(self):
                body = pages.get(self.path.split("?")[0])
                self.send_response(200 if body else 404)
                for cookie in headers.get(self.path.split("?")[0], ()):
                    self.send_header("Set-Cookie", cookie)  # an HTTP cookie can replace an HttpOnly one
                self.send_header("Content-Type", "text/html; charset=utf-8")
                self.send_header("Content-Length", str(len(body or b"")))
                self.end_headers()
                self.wfile.write(body or b"")

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.port = self.server.server_address[1]
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def page(self, host, html, set_cookies=()):
        """The URL of a new page holding `html`, on `host` (localhost: cross-site; 127.0.0.1: same-site),
        answered with `set_cookies` as Set-Cookie headers."""
        path = f"/p{next(self.numbers)}"
        self.headers[path] = list(set_cookies)
        self.pages[path] = f"<!doctype html><html lang=en><title>prize</title>{html}</html>".encode()
        return f"http://{host}:{self.port}{path}"

    def close(self):
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture(scope="module")
def attacker():
    site = Attacker()
    yield site
    site.close()


CROSS_SITE, SAME_SITE = "localhost", "127.0.0.1"


# --- helpers ----------------------------------------------------------------------------------------

def send(page, text):
    expect(page.locator(".msg.writing")).to_have_count(0)
    page.fill(BOX, text)
    page.get_by_role("button", name="Send").click()


def converse(context, server, text):
    """A page of `context` holding a conversation of one turn, `text` and the fake's reply."""
    page = context.new_page()
    page.set_default_timeout(15000)
    page.goto(server.url + "/")
    send(page, text)
    expect(page.locator(ASSISTANT).last).to_have_text(f"Reply 1: {text}")
    return page


def session_cookies(context):
    return [c for c in context.cookies() if c["name"] == "session"]


def jar(context):
    """The session cookies as the attacker could change them (a refreshed expiry is no change)."""
    return sorted((c["value"], c["path"], c["httpOnly"], c["sameSite"]) for c in session_cookies(context))


def sid(context):
    (cookie,) = session_cookies(context)
    return cookie["value"]


def nothing_more_sent(fake, count, seconds=1.0):
    """True when the fake upstream got no request beyond its first `count` within `seconds`."""
    return not fake.wait_for_requests(count + 1, timeout=seconds)


def sent_upstream(fake):
    return json.dumps([r["body"] for r in fake.requests])


def posted_to(server, ending):
    """A predicate for expect_response: a POST to the app whose path ends with `ending`."""
    return lambda r: r.request.method == "POST" and r.url.startswith(server.url) and r.url.endswith(ending)


def form_post(action, message):
    return (f'<form method="post" action="{action}"><input name="message" value="{message}"></form>'
            "<script>document.forms[0].submit()</script>")


def no_axe_violations(page):
    from axe_playwright_python.sync_playwright import Axe

    for scheme in ("light", "dark"):
        page.emulate_media(color_scheme=scheme)
        results = Axe().run(page, options=WCAG)
        assert results.violations_count == 0, f"{scheme}: {results.generate_report()}"


# --- 1-3: forged requests from another site ------------------------------------------------------------

def test_a_cross_site_form_post_is_refused_and_changes_nothing(context, server, fake, attacker):
    victim = converse(context, server, "my own question")
    cookies, count = jar(context), len(fake.requests)
    evil = context.new_page()
    with evil.expect_response(lambda r: r.url == server.url + "/" and r.request.method == "POST") as posted:
        evil.goto(attacker.page(CROSS_SITE, form_post(server.url + "/", "spend credits")))
    assert posted.value.status == 403
    expect(evil.locator("h2")).to_have_text("Blocked: another site (403)")
    expect(evil.locator("textarea")).to_have_count(0)  # the other site's text is not offered back
    assert nothing_more_sent(fake, count)
    assert "spend credits" not in sent_upstream(fake)
    assert jar(context) == cookies
    victim.reload()
    expect(victim.locator(USER)).to_have_text(["my own question"])
    expect(victim.locator(ASSISTANT)).to_have_text(["Reply 1: my own question"])


def test_same_site_form_posts_to_new_and_send_carry_the_cookie_and_are_refused(context, server, fake, attacker):
    victim = converse(context, server, "keep this conversation")
    cookies, count = jar(context), len(fake.requests)
    for action in ("/new", "/"):
        evil = context.new_page()
        with evil.expect_response(lambda r: r.url == server.url + action and r.request.method == "POST") as posted:
            evil.goto(attacker.page(SAME_SITE, form_post(server.url + action, "spend credits")))
        # A genuine same-site attack: the victim's Lax cookie went with it.
        assert f"session={cookies[0][0]}" in (posted.value.request.header_value("cookie") or "")
        assert posted.value.status == 403, action
        expect(evil.locator("h2")).to_have_text("Blocked: another site (403)")
        evil.close()
    assert nothing_more_sent(fake, count)
    assert jar(context) == cookies
    victim.reload()
    expect(victim.locator(USER)).to_have_text(["keep this conversation"])
    expect(victim.locator(ASSISTANT)).to_have_text(["Reply 1: keep this conversation"])


@pytest.mark.parametrize("site", [CROSS_SITE, SAME_SITE])
def test_a_no_cors_fetch_to_turns_from_another_site_reaches_nobody_upstream(context, server, fake, attacker, site):
    victim = converse(context, server, "private")
    count = len(fake.requests)
    evil = context.new_page()
    script = f"""<script>
      fetch("{server.url}/turns", {{method: "POST", mode: "no-cors", credentials: "include",
            body: new URLSearchParams({{message: "x"}})}})
        .then(r => document.title = "sent " + r.type, e => document.title = "failed");
    </script>"""
    with evil.expect_response(lambda r: r.url == server.url + "/turns") as posted:
        evil.goto(attacker.page(site, script))
    expect(evil).to_have_title("sent opaque")
    assert posted.value.status == 403
    assert nothing_more_sent(fake, count)
    victim.reload()
    expect(victim.locator(USER)).to_have_text(["private"])


# --- 4: cookie tossing and fixation from another port of the same host ----------------------------------

TOSSED_PATHS = ("/turns", "/c", "/new")


def plant(context, attacker, *cookies):
    """Visit the same-site attacker's page in `context`; it writes `cookies` with document.cookie."""
    lines = "".join(f"document.cookie = {json.dumps(c)};" for c in cookies)
    evil = context.new_page()
    evil.goto(attacker.page(SAME_SITE, f'<script>{lines} document.title = "planted";</script>'))
    expect(evil).to_have_title("planted")
    evil.close()


def test_a_tossed_session_cookie_is_refused_and_never_gets_the_victims_message(browser, context, server, fake, attacker):
    their_context = browser.new_context()
    theirs = converse(their_context, server, "the attacker's own question")
    victim = converse(context, server, "the victim's question")
    # Longer paths than the victim's Path=/ cookie, so Chromium sends them first: where the page
    # streams a send (/turns, /c/<id>/turns) and where New chat posts (/new).
    planted = sid(their_context)
    plant(context, attacker, *(f"session={planted}; path={path}" for path in TOSSED_PATHS))
    assert len(session_cookies(context)) == 1 + len(TOSSED_PATHS)
    count = len(fake.requests)
    victim.goto(server.url + "/")  # GET / carries the victim's own cookie only
    expect(victim.locator(USER)).to_have_text(["the victim's question"])
    with victim.expect_response(posted_to(server, "/turns")) as streamed:
        send(victim, "the victim's secret")
    assert streamed.value.status == 400
    expect(victim.locator("#error")).to_contain_text("session cookie twice")  # the reason, not a code
    expect(victim.locator(BOX)).to_have_value("the victim's secret")  # nothing lost
    assert nothing_more_sent(fake, count)
    # A page that meets two cookies says so plainly: New chat posts to /new.
    with victim.expect_response(lambda r: r.url == server.url + "/new") as posted:
        victim.get_by_role("button", name="New chat").click()
    assert posted.value.status == 400
    expect(victim.locator("h2")).to_have_text("Two session cookies (400)")
    expect(victim.locator("main")).to_contain_text("Clear this site's cookies")
    theirs.goto(server.url + "/")
    expect(theirs.locator(USER)).to_have_text(["the attacker's own question"])
    assert "the victim's secret" not in theirs.content()
    victim.goto(server.url + "/")
    expect(victim.locator(USER)).to_have_text(["the victim's question"])
    their_context.close()


def test_a_planted_anonymous_session_id_is_replaced_at_the_first_send(browser, context, server, fake, attacker):
    their_context = browser.new_context()
    theirs = their_context.new_page()
    theirs.goto(server.url + "/")  # a real session id, holding only a CSRF token
    planted = sid(their_context)
    plant(context, attacker, f"session={planted}; path=/")
    converse(context, server, "the victim's first words")
    assert sid(context) != planted
    theirs.reload()
    expect(theirs.locator(USER)).to_have_count(0)
    assert "the victim's first words" not in theirs.content()
    their_context.close()


@pytest.mark.xfail(strict=True, reason=(
    "KNOWN LIMIT over plain HTTP (README, Security: residual risk): the server cannot tell a planted "
    "session id from the browser's own once it holds conversations; issuing a new id at every send "
    "would break two tabs sending at once. Serve over HTTPS with SESSION_COOKIE_SECURE=true. "
    "Session fixation with an established session: the session id is issued anew at a send only when "
    "the session has no 'browser' id yet (webapp/ownership.py Browser.claim() calls "
    "sessions.rotate only when bid is None). An id planted with Path=/ from another port of the same "
    "host that already holds the attacker's conversations is therefore kept at the victim's first "
    "send: GET / shows the victim the attacker's latest conversation, what the victim sends lands in "
    "it, and the attacker's own browser reads it."))
def test_a_planted_session_id_with_a_conversation_is_replaced_at_the_first_send(browser, context, server, fake, attacker):
    their_context = browser.new_context()
    theirs = converse(their_context, server, "the attacker's own question")
    planted = sid(their_context)
    plant(context, attacker, f"session={planted}; path=/")  # the victim has no cookie yet
    victim = context.new_page()
    victim.goto(server.url + "/")
    send(victim, "the victim's secret")
    expect(victim.locator(ASSISTANT).last).to_contain_text("the victim's secret")
    theirs.goto(server.url + "/")
    leaked = "the victim's secret" in theirs.content()
    kept = sid(context) == planted
    their_context.close()
    assert not leaked, "the attacker's own browser shows the victim's message"
    assert not kept, "the victim's first send kept the planted session id"


def swap(context, attacker, planted):
    """A page on another port of this host replaces the session cookie outright: an HTTP Set-Cookie
    with the same name and path (no cookie attribute stops that: cookies ignore ports)."""
    evil = context.new_page()
    evil.goto(attacker.page(SAME_SITE, '<script>document.title = "swapped";</script>',
                            [f"session={planted}; Path=/; HttpOnly; SameSite=Lax"]))
    expect(evil).to_have_title("swapped")
    evil.close()


def test_a_session_swapped_in_from_another_port_is_caught_by_the_page(browser, context, server, fake, attacker):
    their_context = browser.new_context()
    theirs = converse(their_context, server, "the attacker's own question")
    victim = converse(context, server, "the victim's question")  # its page remembers its session
    victim.reload()
    expect(victim.locator("#session-warning")).to_be_hidden()  # its own session: no alarm
    swap(context, attacker, sid(their_context))
    assert sid(context) == sid(their_context)
    victim.goto(server.url + "/")
    warning = victim.locator("#session-warning")
    expect(warning).to_be_visible()
    expect(victim.get_by_role("alert")).to_contain_text("session changed")
    expect(victim.get_by_role("button", name="Send")).to_be_disabled()  # nothing goes in unasked
    victim.get_by_role("button", name="Start a fresh session").click()
    expect(victim.locator(USER)).to_have_count(0)  # none of the attacker's conversations
    expect(victim.locator("#session-warning")).to_be_hidden()
    send(victim, "the victim's secret")
    expect(victim.locator(ASSISTANT).last).to_have_text("Reply 1: the victim's secret")
    assert sid(context) != sid(their_context)
    theirs.goto(server.url + "/")
    assert "the victim's secret" not in theirs.content()
    victim.reload()
    expect(victim.locator("#session-warning")).to_be_hidden()  # the new session is the one it knows
    their_context.close()


def test_keeping_a_changed_session_is_the_persons_choice(browser, context, server, fake, attacker):
    their_context = browser.new_context()
    converse(their_context, server, "another session's question")
    victim = converse(context, server, "my question")
    swap(context, attacker, sid(their_context))
    victim.goto(server.url + "/")
    victim.get_by_role("button", name="Keep this session").click()
    expect(victim.locator("#session-warning")).to_be_hidden()
    expect(victim.get_by_role("button", name="Send")).to_be_enabled()
    victim.reload()
    expect(victim.locator("#session-warning")).to_be_hidden()  # remembered
    their_context.close()


# --- 5: the app's own page under its Content-Security-Policy ------------------------------------------

ALIGNED = """Code first.

```python
def total(xs):
    return sum(xs)
```

| item | price |
|:-----|------:|
| tea  |  3.50 |
| cake | 12.00 |
"""

WATCH_CSP = """
window.__csp = [];
document.addEventListener("securitypolicyviolation",
    e => window.__csp.push(e.violatedDirective + " " + (e.blockedURI || "")));
"""


def test_the_chat_works_under_its_content_security_policy(browser, server, fake):
    context = browser.new_context(viewport={"width": 1000, "height": 800},
                                  permissions=["clipboard-read", "clipboard-write"])
    context.add_init_script(WATCH_CSP)
    page = context.new_page()
    page.set_default_timeout(15000)
    console = []
    page.on("console", lambda m: console.append(m.text))
    response = page.goto(server.url + "/")
    policy = response.headers.get("content-security-policy", "")
    assert "script-src 'self'" in policy and "style-src 'self'" in policy and "unsafe" not in policy

    gate = threading.Event()
    fake.queue(reply(ALIGNED, gate=gate, chunks=[ALIGNED[:60], ALIGNED[60:]]))
    send(page, "a table please")
    answer = page.locator(ASSISTANT).last
    expect(answer.locator("pre code")).to_contain_text("def total")  # rendered while it streams
    gate.set()
    expect(answer.locator("td").last).to_have_text("12.00")
    expect(answer.locator("td").nth(1)).to_have_css("text-align", "right")
    expect(answer.locator("th").nth(1)).to_have_css("text-align", "right")
    expect(answer.locator("td").first).to_have_css("text-align", "left")

    page.get_by_role("button", name="Copy the reply").click()
    expect(page.get_by_role("button", name="Copy the reply")).to_have_text("Copied")
    page.get_by_role("button", name="Copy code block 1").click()
    expect(page.get_by_role("button", name="Copy code block 1")).to_have_text("Copied")
    page.get_by_role("button", name="Edit").click()
    expect(page.locator(BOX)).to_have_value("a table please")
    page.locator(BOX).press("Escape")
    expect(page.locator(BOX)).to_have_value("")

    fake.queue(reply("word " * 400, chunk_delay=0.03))
    send(page, "go on")
    expect(page.locator(ASSISTANT).last).to_contain_text("word word")
    page.get_by_role("button", name="Stop").click()
    expect(page.locator(".msg.assistant .note").last).to_have_text("Stopped.")

    page.reload()  # the server-rendered conversation, aligned the same way
    expect(page.locator(f"{ASSISTANT} td").nth(1)).to_have_css("text-align", "right")
    page.wait_for_timeout(300)
    csp_messages = [text for text in console if "Content Security Policy" in text]
    assert csp_messages == [] and page.evaluate("window.__csp") == []

    # The watch works, and the policy is enforced: an injected inline script is refused and reported.
    page.evaluate("""() => { const s = document.createElement("script");
        s.textContent = "window.injected = 1"; document.head.append(s); }""")
    page.wait_for_timeout(200)
    assert page.evaluate("typeof window.injected") == "undefined"
    assert any("script-src" in v for v in page.evaluate("window.__csp"))
    assert any("Content Security Policy" in text for text in console)
    context.close()


# --- 6: ACCESS_PASSWORD -----------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def guarded(fake_server, tmp_path_factory):
    """The app with ACCESS_PASSWORD set, under its own gunicorn (one worker: one set of limit counters)."""
    path = tmp_path_factory.mktemp("guarded")
    env = served_env(fake_server, path, "guarded-test", RATE_LIMIT_PER_ADDRESS="off", ACCESS_PASSWORD=PASSWORD)
    with Gunicorn(env, path / "gunicorn.log", workers=1) as running:
        yield running


def log_in(page, password):
    page.fill("#password", password)
    page.get_by_role("button", name="Log in").click()


def test_the_login_page_has_no_wcag_violations_with_or_without_an_error(browser, guarded, fake):
    context = browser.new_context(viewport={"width": 1000, "height": 800})
    page = context.new_page()
    page.goto(guarded.url + "/")
    expect(page).to_have_url(guarded.url + "/login?next=/")
    expect(page.locator("h2")).to_have_text("Log in")
    no_axe_violations(page)
    log_in(page, "wrong")
    expect(page.get_by_role("alert")).to_have_text("That password is not right.")
    no_axe_violations(page)
    context.close()


@pytest.mark.parametrize("js", [True, False], ids=["js", "no-js"])
def test_a_wrong_password_is_refused_and_the_right_one_opens_a_working_chat(browser, guarded, fake, js):
    context = browser.new_context(java_script_enabled=js)
    page = context.new_page()
    page.set_default_timeout(15000)
    page.goto(guarded.url + "/")
    expect(page).to_have_url(guarded.url + "/login?next=/")
    log_in(page, "not the password")
    expect(page.get_by_role("alert")).to_have_text("That password is not right.")
    expect(page.locator(BOX)).to_have_count(0)
    assert requests.get(guarded.url + "/", allow_redirects=False, timeout=10).status_code == 302  # still closed
    before = sid(context)  # the login page's own session, holding its CSRF token
    log_in(page, PASSWORD)
    expect(page).to_have_url(guarded.url + "/")
    assert sid(context) != before  # a new session id at login: a planted one never gets the login
    send(page, "hello behind the door")
    expect(page.locator(ASSISTANT).last).to_have_text("Reply 1: hello behind the door")
    assert "hello behind the door" in sent_upstream(fake)
    context.close()


# --- 7: a form whose CSRF token no longer matches --------------------------------------------------------

def expire_and_send(page, text):
    """The chat page's form posted after its token stopped matching any session (cookies cleared)."""
    page.context.clear_cookies()
    page.fill(BOX, text)


def test_an_expired_form_shows_a_400_page_that_keeps_the_text_and_sends_it(browser, server, fake):
    context = browser.new_context(java_script_enabled=False)
    page = context.new_page()
    page.set_default_timeout(15000)
    page.goto(server.url + "/")
    expire_and_send(page, "please do not lose this")
    with page.expect_response(posted_to(server, "")) as posted:
        page.get_by_role("button", name="Send").click()
    assert posted.value.status == 400
    expect(page.locator("h2")).to_have_text("Form expired (400)")
    expect(page.locator(BOX)).to_have_value("please do not lose this")
    expect(page.get_by_role("button", name="Send")).to_be_visible()
    assert fake.requests == []
    page.get_by_role("button", name="Send").click()
    expect(page.locator(ASSISTANT).last).to_have_text("Reply 1: please do not lose this")
    assert "please do not lose this" in sent_upstream(fake)
    context.close()


def test_the_expired_form_page_has_no_wcag_violations(context, server, fake):
    # axe runs in the page, so script is on here; form.submit() posts as a page without script does.
    page = context.new_page()
    page.goto(server.url + "/")
    expire_and_send(page, "kept for axe")
    with page.expect_response(posted_to(server, "")) as posted:
        page.locator("#composer").evaluate("form => form.submit()")
    assert posted.value.status == 400
    expect(page.locator(BOX)).to_have_value("kept for axe")
    no_axe_violations(page)


# --- failed logins ---------------------------------------------------------------------------------------

def test_failed_logins_meet_the_login_rate_limit(guarded):
    """Last in this module: it spends the address's failed-login allowance (10 a minute by default)."""
    client = requests.Session()
    token = re.search(r'name="csrf_token" value="([^"]+)"', client.get(guarded.url + "/login", timeout=10).text).group(1)
    statuses = [client.post(guarded.url + "/login", data={"csrf_token": token, "password": f"guess {i}"},
                          timeout=10).status_code
                for i in range(11)]
    assert statuses[-1] == 429 and set(statuses) <= {401, 429}, statuses

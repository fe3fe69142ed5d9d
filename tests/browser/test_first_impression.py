"""What a first-time user meets: edit mode that cannot eat a turn, Stop in every phase, a page that
opens at the latest message with the box at the bottom, markdown while it streams, touch typing."""

import threading

import pytest
import requests
from playwright.sync_api import expect

from tests.serving import Browser
from tests.sse import wait_for
from tests.fake_openrouter import hang, reply

USER = '[data-role="user"]'
ASSISTANT = '[data-role="assistant"]'
BOX = 'textarea[name="message"]'
STREAMED_MD = """Intro line.

```python
print("hi")
```

| a | b |
|---|---|
| 1 | 2 |
"""


def send(page, text):
    expect(page.locator(".msg.writing")).to_have_count(0)
    page.fill(BOX, text)
    page.get_by_role("button", name="Send").click()


def settled(page):
    expect(page.locator(".msg.writing")).to_have_count(0)


def fill_conversation(server, turns=12):
    """A long conversation in a fresh cookie jar, made through the JS-off form; returns the cookies."""
    browser = Browser()
    for i in range(turns):
        browser.post(server.url + "/", data={"message": f"question {i}\n" + "a long line of text " * 30})
    return browser.cookies


def open_with(context, server, cookies):
    for cookie in cookies:
        context.add_cookies([{"name": cookie.name, "value": cookie.value, "url": server.url}])
    page = context.new_page()
    page.goto(server.url + "/")
    return page


def in_view(page, selector):
    """True when the element's box lies inside the window."""
    return page.evaluate("""(sel) => { const r = document.querySelector(sel).getBoundingClientRect();
        return r.top >= 0 && r.bottom <= window.innerHeight + 1 && r.height > 0; }""", selector)


# --- edit mode -------------------------------------------------------------------------------------

def test_edit_shows_cancel_escape_cancels_and_a_send_leaves_edit_mode(page, fake):
    send(page, "first question")
    settled(page)
    page.get_by_role("button", name="Edit").click()
    expect(page.locator(BOX)).to_have_value("first question")
    expect(page.get_by_role("button", name="Cancel")).to_be_visible()
    expect(page.locator("#editing")).to_be_visible()
    page.locator(BOX).press("Escape")
    expect(page.get_by_role("button", name="Cancel")).to_be_hidden()
    expect(page.locator(BOX)).to_have_value("")
    # The trap: after Edit and Cancel, a new question is a new turn and the old one stays.
    send(page, "second question")
    settled(page)
    expect(page.locator(USER)).to_have_text(["first question", "second question"])
    page.get_by_role("button", name="Edit").last.click()
    page.get_by_role("button", name="Cancel").click()
    expect(page.locator('input[name="edit"]')).to_have_value("")
    page.get_by_role("button", name="Edit").last.click()
    page.fill(BOX, "second question, edited")
    page.get_by_role("button", name="Send").click()
    expect(page.locator("#editing")).to_be_hidden()  # edit mode ends with the send
    expect(page.locator(ASSISTANT).last).to_have_text("Reply 2: second question, edited")
    expect(page.locator(USER)).to_have_text(["first question", "second question, edited"])
    page.reload()
    expect(page.locator(USER)).to_have_text(["first question", "second question, edited"])


def test_an_edit_after_another_tab_sent_keeps_that_turn_as_the_previous_version(context, server, fake):
    """Another tab sent while this one edited: the edit makes a new version of the edited message, and
    the other tab's turn is kept (Previous version), never lost or silently replaced."""
    first = context.new_page()
    first.goto(server.url + "/")
    send(first, "original")
    settled(first)
    first.get_by_role("button", name="Edit").click()
    first.fill(BOX, "original, edited")
    other = context.new_page()
    other.goto(server.url + "/")
    send(other, "from the other tab")
    expect(other.locator(ASSISTANT).last).to_have_text("Reply 2: from the other tab")
    first.get_by_role("button", name="Send").click()
    expect(first.locator(ASSISTANT).last).to_have_text("Reply 1: original, edited")
    first.reload()
    expect(first.locator(USER)).to_have_text(["original, edited"])
    first.get_by_role("button", name="Previous version").click()
    expect(first.locator(USER)).to_have_text(["original", "from the other tab"])


def test_edit_and_cancel_without_javascript(browser, server, fake):
    context = browser.new_context(java_script_enabled=False)
    page = context.new_page()
    page.goto(server.url + "/")
    send(page, "no script")
    page.get_by_role("button", name="Edit").click()
    expect(page.locator(BOX)).to_have_value("no script")
    page.get_by_role("button", name="Cancel").click()
    expect(page.get_by_role("button", name="Cancel")).to_have_count(0)
    expect(page.locator(BOX)).to_have_value("")
    expect(page.locator(USER)).to_have_text(["no script"])
    context.close()


# --- Stop -------------------------------------------------------------------------------------------

def test_send_becomes_stop_and_stop_before_any_words_gives_the_text_back(page, fake):
    fake.queue(hang(20))
    send(page, "never mind")
    expect(page.get_by_role("button", name="Stop")).to_be_visible()
    expect(page.get_by_role("button", name="Send")).to_have_count(0)
    page.get_by_role("button", name="Stop").click()
    # Stop pressed before the stream names its turn waits for the name (the turn is already being
    # answered), then stops it; on a loaded machine that can take a few seconds. The half-second
    # Stop itself is measured server-side (test_streaming.py, test_worker_classes.py).
    expect(page.locator("#notice")).to_contain_text("Stopped before the model answered", timeout=10000)
    expect(page.locator(BOX)).to_have_value("never mind")
    expect(page.locator("#error")).to_be_hidden()  # the user's own choice: no red alert
    expect(page.locator(USER)).to_have_count(0)
    expect(page.get_by_role("button", name="Send")).to_be_visible()
    expect(page.get_by_role("button", name="Stop")).to_have_count(0)
    page.reload()
    expect(page.locator(BOX)).to_have_value("never mind")
    expect(page.locator("#notice")).to_contain_text("Stopped before the model answered")
    expect(page.locator("#error")).to_be_hidden()


def test_stop_pressed_before_a_new_conversation_is_named_stops_it_there(page, fake):
    # CI caught this race: Stop pressed on a first send before its stream said "started" was sent,
    # when the name came, to the conversation "new" (404), and the reply went on being written.
    # Holding the send's request makes the race certain: Stop is pressed before the server sees it.
    held = []
    page.route("**/turns", lambda route: held.append(route))
    fake.queue(hang(20))
    with page.expect_request("**/turns"):
        send(page, "never mind")
    page.get_by_role("button", name="Stop").click()
    for _ in range(100):  # the route's message may follow the request's: let Playwright take it
        if held:
            break
        page.wait_for_timeout(50)
    held[0].continue_()
    expect(page.locator("#notice")).to_contain_text("Stopped before the model answered", timeout=10000)
    expect(page.locator(BOX)).to_have_value("never mind")
    expect(page.get_by_role("button", name="Send")).to_be_visible()
    assert wait_for(lambda: fake.disconnects == 1)  # the upstream request was cut, not left to run on


def test_the_still_writing_notice_clears_when_the_reply_finishes(page, fake):
    gate = threading.Event()
    fake.queue(reply("slow answer", gate=gate, chunks=["slow", " answer"]))
    send(page, "one")
    expect(page.locator(ASSISTANT).last).to_have_text("slow")
    page.fill(BOX, "two")
    page.locator(BOX).press("Enter")
    expect(page.locator("#notice")).to_contain_text("still being written")
    expect(page.locator("#error")).to_be_hidden()
    gate.set()
    expect(page.locator(ASSISTANT).last).to_have_text("slow answer")
    expect(page.locator("#notice")).to_be_hidden()
    expect(page.locator(BOX)).to_have_value("two")  # the waiting text is still there to send


# --- the page -----------------------------------------------------------------------------------------

@pytest.mark.parametrize("size", [(1280, 800), (390, 844)])
@pytest.mark.parametrize("js", [True, False])
def test_a_long_conversation_opens_at_its_latest_message_with_the_box_at_the_bottom(browser, server, fake, size, js):
    cookies = fill_conversation(server)
    context = browser.new_context(viewport={"width": size[0], "height": size[1]}, java_script_enabled=js)
    page = open_with(context, server, cookies)
    expect(page.locator(USER)).to_have_count(12)
    assert page.evaluate("document.documentElement.scrollHeight <= window.innerHeight + 1")  # no page scroll
    assert in_view(page, BOX)
    assert page.evaluate("""() => { const r = document.querySelector('textarea').getBoundingClientRect();
        return window.innerHeight - r.bottom < 120; }""")  # the box sits at the bottom
    assert in_view(page, f"article:last-of-type {ASSISTANT}") or page.evaluate(
        "document.querySelector('#latest').getBoundingClientRect().top < window.innerHeight")
    context.close()


def test_jump_to_latest_appears_when_scrolled_up(browser, server, fake):
    cookies = fill_conversation(server)
    context = browser.new_context(viewport={"width": 1280, "height": 800})
    page = open_with(context, server, cookies)
    jump = page.get_by_role("button", name="Jump to latest")
    expect(jump).to_be_hidden()
    page.locator("#scroller").evaluate("el => el.scrollBy(0, -2000)")
    expect(jump).to_be_visible()
    jump.click()
    expect(jump).to_be_hidden()
    # (wait_for_function would eval a string in the page, which the app's CSP rightly forbids)
    for _ in range(50):
        if page.evaluate("Math.abs(document.querySelector('#scroller').scrollTop)") < 5:
            break
        page.wait_for_timeout(100)
    else:
        raise AssertionError("Jump to latest did not scroll to the end")
    context.close()


def test_markdown_renders_while_the_reply_streams(page, fake):
    gate = threading.Event()
    head, tail = STREAMED_MD[:60], STREAMED_MD[60:]
    fake.queue(reply(STREAMED_MD, gate=gate, chunks=[head, tail]))
    send(page, "format something")
    answer = page.locator(ASSISTANT).last
    # Before the reply ends (the fake holds the rest), the code block is already a rendered <pre>.
    expect(answer.locator("pre code")).to_contain_text('print("hi")')
    assert not gate.is_set()
    expect(answer).not_to_contain_text("```")
    gate.set()
    expect(answer.locator("table td").first).to_have_text("1")
    settled(page)


def test_on_a_touch_screen_enter_adds_a_line_and_the_send_button_sends(browser, server, fake):
    context = browser.new_context(viewport={"width": 390, "height": 844}, has_touch=True, is_mobile=True)
    page = context.new_page()
    page.goto(server.url + "/")
    expect(page.locator(".enter-hint")).to_be_hidden()  # "Shift+Enter" means nothing here
    page.locator(BOX).tap()
    page.keyboard.type("line one")
    page.keyboard.press("Enter")
    page.keyboard.type("line two")
    expect(page.locator(USER)).to_have_count(0)
    expect(page.locator(BOX)).to_have_value("line one\nline two")
    page.get_by_role("button", name="Send").tap()
    expect(page.locator(ASSISTANT).last).to_have_text("Reply 1: line one\nline two")
    context.close()


def test_desktop_focuses_the_box_and_each_reply_shows_its_model_and_time(page, fake):
    expect(page.locator(BOX)).to_be_focused()
    expect(page.locator(BOX)).to_have_attribute("placeholder", "Message the model…")
    page.keyboard.type("hello")
    page.keyboard.press("Enter")
    meta = page.locator(".msg.assistant .meta").last
    expect(meta).to_contain_text("openai/o4-mini")
    expect(meta.locator("time")).to_have_count(1)
    expect(page).to_have_title("hello · Chat")
    page.reload()
    expect(page).to_have_title("hello · Chat")
    expect(page.locator(".msg.assistant .meta time")).to_have_attribute("datetime", __import__("re").compile("Z$"))


def test_the_favicon_loads_and_no_request_fails(context, server, fake):
    failures = []
    page = context.new_page()
    page.on("response", lambda r: r.status >= 400 and failures.append(r.url))
    page.on("console", lambda m: m.type == "error" and failures.append(m.text))
    page.goto(server.url + "/")
    send(page, "hi")
    settled(page)
    page.reload()
    href = page.locator('link[rel="icon"]').get_attribute("href")
    assert requests.get(server.url + href).headers["Content-Type"].startswith("image/svg+xml")
    assert requests.get(server.url + "/favicon.ico").status_code == 200
    assert failures == []


def test_message_actions_show_on_hover_and_keyboard_focus(page, fake):
    send(page, "hello")
    settled(page)
    tools = page.locator(".msg.assistant .tools").last
    page.mouse.move(0, 0)
    expect(tools).to_have_css("opacity", "0")
    page.locator(".msg.assistant").last.hover()
    expect(tools).to_have_css("opacity", "1")
    page.mouse.move(0, 0)
    page.get_by_role("button", name="Copy the reply").focus()
    expect(tools).to_have_css("opacity", "1")
    expect(page.get_by_role("button", name="Regenerate")).to_have_count(1)


def test_stop_while_queued_behind_another_reply_gives_the_text_back(context, server, fake):
    """A send waiting behind another tab's reply has no turn yet: Stop abandons it, nothing is sent."""
    first, second = context.new_page(), context.new_page()
    first.goto(server.url + "/")
    send(first, "start")
    expect(first.locator(ASSISTANT).last).to_have_text("Reply 1: start")
    second.goto(first.url)
    gate = threading.Event()
    fake.queue(reply("the first reply", gate=gate, chunks=["the first", " reply"]))
    send(first, "first")
    expect(first.locator(ASSISTANT).last).to_have_text("the first")
    second.fill(BOX, "queued words")
    second.get_by_role("button", name="Send").click()
    expect(second.locator(".thinking")).to_contain_text("Waiting for the reply before this one")
    second.get_by_role("button", name="Stop").click()
    expect(second.locator(BOX)).to_have_value("queued words")
    expect(second.locator("#notice")).to_contain_text("Not sent")
    gate.set()
    expect(first.locator(ASSISTANT).last).to_have_text("the first reply")
    second.wait_for_timeout(1500)  # the queued send would have started by now
    assert [len(r["body"]["input"]) for r in fake.requests] == [1, 3]  # "queued words" never went

"""What a person sees and does in a real browser: streaming, Stop, reloads, tabs, safe markdown, a11y."""

import os
import threading

import pytest
from playwright.sync_api import expect

from tests.fake_openrouter import reply, stream_error

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
HOSTILE = """Here goes: <script>window.pwned = 1</script>
<img src=x onerror="window.pwned = 1">

[a link](javascript:window.pwned=1) and <a href="javascript:window.pwned=1">raw</a>

<b onmouseover="window.pwned=1">hover me</b>
"""
RICH = """Here is a function and a table.

```python
def greet(name: str) -> str:
    return f"Hello, {name}!"
```

| language | typing |
|----------|--------|
| Python   | dynamic |
| Rust     | static  |

Done. ~~Nothing~~ everything works.
"""

USER = '[data-role="user"]'
ASSISTANT = '[data-role="assistant"]'


def send(page, text):
    # A send while a reply is still being written is refused by design; wait as a person would.
    expect(page.locator(".msg.writing")).to_have_count(0)
    page.fill('textarea[name="message"]', text)
    page.click('button:text-is("Send")')


def test_two_turns_with_js_stream_and_the_reply_grows_before_it_completes(page, fake):
    gate = threading.Event()
    fake.queue(reply("First words, then the rest of the answer.", gate=gate,
                     chunks=["First words,", " then the rest of the answer."]))
    page.evaluate("window.sameDocument = true")  # gone if the page reloads
    send(page, "hello there")
    expect(page.locator(USER).last).to_have_text("hello there")
    expect(page.locator(ASSISTANT).last).to_have_text("First words,")  # visible while upstream holds
    assert not gate.is_set()
    gate.set()
    expect(page.locator(ASSISTANT).last).to_have_text("First words, then the rest of the answer.")
    expect(page.locator('button:text-is("Stop")')).to_have_count(0)
    send(page, "and again")
    expect(page.locator(ASSISTANT).nth(1)).to_have_text("Reply 2: and again")
    assert page.evaluate("window.sameDocument") is True  # no page load: the page streamed in place
    assert "/c/" in page.url  # ...and took the new conversation's own address
    page.reload()
    expect(page.locator(USER)).to_have_count(2)
    assert len(fake.requests[-1]["body"]["input"]) == 3


def test_two_turns_with_js_off(browser, server, fake):
    context = browser.new_context(java_script_enabled=False)
    page = context.new_page()
    page.goto(server.url + "/")
    send(page, "no script here")
    expect(page.locator(ASSISTANT).last).to_have_text("Reply 1: no script here")
    send(page, "second")
    expect(page.locator(ASSISTANT).last).to_have_text("Reply 2: second")
    expect(page.locator(USER)).to_have_text(["no script here", "second"])
    context.close()


def test_hostile_model_output_renders_as_text_and_never_runs(page, fake):
    gate = threading.Event()
    fake.queue(reply(HOSTILE, gate=gate))
    send(page, "say something nasty")
    expect(page.locator(ASSISTANT).last).to_contain_text("Here")
    gate.set()
    expect(page.locator(ASSISTANT).last).to_contain_text("hover me")
    page.hover("text=hover me")
    page.locator(f"{ASSISTANT} >> text=a link").click()
    assert page.evaluate("typeof window.pwned") == "undefined"
    assert page.locator(f"{ASSISTANT} script, {ASSISTANT} img").count() == 0
    expect(page.locator(ASSISTANT).last).to_contain_text("<script>window.pwned = 1</script>")
    page.reload()  # the server-rendered page is just as safe
    assert page.evaluate("typeof window.pwned") == "undefined"
    expect(page.locator(ASSISTANT).last).to_contain_text('<img src=x onerror="window.pwned = 1">')


def test_markdown_tables_and_highlighted_code_render(page, fake):
    fake.queue(reply(RICH))
    send(page, "show me code and a table")
    answer = page.locator(ASSISTANT).last
    expect(answer.locator("table td").first).to_have_text("Python")
    expect(answer.locator("pre code span.k").first).to_have_text("def")
    expect(answer.locator("s")).to_have_text("Nothing")
    expect(answer.locator("pre button.copy")).to_have_count(1)
    page.set_viewport_size({"width": 900, "height": 760})
    os.makedirs(os.path.join(ROOT, "build"), exist_ok=True)  # git-ignored: tests never touch docs/
    shot = page.screenshot(path=os.path.join(ROOT, "build", "screenshot.png"))
    if os.environ.get("REFRESH_SCREENSHOT") == "1":  # the explicit refresh of the README's picture
        with open(os.path.join(ROOT, "docs", "screenshot.png"), "wb") as f:
            f.write(shot)


def test_reload_mid_stream_keeps_the_reply_and_picks_it_up(page, fake):
    gate = threading.Event()
    fake.queue(reply("Part one. Part two.", gate=gate, chunks=["Part one.", " Part two."]))
    send(page, "long answer please")
    expect(page.locator(ASSISTANT).last).to_have_text("Part one.")
    page.wait_for_timeout(700)  # let the progress save (every half second)
    page.reload()
    expect(page.locator(USER).last).to_have_text("long answer please")
    expect(page.locator(ASSISTANT).last).to_have_text("Part one.")
    gate.set()
    expect(page.locator(ASSISTANT).last).to_have_text("Part one. Part two.")
    page.reload()
    expect(page.locator(ASSISTANT).last).to_have_text("Part one. Part two.")


def test_stop_keeps_the_partial_text_and_the_next_turn_works(page, fake):
    fake.queue(reply("word " * 400, chunk_delay=0.03))
    send(page, "go on forever")
    expect(page.locator(ASSISTANT).last).to_contain_text("word word")
    page.click('button:text-is("Stop")')
    expect(page.locator(".msg.assistant .note").last).to_have_text("Stopped.")
    kept = page.locator(ASSISTANT).last.inner_text()
    assert 0 < len(kept) < len("word " * 400)
    send(page, "thanks")
    expect(page.locator(ASSISTANT).last).to_have_text("Reply 2: thanks")
    item = fake.requests[-1]["body"]["input"][1]
    assert item["status"] == "incomplete" and item["content"][0]["text"].strip() == kept.strip()


def test_two_tabs_sending_at_once_keep_both_turns(context, server, fake):
    fake.queue(reply("answer one", chunk_delay=0.1))
    first, second = context.new_page(), context.new_page()
    first.goto(server.url + "/")
    send(first, "warm up")  # gives both tabs the same session cookie
    expect(first.locator(ASSISTANT).last).to_have_text("answer one")
    fake.queue(reply("answer A", chunk_delay=0.1), reply("answer B", chunk_delay=0.1))
    second.goto(server.url + "/")
    first.fill('textarea[name="message"]', "from tab one")
    second.fill('textarea[name="message"]', "from tab two")
    first.click('button:text-is("Send")')
    second.click('button:text-is("Send")')
    expect(first.locator(ASSISTANT).last).to_have_text("answer A", timeout=20000)
    expect(second.locator(ASSISTANT)).to_have_count(3, timeout=20000)
    second.reload()
    texts = second.locator(USER).all_inner_texts()
    assert texts[0] == "warm up" and sorted(texts[1:]) == ["from tab one", "from tab two"]
    expect(second.locator(ASSISTANT)).to_have_text(["answer one", "answer A", "answer B"])


def test_a_mid_stream_error_keeps_the_partial_reply_and_says_why(page, fake):
    fake.queue(stream_error(after_chunks=2, style="nested", text="partial answer text here"))
    send(page, "fragile")
    expect(page.locator(".msg.assistant .note").last).to_contain_text("Provider disconnected")
    assert page.locator(ASSISTANT).last.inner_text()
    send(page, "next one")
    expect(page.locator(ASSISTANT).last).to_have_text("Reply 2: next one")


def test_keyboard_alone_sends_with_enter_and_adds_lines_with_shift_enter(page, fake):
    page.locator("a.skip").focus()  # the first stop of the Tab order
    page.keyboard.press("Enter")
    expect(page.locator("textarea[name=message]")).to_be_focused()
    page.keyboard.type("line one")
    page.keyboard.press("Shift+Enter")
    page.keyboard.type("line two")
    page.keyboard.press("Enter")
    expect(page.locator(USER).last).to_have_text("line one\nline two")
    expect(page.locator(ASSISTANT).last).to_have_text("Reply 1: line one\nline two")


@pytest.mark.parametrize("scheme", ["light", "dark"])
def test_a_conversation_has_no_wcag_violations(page, fake, scheme):
    from axe_playwright_python.sync_playwright import Axe

    page.emulate_media(color_scheme=scheme)
    fake.queue(reply(RICH), reply("incomplete", status="incomplete"))
    send(page, "show me code and a table")
    expect(page.locator(ASSISTANT).last).to_contain_text("Done.")
    send(page, "more")
    expect(page.locator(".msg.assistant .note").last).to_contain_text("cut off")
    for width in (1000, 360):
        page.set_viewport_size({"width": width, "height": 800})
        results = Axe().run(page, options={"runOnly": {"type": "tag", "values": [
            "wcag2a", "wcag2aa", "wcag21a", "wcag21aa"]}})
        assert results.violations_count == 0, results.generate_report()


def test_an_upstream_error_keeps_the_text_in_the_box_and_retry_sends_it(page, fake):
    from tests.fake_openrouter import error

    fake.queue(error(503, "No providers available"))
    send(page, "please keep me")
    expect(page.locator("#error")).to_contain_text("unavailable")
    expect(page.locator('textarea[name="message"]')).to_have_value("please keep me")
    expect(page.locator(USER)).to_have_count(0)  # the history has no half turn
    page.click('button:text-is("Retry")')
    expect(page.locator(ASSISTANT).last).to_have_text("Reply 1: please keep me")
    expect(page.locator("#error")).to_be_hidden()
    expect(page.locator('button:text-is("Retry")')).to_have_count(0)

"""Nothing typed is lost, and what the page shows is true: drafts kept per conversation, Edit's Cancel,
the Enter hint only where Enter sends, a second tab brought up to date, and a streaming reply's
newest words shown as text rather than half-parsed markdown."""

import threading

from playwright.sync_api import expect

from tests.fake_openrouter import reply

USER = '[data-role="user"]'
ASSISTANT = '[data-role="assistant"]'
BOX = 'textarea[name="message"]'


def send(page, text):
    """Send `text` and wait for its reply to be finished."""
    expect(page.locator(".msg.writing")).to_have_count(0)
    replies = page.locator(".msg.assistant:not(.writing)")
    before = replies.count()
    page.fill(BOX, text)
    page.get_by_role("button", name="Send").click()
    expect(replies).to_have_count(before + 1)


def type_into(page, text):
    page.locator(BOX).click()
    page.keyboard.type(text)  # typed, as a person does (input events)


def test_a_draft_survives_new_chat_a_sidebar_link_and_a_reload(page, server, fake):
    send(page, "first conversation")
    first_url = page.url
    type_into(page, "half-typed in the first")
    page.get_by_role("button", name="New chat").click()
    expect(page.locator(USER)).to_have_count(0)
    expect(page.locator(BOX)).to_have_value("")
    type_into(page, "a draft for a new chat")
    page.get_by_role("navigation", name="Conversations").get_by_role("link", name="first conversation").click()
    expect(page).to_have_url(first_url)
    expect(page.locator(BOX)).to_have_value("half-typed in the first")
    page.reload()
    expect(page.locator(BOX)).to_have_value("half-typed in the first")
    page.get_by_role("button", name="New chat").click()
    expect(page.locator(BOX)).to_have_value("a draft for a new chat")
    page.get_by_role("button", name="Send").click()  # sent: the draft is done with
    expect(page.locator(ASSISTANT).last).to_have_text("Reply 1: a draft for a new chat")
    expect(page.locator(BOX)).to_have_value("")
    page.get_by_role("button", name="New chat").click()
    expect(page.locator(BOX)).to_have_value("")
    page.goto(first_url)
    expect(page.locator(BOX)).to_have_value("half-typed in the first")


def test_edit_and_its_cancel_keep_what_was_being_typed(page, server, fake):
    send(page, "the question")
    type_into(page, "my next thought")
    page.get_by_role("button", name="Edit").click()
    expect(page.locator(BOX)).to_have_value("the question")
    page.get_by_role("button", name="Cancel").click()
    expect(page.locator(BOX)).to_have_value("my next thought")
    page.get_by_role("button", name="Edit").click()
    page.locator(BOX).press("Escape")
    expect(page.locator(BOX)).to_have_value("my next thought")
    page.get_by_role("button", name="Edit").click()
    page.fill(BOX, "the question, better")
    page.get_by_role("button", name="Send").click()
    expect(page.locator(ASSISTANT).last).to_have_text("Reply 1: the question, better")
    expect(page.locator(BOX)).to_have_value("my next thought")  # back once the edit is sent
    page.reload()
    expect(page.locator(BOX)).to_have_value("my next thought")


def test_the_enter_hint_shows_only_where_enter_sends(browser, page, server):
    expect(page.locator(".enter-hint")).to_be_visible()
    context = browser.new_context(java_script_enabled=False)
    plain = context.new_page()
    plain.goto(server.url + "/")
    expect(plain.locator(".enter-hint")).to_be_hidden()  # without the script Enter adds a line
    context.close()


def test_a_second_tab_shows_the_first_tabs_messages_when_looked_at_again(context, page, server, fake):
    send(page, "from the first tab")
    other = context.new_page()
    other.goto(page.url)
    type_into(other, "typed in the second tab")
    send(page, "another from the first tab")
    expect(other.locator(USER)).to_have_count(1)  # not yet looked at
    other.evaluate("document.dispatchEvent(new Event('visibilitychange'))")  # the tab is shown again
    expect(other.locator(USER)).to_have_text(["from the first tab", "another from the first tab"])
    expect(other.locator(ASSISTANT).last).to_have_text("Reply 2: another from the first tab")
    expect(other.locator(BOX)).to_have_value("typed in the second tab")  # untouched
    send(other, "and now from the second")  # its form still works, on the same conversation
    expect(other.locator(USER)).to_have_count(3)
    expect(other.locator(ASSISTANT).last).to_have_text("Reply 3: and now from the second")


def test_a_reply_being_written_in_another_tab_is_followed_when_looked_at(context, page, server, fake):
    send(page, "warm up")
    other = context.new_page()
    other.goto(page.url)
    gate = threading.Event()
    fake.queue(reply("the other tab's answer", gate=gate, chunks=["the other", " tab's answer"]))
    page.fill(BOX, "a slow one")
    page.get_by_role("button", name="Send").click()
    expect(page.locator(ASSISTANT).last).to_contain_text("the other")
    other.evaluate("document.dispatchEvent(new Event('visibilitychange'))")
    expect(other.locator(ASSISTANT).last).to_contain_text("the other")
    expect(other.get_by_role("button", name="Stop")).to_be_visible()
    gate.set()
    expect(other.locator(ASSISTANT).last).to_have_text("the other tab's answer")
    expect(other.get_by_role("button", name="Send")).to_be_visible()


MARKDOWN = ["Intro.\n\n", "## Heading\n\n", "- one\n", "- two\n\n", "**bold** and ", "`code`\n\n",
            "> quoted\n\n", "```python\n", "print(1)\n", "```\n\n", "| a | b |\n", "|---|---|\n",
            "| 1 | 2 |\n\n", "[a link](https://example.com) and the end."]

WATCH = """() => {
    window.__raw = [];
    const markup = /```|(^|\\n)\\s*#{1,6} |\\*\\*|(^|\\n)\\s*[-*] |(^|\\n)\\s*> |\\|---|\\]\\(/;
    new MutationObserver(function () {
        const writing = document.querySelector('.msg.writing [data-role="assistant"]');
        if (writing && markup.test(writing.textContent)) window.__raw.push(writing.textContent);
    }).observe(document.querySelector('[data-role="log"]'),
               {subtree: true, childList: true, characterData: true});
}"""


def test_the_newest_words_of_a_streaming_reply_never_show_as_raw_markdown(page, server, fake):
    fake.queue(reply("".join(MARKDOWN), chunks=MARKDOWN, chunk_delay=0.12))
    page.evaluate(WATCH)
    page.fill(BOX, "format something")
    page.get_by_role("button", name="Send").click()
    answer = page.locator(ASSISTANT).last
    expect(answer.locator("table td").first).to_have_text("1")
    expect(page.locator(".msg.writing")).to_have_count(0)
    assert page.evaluate("window.__raw") == []
    expect(answer.locator("h2")).to_have_text("Heading")  # and the reply is rendered in the end

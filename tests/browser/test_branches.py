"""Branches in the browser: Edit on an earlier message streams the new reply in place (no reload) and
the versions control appears; Previous / Next version switch the whole conversation, remembered, and
the next send carries exactly the branch on screen. JS on and off."""

from playwright.sync_api import expect

from tests.browser.test_conversations import no_axe_violations

BOX = 'textarea[name="message"]'
USER = '[data-role="user"]'
ASSISTANT = '.msg.assistant:not(.writing) [data-role="assistant"]'


def send(page, text):
    replies = page.locator(ASSISTANT)
    before = replies.count()
    page.fill(BOX, text)
    page.get_by_role("button", name="Send").click()
    expect(replies).to_have_count(before + 1)


def test_edit_an_earlier_message_into_a_branch_and_switch_back(tab, fake, js):
    page = tab
    send(page, "one")
    send(page, "two")
    send(page, "three")
    if js:
        page.evaluate("window.notReloaded = true")
    page.locator("article.user").first.get_by_role("button", name="Edit").click()
    expect(page.locator(BOX)).to_have_value("one")
    page.fill(BOX, "one, edited")
    page.get_by_role("button", name="Send").click()
    expect(page.locator(USER)).to_have_count(1)
    expect(page.locator(ASSISTANT)).to_have_text(["Reply 1: one, edited"])
    expect(page.locator('[data-role="versions"]')).to_have_text("2 / 2")
    if js:
        assert page.evaluate("window.notReloaded === true")  # streamed in place
    assert [i["content"][0]["text"] for i in fake.requests[-1]["body"]["input"]] == ["one, edited"]
    if js:
        no_axe_violations(page)
    page.get_by_role("button", name="Previous version").click()
    expect(page.locator(USER)).to_have_count(3)
    expect(page.locator('[data-role="versions"]').first).to_have_text("1 / 2")
    page.reload()  # remembered
    expect(page.locator(USER)).to_have_count(3)
    send(page, "four")
    sent = [i["content"][0]["text"] for i in fake.requests[-1]["body"]["input"]]
    assert sent == ["one", "Reply 1: one", "two", "Reply 2: two", "three", "Reply 3: three", "four"]
    assert all(i.get("id") and i.get("status") for i in fake.requests[-1]["body"]["input"]
               if i["role"] == "assistant")
    page.get_by_role("button", name="Next version").click()
    expect(page.locator(USER)).to_have_count(1)
    expect(page.locator(USER)).to_have_text("one, edited")


def test_regenerate_an_earlier_reply_makes_a_version(page, server, fake):
    send(page, "alpha")
    send(page, "beta")
    page.locator("article.assistant").first.get_by_role("button", name="Regenerate").click()
    expect(page.locator(USER)).to_have_count(1)
    expect(page.locator('[data-role="versions"]')).to_have_text("2 / 2")
    assert [i["content"][0]["text"] for i in fake.requests[-1]["body"]["input"]] == ["alpha"]

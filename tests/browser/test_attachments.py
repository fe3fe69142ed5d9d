"""Attachments with JavaScript: chips for chosen, dropped and pasted files with a Remove button each,
the reply streamed as any other, the files cleared after Send, the thumbnail served by the app after
the reply, a refused file keeping the text, and no axe-core violation with files chosen and shown."""

import base64
import hashlib
import re

from playwright.sync_api import expect

from tests.browser.test_conversations import no_axe_violations
from tests.fake_openrouter import reply

PNG = base64.b64decode("iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mP8z8BQDwAEhQGAhKmMIQAAAABJRU5ErkJggg==")
BOX = 'textarea[name="message"]'


def file(name, data, mime):
    return {"name": name, "mimeType": mime, "buffer": data}


def loaded_width(page, img):
    """The image's natural width once the browser has finished with it (loaded or failed: 0).
    The thumbnails are lazy, so asking straight after they appear races their load."""
    handle = img.element_handle()
    page.wait_for_function("(img) => img.complete", arg=handle)
    return page.evaluate("(img) => img.naturalWidth", handle)


def test_files_are_chosen_shown_as_chips_sent_streamed_and_cleared(page, server, fake):
    fake.queue(reply("A single dot. " * 5, chunk_delay=0.02))
    page.set_input_files('input[name="files"]', [file("dot.png", PNG, "image/png"),
                                                 file("notes.md", b"# notes\n", "text/markdown")])
    chips = page.locator("#chips li")
    expect(chips).to_have_count(2)
    expect(chips.first.locator("img")).to_have_count(1)  # a local preview (a blob: URL)
    page.get_by_role("button", name="Remove notes.md").click()
    expect(chips).to_have_count(1)
    no_axe_violations(page)
    page.fill(BOX, "What is this?")
    page.get_by_role("button", name="Send").click()
    expect(page.locator(".msg.assistant:not(.writing)")).to_have_count(1)
    expect(page.locator('[data-role="assistant"]').last).to_contain_text("A single dot.")
    # The server's own rendering replaced the streamed one: the thumbnail is the app's URL.
    sha = hashlib.sha256(PNG).hexdigest()
    thumb = page.locator(f'article.user img[src$="/files/{sha}"]')
    expect(thumb).to_have_count(1)
    assert loaded_width(page, thumb) == 1
    expect(chips).to_have_count(0)
    assert page.evaluate("document.querySelector('input[name=files]').files.length") == 0
    parts = fake.requests[-1]["body"]["input"][-1]["content"]
    assert [p["type"] for p in parts] == ["input_text", "input_image"]
    no_axe_violations(page)
    # A follow-up does not attach the file again as new, but the history still carries it.
    page.fill(BOX, "And again?")
    page.get_by_role("button", name="Send").click()
    expect(page.locator(".msg.assistant:not(.writing)")).to_have_count(2)
    assert fake.requests[-1]["body"]["input"][0]["content"][1]["type"] == "input_image"
    assert fake.requests[-1]["body"]["input"][-1]["content"] == [{"type": "input_text", "text": "And again?"}]


def test_a_pasted_file_becomes_a_chip(page, server, fake):
    page.locator(BOX).click()
    page.evaluate("""(bytes) => {
        const data = new DataTransfer();
        data.items.add(new File([new Uint8Array(bytes)], "pasted.png", {type: "image/png"}));
        const event = new ClipboardEvent("paste", {clipboardData: data, bubbles: true, cancelable: true});
        document.querySelector('textarea[name="message"]').dispatchEvent(event);
    }""", list(PNG))
    expect(page.locator("#chips li")).to_have_count(1)
    expect(page.locator("#chips li")).to_contain_text("pasted.png")


def test_a_refused_file_keeps_the_text_and_the_file(page, server, fake):
    page.set_input_files('input[name="files"]', [file("forged.png", b"not an image", "image/png")])
    page.fill(BOX, "keep this")
    page.get_by_role("button", name="Send").click()
    expect(page.locator("#error")).to_contain_text("forged.png")
    expect(page.locator(BOX)).to_have_value("keep this")
    expect(page.locator("#chips li")).to_have_count(1)
    assert fake.requests == []


def test_with_javascript_off_a_file_is_posted_with_the_form(browser, server, fake):
    context = browser.new_context(java_script_enabled=False)
    try:
        page = context.new_page()
        page.goto(server.url + "/")
        page.set_input_files('input[name="files"]', [file("dot.png", PNG, "image/png")])
        page.fill(BOX, "JS off, with a file")
        page.get_by_role("button", name="Send").click()
        expect(page.locator('[data-role="assistant"]')).to_have_count(1)
        sha = hashlib.sha256(PNG).hexdigest()
        thumb = page.locator(f'article.user img[src$="/files/{sha}"]')
        expect(thumb).to_have_count(1)
        assert loaded_width(page, thumb) == 1
        assert fake.requests[-1]["body"]["input"][-1]["content"][1]["type"] == "input_image"
    finally:
        context.close()


def test_a_large_upload_shows_its_progress_and_stop_cancels_it(page, context, server, fake):
    # A slow uplink (DevTools' network emulation), so the upload is seen in progress.
    cdp = context.new_cdp_session(page)
    cdp.send("Network.enable")
    cdp.send("Network.emulateNetworkConditions", {"offline": False, "latency": 0, "downloadThroughput": -1,
                                                  "uploadThroughput": 256 * 1024})
    big = PNG + bytes(3 * 1024 * 1024)
    page.set_input_files('input[name="files"]', [file("big.png", big, "image/png")])
    page.fill(BOX, "a big one")
    page.get_by_role("button", name="Send").click()
    progress = page.locator("#upload progress")
    expect(progress).to_be_visible()
    expect(page.locator("#upload-percent")).to_have_text(re.compile(r"^[1-9]\d?%$"))  # under way
    page.get_by_role("button", name="Stop").click()
    expect(page.locator("#notice")).to_contain_text("Not sent")
    expect(page.locator(BOX)).to_have_value("a big one")
    expect(page.locator("#upload")).to_be_hidden()
    expect(page.locator("#chips li")).to_have_count(1)  # still attached, to send again
    assert fake.requests == []

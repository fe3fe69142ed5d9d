"""Web search with JavaScript: ticked, the reply streams and its sources appear under it when it ends,
without a reload; a model that cannot search has the checkbox disabled with its note."""

import pytest
from playwright.sync_api import expect

from tests.browser.test_conversations import API_KEY, FakeWithTiny, no_axe_violations
from tests.fake_openrouter import reply

BOX = 'textarea[name="message"]'
CITED = [{"type": "url_citation", "url": "https://news.example/story", "title": "A <i>story</i>",
          "start_index": 0, "end_index": 5}]


@pytest.fixture(scope="module")
def fake_server():
    # This module's fake lists the 4K model too (it takes no tools), from the start.
    with FakeWithTiny(api_key=API_KEY) as server:
        server.reset()
        yield server


def test_sources_show_under_the_streamed_reply_when_it_ends(page, server, fake):
    fake.queue(reply("Today's news, cited.", annotations=CITED, chunk_delay=0.02))
    page.get_by_label("Search the web").check()
    page.fill(BOX, "What happened today?")
    page.get_by_role("button", name="Send").click()
    sources = page.locator('.msg.assistant [data-role="sources"]')
    expect(sources).to_have_count(1)
    link = sources.get_by_role("link", name="A <i>story</i>")
    expect(link).to_have_attribute("href", "https://news.example/story")
    expect(link).to_have_attribute("rel", "noopener noreferrer")
    assert fake.requests[-1]["body"]["tools"][0]["type"] == "openrouter:web_search"
    no_axe_violations(page)


def test_a_model_that_cannot_search_disables_the_checkbox(page, server, fake):
    search = page.get_by_label("Search the web")
    search.check()
    page.locator("#model").select_option("tiny/4k")
    expect(search).to_be_disabled()
    expect(search).not_to_be_checked()
    expect(page.locator(".search-note")).to_be_visible()
    page.locator("#model").select_option("openai/o4-mini")
    expect(search).to_be_enabled()
    expect(page.locator(".search-note")).to_be_hidden()

"""Search and Share in the browser: the search box finds a conversation (JS off too), the share flow
shows the link with a Copy button, the read-only page shows the snapshot; no axe-core violations on
the results, the confirmation and the shared page."""

from playwright.sync_api import expect

from tests.browser.test_branches import send
from tests.browser.test_conversations import no_axe_violations


def test_search_finds_a_conversation_and_share_makes_a_read_only_link(browser, tab, fake, js):
    page = tab
    send(page, "Quarterly numbers for the zebra project")
    page.get_by_role("button", name="New chat").click()
    send(page, "Something else entirely")
    search = page.get_by_role("search")
    search.get_by_role("searchbox").fill("ZEBRA")
    search.get_by_role("button", name="Search").click()
    results = page.locator('[data-role="results"] li')
    expect(results).to_have_count(1)
    expect(results.locator("mark")).to_have_text("zebra")
    if js:  # axe-core runs as a script in the page
        no_axe_violations(page)
    results.get_by_role("link").click()
    page.get_by_role("link", name="Share").click()
    if js:
        no_axe_violations(page)
    page.get_by_role("button", name="Share").click()
    link = page.locator("#share-link")
    expect(link).to_be_visible()
    if js:
        expect(page.get_by_role("button", name="Copy link")).to_be_visible()
    shared_url = link.input_value()
    stranger = browser.new_context(java_script_enabled=js)
    try:
        view = stranger.new_page()
        view.goto(shared_url)
        expect(view.locator('[data-role="user"]')).to_have_text("Quarterly numbers for the zebra project")
        expect(view.locator("form")).to_have_count(0)
        if js:
            no_axe_violations(view)
        page.get_by_role("button", name="Stop sharing").click()
        assert view.request.get(shared_url).status == 404
    finally:
        stranger.close()

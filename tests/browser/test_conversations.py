"""Several conversations in a real Chromium, with and without JavaScript: the sidebar, New chat, Rename,
Delete, two tabs, the model picker and settings, the context warning, export and import, the theme
toggle, the shortcuts popover, and axe-core on every page these add."""

import json
import re

import pytest
from playwright.sync_api import expect

from tests.conftest import API_KEY
from tests.fake_openrouter import MODELS, TINY_MODEL, FakeOpenRouter

USER = '[data-role="user"]'
ASSISTANT = '[data-role="assistant"]'
BOX = 'textarea[name="message"]'
CONVERSATION_URL = re.compile(r"/c/[A-Za-z0-9_-]{16,}(#[a-z]+)?$")
WCAG = {"runOnly": {"type": "tag", "values": ["wcag2a", "wcag2aa", "wcag21a", "wcag21aa"]}}


class FakeWithTiny(FakeOpenRouter):
    """The fake, listing also its 4K-context model (for the context budget), after every reset."""

    def reset(self):
        super().reset()
        self.models = {"data": MODELS["data"] + [TINY_MODEL]}


@pytest.fixture(scope="module")
def fake_server():
    # Overrides the session-wide fake for this module: `fake` and `served` (so `server`) use this one.
    with FakeWithTiny(api_key=API_KEY) as server:
        server.reset()
        yield server


def send(page, text, reply=None):
    """Type and press Send; unless `reply` is False, wait for the reply (default: the fake's echo)."""
    expect(page.locator(".msg.writing")).to_have_count(0)
    number = page.locator(USER).count() + 1
    page.fill(BOX, text)
    page.get_by_role("button", name="Send", exact=True).click()
    if reply is not False:
        expect(page.locator(ASSISTANT).last).to_have_text(reply if reply is not None else f"Reply {number}: {text}")
        expect(page).to_have_url(CONVERSATION_URL)


def here(page):
    """The page's URL without its fragment (a JS-off send lands on /c/<id>#latest)."""
    return page.url.split("#")[0]


def nav(page):
    return page.get_by_role("navigation", name="Conversations")


def links(page):
    return nav(page).get_by_role("link")


def new_chat(page):
    page.get_by_role("button", name="New chat").click()
    expect(page).to_have_url(re.compile(r"/new(\?model=[^&]+)?$"))  # on the model last used
    expect(page.locator(USER)).to_have_count(0)


def long_text(label, chars=3000):
    return (label + " " + "lorem ipsum dolor sit amet " * 200)[:chars]


# --- the sidebar, New chat, Rename, Delete --------------------------------------------------------------

def test_the_sidebar_lists_conversations_newest_first_and_marks_the_open_one(tab, fake):
    page = tab
    expect(nav(page)).to_contain_text("No conversations yet.")
    send(page, "first topic")
    first = here(page)
    expect(links(page)).to_have_text(["first topic"])
    expect(links(page).first).to_have_attribute("aria-current", "page")
    new_chat(page)
    # New chat keeps the old one: still listed, no longer the open one.
    expect(links(page)).to_have_text(["first topic"])
    expect(nav(page).locator("[aria-current]")).to_have_count(0)
    send(page, "second topic")
    second = here(page)
    assert second != first
    expect(links(page)).to_have_text(["second topic", "first topic"])
    expect(links(page).nth(0)).to_have_attribute("aria-current", "page")
    expect(links(page).nth(1)).not_to_have_attribute("aria-current", "page")
    links(page).nth(1).click()
    expect(page).to_have_url(first)
    expect(page.locator(USER)).to_have_text(["first topic"])
    expect(links(page).nth(1)).to_have_attribute("aria-current", "page")
    expect(page.get_by_role("link", name="second topic")).to_have_attribute("href", re.compile(r"^/c/"))
    send(page, "more on the first")  # activity moves it to the top
    page.reload()
    expect(links(page)).to_have_text(["first topic", "second topic"])
    expect(links(page).first).to_have_attribute("aria-current", "page")
    page.goto(here(page).rsplit("/c/", 1)[0] + "/")  # / opens the most recent
    expect(page.locator(USER)).to_have_text(["first topic", "more on the first"])


@pytest.mark.parametrize("js", [True, False], ids=["js", "no-js"])
def test_on_a_phone_the_sidebar_folds_away_and_opens(browser, server, fake, js):
    context = browser.new_context(viewport={"width": 390, "height": 844}, java_script_enabled=js)
    page = context.new_page()
    page.goto(server.url + "/")
    send(page, "on a phone")
    link = page.get_by_role("link", name="on a phone")
    expect(link).to_be_hidden()
    page.locator("#sidebar > summary").click()
    expect(link).to_be_visible()
    page.locator("#sidebar > summary").click()
    expect(link).to_be_hidden()
    context.close()


def test_rename_through_its_page(tab, fake):
    page = tab
    send(page, "an unremarkable title")
    url = here(page)
    page.get_by_role("link", name="Rename").click()
    expect(page).to_have_url(url + "/rename")
    expect(page.get_by_label("Title")).to_have_value("an unremarkable title")
    page.get_by_label("Title").fill("Holiday plans")
    page.get_by_role("button", name="Rename").click()
    expect(page).to_have_url(url)
    expect(page.locator("#conversation-title")).to_have_text("Holiday plans")
    expect(links(page)).to_have_text(["Holiday plans"])
    expect(page).to_have_title("Holiday plans · Chat")


def test_delete_asks_first_then_the_conversation_is_gone(tab, server, fake, js):
    page = tab
    send(page, "keep this one")
    new_chat(page)
    send(page, "delete this one")
    doomed = here(page)
    page.once("dialog", lambda dialog: dialog.accept())  # should script ask in a dialog instead
    page.get_by_role("button", name="Delete").click()
    page.wait_for_url(lambda url: url.split("#")[0] != doomed)
    if not js or "/delete" in page.url:
        expect(page).to_have_url(re.compile(re.escape(doomed + "/delete") + r"\??$"))
        expect(page.get_by_role("heading", level=2)).to_contain_text("delete this one")
        page.get_by_role("button", name="Delete").click()
    expect(page).not_to_have_url(re.compile(r"/delete$"))
    expect(links(page)).to_have_text(["keep this one"])
    assert page.goto(doomed).status == 404
    page.goto(server.url + "/")
    expect(page.locator(USER)).to_have_text(["keep this one"])


def test_two_tabs_on_two_conversations_each_send_to_their_own(browser, server, fake, js):
    context = browser.new_context(viewport={"width": 1280, "height": 800}, java_script_enabled=js)
    one, two = context.new_page(), context.new_page()
    one.goto(server.url + "/")
    send(one, "A0")
    two.goto(server.url + "/new")
    send(two, "B0")
    assert here(one) != here(two)
    # Each tab's page still shows its own conversation; each sends to it.
    one.fill(BOX, "A1")
    two.fill(BOX, "B1")
    one.get_by_role("button", name="Send", exact=True).click()
    two.get_by_role("button", name="Send", exact=True).click()
    expect(one.locator(ASSISTANT).last).to_have_text("Reply 2: A1")
    expect(two.locator(ASSISTANT).last).to_have_text("Reply 2: B1")
    for page, name in ((one, "A"), (two, "B")):
        page.reload()
        expect(page.locator(USER)).to_have_text([f"{name}0", f"{name}1"])
    histories = sorted(["".join(p["text"] for item in r["body"]["input"] if item["role"] == "user"
                                for p in item["content"]) for r in fake.requests])
    assert histories == ["A0", "A0A1", "B0", "B0B1"]
    context.close()


def test_the_first_send_shows_the_new_conversations_title_and_actions(tab):
    """With script or without, the first send's page has the conversation's title, Rename, exports
    and Delete (with script, the first reply brings them without a reload)."""
    page = tab
    send(page, "brand new")
    expect(page.locator("#conversation-title")).to_have_text("brand new")
    for name in ("Rename", "Export Markdown", "Export JSON"):
        expect(page.get_by_role("link", name=name)).to_be_visible()
    expect(page.get_by_role("button", name="Delete")).to_be_visible()


# --- the model picker and settings ---------------------------------------------------------------------

def test_the_model_picker_sends_the_chosen_model_and_keeps_it(tab, fake, js):
    page = tab
    picker = page.get_by_label("Model", exact=True)
    expect(picker).to_have_value("openai/o4-mini")
    expect(picker.locator("option")).to_have_count(3)
    expect(picker.locator('option[value="openai/gpt-4o-mini"]')).to_have_text(
        "GPT-4o-mini · 128K context · $0.15/$0.60 per M")
    # A closed picker shows its model's whole label, not a cut one.
    assert picker.evaluate("s => s.scrollWidth <= s.clientWidth + 1")
    temperature = page.locator('[data-param="temperature"]')
    expect(temperature).to_be_hidden()
    picker.select_option("openai/gpt-4o-mini")
    if js:  # the options follow the model at once
        expect(temperature).to_be_visible()
        expect(page.locator('[data-param="reasoning"]')).to_be_hidden()
    send(page, "which model?")
    expect(page.locator(".msg.assistant .meta").last).to_contain_text("openai/gpt-4o-mini")
    assert fake.requests[-1]["body"]["model"] == "openai/gpt-4o-mini"
    page.reload()
    expect(picker).to_have_value("openai/gpt-4o-mini")
    page.locator("details.settings > summary").click()  # folded once a conversation has messages
    expect(temperature).to_be_visible()  # offered for the kept model, script or not
    expect(page.locator('[data-param="reasoning"]')).to_be_hidden()
    send(page, "still?")
    assert fake.requests[-1]["body"]["model"] == "openai/gpt-4o-mini"
    new_chat(page)
    expect(picker).to_have_value("openai/gpt-4o-mini")  # New chat starts on the model last used


def test_the_system_prompt_reaches_upstream(tab, fake):
    page = tab
    settings = page.locator("details.settings")
    expect(settings).to_have_attribute("open", "")  # open on an empty chat
    page.get_by_label("System prompt").fill("You are a terse assistant.")
    page.get_by_label("Reasoning effort").select_option("low")
    send(page, "hello")
    body = fake.requests[-1]["body"]
    assert body["instructions"] == "You are a terse assistant."
    assert body["reasoning"]["effort"] == "low"
    page.reload()
    expect(settings).not_to_have_attribute("open", "")
    settings.locator("summary").click()
    expect(page.get_by_label("System prompt")).to_have_value("You are a terse assistant.")
    send(page, "again")
    assert fake.requests[-1]["body"]["instructions"] == "You are a terse assistant."


# --- the context budget ----------------------------------------------------------------------------------

def test_a_message_that_would_not_fit_is_kept_and_drop_oldest_turns_makes_room(tab, fake):
    page = tab
    page.get_by_label("Model", exact=True).select_option("tiny/4k")
    send(page, long_text("turn one"), reply=False)
    expect(page.locator(ASSISTANT)).to_have_count(1)
    send(page, long_text("turn two"), reply=False)
    expect(page.locator(ASSISTANT)).to_have_count(2)
    expect(page.locator("meter#budget")).to_have_attribute("max", "4096")
    expect(page.locator("#budget-text")).to_contain_text("of 4,096 tokens")
    third = long_text("turn three")
    page.fill(BOX, third)
    page.get_by_role("button", name="Send", exact=True).click()
    expect(page.locator("#error")).to_contain_text("longer than the model's context")
    expect(page.locator(BOX)).to_have_value(third)
    assert len(fake.requests) == 2  # not sent
    page.get_by_role("button", name="Drop oldest turns").click()
    divider = page.locator(".divider")
    expect(divider).to_contain_text("no longer sent")
    expect(page.locator(BOX)).to_have_value(third)
    expect(page.locator(USER)).to_have_count(2)  # still shown above the divider
    page.get_by_role("button", name="Send", exact=True).click()
    expect(page.locator(ASSISTANT)).to_have_count(3)
    expect(page.locator(ASSISTANT).last).to_contain_text("Reply 2: turn three")
    sent = fake.requests[-1]["body"]["input"]
    assert len(sent) == 3 and sent[0]["content"][0]["text"].startswith("turn two")


def test_with_js_the_context_meter_follows_the_conversation(browser, server, fake):
    context = browser.new_context(viewport={"width": 1280, "height": 800})
    page = context.new_page()
    page.set_default_timeout(5000)
    page.goto(server.url + "/")
    send(page, "hello")
    page.reload()
    meter = page.locator("meter#budget")
    before = int(meter.get_attribute("value"))
    send(page, long_text("a long one"))
    expect(meter).not_to_have_attribute("value", str(before))
    expect(page.locator("#budget-text")).not_to_contain_text(f"About {before:,} of")
    context.close()


# --- export and import ---------------------------------------------------------------------------------

def test_export_downloads_and_import_opens_it_as_a_new_conversation(tab, fake, tmp_path):
    page = tab
    send(page, "first question")
    send(page, "second question")
    with page.expect_download() as download:
        page.get_by_role("link", name="Export Markdown").click()
    assert download.value.suggested_filename.endswith(".md")
    markdown = open(download.value.path(), encoding="utf-8").read()
    for text in ("first question", "Reply 1: first question", "second question", "Reply 2: second question"):
        assert text in markdown
    with page.expect_download() as download:
        page.get_by_role("link", name="Export JSON").click()
    assert download.value.suggested_filename.endswith(".json")
    saved = tmp_path / download.value.suggested_filename
    download.value.save_as(saved)
    exported = json.loads(saved.read_text(encoding="utf-8"))
    assert len(exported["items"]) == 4 and exported["title"] == "first question"

    page.get_by_role("link", name="Import").click()
    page.get_by_label("Exported JSON file").set_input_files(
        files=[{"name": "broken.json", "mimeType": "application/json", "buffer": b'{"items": ['}])
    page.get_by_role("button", name="Import").click()
    expect(page.get_by_role("alert")).to_contain_text("cannot be imported")
    page.get_by_label("Exported JSON file").set_input_files(saved)
    page.get_by_role("button", name="Import").click()
    expect(page).to_have_url(CONVERSATION_URL)
    expect(page.locator(USER)).to_have_text(["first question", "second question"])
    expect(links(page)).to_have_count(2)
    expect(links(page).first).to_have_attribute("aria-current", "page")
    send(page, "third question")
    assert fake.requests[-1]["body"]["input"][:4] == exported["items"]


# --- look and feel -------------------------------------------------------------------------------------

def test_the_theme_toggle_is_remembered_across_reloads(browser, server, fake):
    context = browser.new_context(color_scheme="light")
    page = context.new_page()
    page.goto(server.url + "/")
    theme = page.locator("#theme")
    expect(theme).to_have_text("Theme: auto")
    assert page.evaluate("document.documentElement.dataset.theme") is None
    light = page.evaluate("getComputedStyle(document.body).backgroundColor")
    theme.click()
    expect(theme).to_have_text("Theme: dark")
    assert page.evaluate("document.documentElement.dataset.theme") == "dark"
    assert page.evaluate("getComputedStyle(document.body).backgroundColor") != light
    page.reload()
    assert page.evaluate("document.documentElement.dataset.theme") == "dark"
    expect(theme).to_have_text("Theme: dark")
    theme.click()
    page.goto(server.url + "/new")
    assert page.evaluate("document.documentElement.dataset.theme") == "light"
    page.emulate_media(color_scheme="dark")  # a chosen theme wins over the system's
    assert page.evaluate("getComputedStyle(document.body).backgroundColor") == light
    page.locator("#theme").click()
    page.reload()
    assert page.evaluate("document.documentElement.dataset.theme") is None
    assert page.evaluate("getComputedStyle(document.body).backgroundColor") != light  # follows the system
    context.close()


def test_the_shortcuts_popover_and_the_shortcuts(browser, server, fake):
    context = browser.new_context(viewport={"width": 1280, "height": 800})
    page = context.new_page()
    page.goto(server.url + "/")
    popover = page.locator("#shortcuts")
    expect(popover).to_be_hidden()
    page.get_by_role("button", name="Shortcuts").click()
    expect(popover).to_be_visible()
    expect(popover).to_contain_text("New chat")
    expect(popover).to_contain_text("Focus the message box")
    page.keyboard.press("Escape")
    expect(popover).to_be_hidden()
    send(page, "a conversation")
    page.locator("#theme").focus()
    page.keyboard.press("Shift+Escape")
    expect(page.locator(BOX)).to_be_focused()
    page.keyboard.press("Control+Shift+O")
    expect(page).to_have_url(re.compile(r"/new$"))
    expect(links(page)).to_have_text(["a conversation"])
    context.close()


def test_keyboard_focus_is_visible(browser, server, fake):
    context = browser.new_context(viewport={"width": 1280, "height": 800})
    page = context.new_page()
    page.goto(server.url + "/")
    page.locator("#theme").focus()
    page.keyboard.press("Tab")  # keyboard focus: :focus-visible
    style = page.evaluate("(() => { const s = getComputedStyle(document.activeElement);"
                          " return [s.outlineStyle, s.outlineWidth]; })()")
    assert style[0] != "none" and style[1] != "0px", style
    context.close()


# --- axe-core: WCAG 2.1 A/AA, light and dark, wide and narrow ---------------------------------------------

def axe_violations(page):
    """Every WCAG 2.1 A/AA violation in light and dark at 1280 and 390 px: [(where, rule, target, summary)]."""
    from axe_playwright_python.sync_playwright import Axe

    axe, found = Axe(), []
    for scheme in ("light", "dark"):
        page.emulate_media(color_scheme=scheme)
        for width, height in ((1280, 800), (390, 844)):
            page.set_viewport_size({"width": width, "height": height})
            for violation in axe.run(page, options=WCAG).response["violations"]:
                for node in violation["nodes"]:
                    found.append((f"{scheme} {width}px", violation["id"], " ".join(map(str, node["target"])),
                                  node.get("failureSummary", "")))
    return found


def no_axe_violations(page):
    violations = axe_violations(page)
    assert violations == [], "\n".join(map(str, violations))


@pytest.fixture
def conversation(browser, server, fake):
    """A script-on page on a conversation with two replies (usage, total and the budget shown)."""
    context = browser.new_context(viewport={"width": 1280, "height": 800})
    page = context.new_page()
    page.set_default_timeout(15000)
    page.goto(server.url + "/")
    page.get_by_label("System prompt").fill("Be concise.")
    send(page, "first question")
    send(page, "second question")
    page.reload()  # the page as served for this conversation (with its actions)
    yield page
    context.close()


def test_a_conversation_page_with_usage_total_budget_and_settings_open_has_no_violations(conversation):
    page = conversation
    expect(page.locator('[data-role="usage"]')).to_have_count(2)
    expect(page.locator('[data-role="total"]')).to_contain_text("$")
    expect(page.locator("meter#budget")).to_be_visible()
    page.locator("details.settings > summary").click()
    expect(page.get_by_label("System prompt")).to_be_visible()
    page.locator(".msg.assistant details.reasoning > summary").first.click()
    no_axe_violations(page)


def test_the_rename_page_has_no_violations(conversation):
    page = conversation
    page.get_by_role("link", name="Rename").click()
    expect(page.get_by_label("Title")).to_be_visible()
    no_axe_violations(page)


def test_the_delete_confirmation_page_has_no_violations(conversation):
    page = conversation
    page.goto(here(page) + "/delete")
    expect(page.get_by_role("button", name="Delete")).to_be_visible()
    no_axe_violations(page)


def test_the_delete_confirmation_page_has_no_violations_but_the_known_delete_button_contrast(conversation):
    page = conversation
    page.goto(here(page) + "/delete")
    expect(page.get_by_role("button", name="Delete")).to_be_visible()
    others = [v for v in axe_violations(page) if (v[1], v[2]) != ("color-contrast", "button.danger")
              and (v[1], v[2]) != ("color-contrast", ".danger")]
    assert others == [], "\n".join(map(str, others))


def test_the_import_page_with_an_error_has_no_violations(conversation):
    page = conversation
    page.get_by_role("link", name="Import").click()
    page.get_by_label("Exported JSON file").set_input_files(
        files=[{"name": "hostile.json", "mimeType": "application/json",
                "buffer": json.dumps({"items": [{"type": "message", "role": "system", "content": []}]}).encode()}])
    page.get_by_role("button", name="Import").click()
    expect(page.get_by_role("alert")).to_contain_text("cannot be imported")
    no_axe_violations(page)

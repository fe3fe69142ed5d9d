"""Sign in with OpenRouter in a real browser: the redirects to OpenRouter (the fake's sign-in page) and
back, a streamed reply on the person's own key, Sign out, and no WCAG violations either way."""

import pytest
from playwright.sync_api import expect

from tests.serving import Gunicorn, served_env

SIGN_IN = 'a:text-is("Sign in with OpenRouter")'
SIGN_OUT = 'button:text-is("Sign out")'


@pytest.fixture(scope="module")
def server(fake_server, tmp_path_factory):
    """The app under gunicorn with sign-in on and no operator key: everyone pays with their own."""
    path = tmp_path_factory.mktemp("signin")
    env = served_env(fake_server, path, "signin-browser", OPENROUTER_API_KEY="",
                     SIGN_IN_WITH_OPENROUTER="true", OPENROUTER_AUTH_URL=fake_server.auth_url)
    with Gunicorn(env, path / "gunicorn.log") as running:
        yield running


def test_sign_in_chat_on_your_own_key_and_sign_out(page, server, fake):
    expect(page.locator(SIGN_IN)).to_be_visible()
    page.fill('textarea[name="message"]', "before signing in")
    page.click('button:text-is("Send")')
    expect(page.locator("#error")).to_contain_text("Sign in with OpenRouter first")
    expect(page.locator('textarea[name="message"]')).to_have_value("before signing in")
    assert fake.requests == []

    page.click(SIGN_IN)  # → the fake's sign-in page → the app's callback → the chat
    expect(page.locator(SIGN_OUT)).to_be_visible()
    assert page.url == server.url + "/"
    expect(page.locator('[data-role="credits"]')).to_have_text("OpenRouter: $9.75 left")
    (key,) = fake.user_keys
    page.fill('textarea[name="message"]', "on my own account")
    page.click('button:text-is("Send")')
    expect(page.locator('[data-role="assistant"]').last).to_have_text("Reply 1: on my own account")
    assert [r["key"] for r in fake.requests] == [key]
    assert key not in page.content()
    assert all(key not in c["value"] for c in page.context.cookies())

    page.click(SIGN_OUT)
    expect(page.locator(SIGN_IN)).to_be_visible()
    page.fill('textarea[name="message"]', "after signing out")
    page.click('button:text-is("Send")')
    expect(page.locator("#error")).to_contain_text("Sign in with OpenRouter first")
    assert len(fake.requests) == 1


@pytest.mark.parametrize("scheme", ["light", "dark"])
def test_the_header_has_no_wcag_violations_signed_out_or_in(page, fake, scheme):
    from axe_playwright_python.sync_playwright import Axe

    page.emulate_media(color_scheme=scheme)

    def check():
        for width in (1000, 360):
            page.set_viewport_size({"width": width, "height": 800})
            results = Axe().run(page, options={"runOnly": {"type": "tag", "values": [
                "wcag2a", "wcag2aa", "wcag21a", "wcag21aa"]}})
            assert results.violations_count == 0, results.generate_report()

    check()
    page.click(SIGN_IN)
    expect(page.locator(SIGN_OUT)).to_be_visible()
    check()
    page.locator(SIGN_OUT).focus()
    page.keyboard.press("Enter")  # the keyboard alone signs out
    expect(page.locator(SIGN_IN)).to_be_visible()

"""Math in the browser: formulas render as MathML (no TeX left on screen) in replies and messages, the
page stays within its weight, and Edit with JavaScript puts back exactly what was typed."""

import requests
from playwright.sync_api import expect

from tests.fake_openrouter import reply

BOX = 'textarea[name="message"]'
TYPED = r"What is $\int_0^1 x^2\,dx$? It costs $5 and $10."


def test_formulas_render_and_edit_gives_back_the_tex(page, server, fake):
    fake.queue(reply("It is $$\\frac{1}{3}$$ and $\\sum_{i=1}^n i$."))
    page.fill(BOX, TYPED)
    page.get_by_role("button", name="Send").click()
    reply_text = page.locator('.msg.assistant:not(.writing) [data-role="assistant"]')
    expect(reply_text).to_have_count(1)
    expect(reply_text.locator('math[display="block"]')).to_have_count(1)
    expect(reply_text.locator("math:not([display])")).to_have_count(1)
    assert "\\frac" not in reply_text.inner_text() and "$" not in reply_text.inner_text()
    user = page.locator('[data-role="user"]').last
    expect(user.locator("math")).to_have_count(1)
    assert "$5 and $10" in user.inner_text()  # prices stay text
    page.get_by_role("button", name="Edit").click()
    expect(page.locator(BOX)).to_have_value(TYPED)
    page.get_by_role("button", name="Cancel").click()
    # The cold page of a conversation with math: within the app's weight, no new request.
    response = requests.get(page.url, cookies={c["name"]: c["value"] for c in page.context.cookies()})
    assert len(response.content) <= 60_000

"""Headless Debian Chromium driven by Playwright, against the app under a real gunicorn."""

from pathlib import Path

import pytest

from tests.serving import require_program

HERE = Path(__file__).resolve().parent
# The background-networking flags keep Chromium from dialling out (this machine's network is closed).
ARGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
        "--disable-background-networking", "--disable-component-update", "--disable-sync"]


@pytest.hookimpl(tryfirst=True)  # before `-m` deselects, so `-m "not browser"` sees the mark
def pytest_collection_modifyitems(items):
    """Every test under tests/browser is marked `browser` (this hook sees the whole session's items)."""
    for item in items:
        if HERE in Path(item.path).resolve().parents:
            item.add_marker(pytest.mark.browser)


@pytest.fixture(scope="session")
def browser():
    playwright_api = pytest.importorskip("playwright.sync_api")
    chromium = require_program("chromium", "chromium")
    with playwright_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=chromium, args=ARGS, headless=True)
        yield browser
        browser.close()


@pytest.fixture(scope="module")
def server(served):
    return served


@pytest.fixture(params=[True, False], ids=["js", "no-js"])
def js(request):
    return request.param


@pytest.fixture
def tab(browser, server, js):
    """A page in a fresh browser (its own cookies), script on or off, on the empty chat."""
    context = browser.new_context(viewport={"width": 1280, "height": 800}, java_script_enabled=js)
    page = context.new_page()
    page.set_default_timeout(15000)
    page.goto(server.url + "/")
    yield page
    context.close()


@pytest.fixture
def context(browser):
    ctx = browser.new_context(viewport={"width": 1000, "height": 800})
    yield ctx
    ctx.close()


@pytest.fixture
def page(context, server):
    page = context.new_page()
    page.set_default_timeout(15000)
    page.goto(server.url + "/")
    return page

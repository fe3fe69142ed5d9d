"""Headless Debian Chromium driven by Playwright, against the app under a real gunicorn."""

import os
import shutil

import pytest


CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
# The background-networking flags keep Chromium from dialling out (this machine's network is closed).
ARGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
        "--disable-background-networking", "--disable-component-update", "--disable-sync"]


@pytest.fixture(scope="session")
def browser():
    playwright_api = pytest.importorskip("playwright.sync_api")
    if not os.path.exists(CHROMIUM):
        pytest.fail("Debian's chromium is not installed (apt-get install chromium)")
    with playwright_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=ARGS, headless=True)
        yield browser
        browser.close()


@pytest.fixture(scope="module")
def server(served):
    return served


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

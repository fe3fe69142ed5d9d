"""The README's own run command, exactly as given: `OPENROUTER_API_KEY=… ./run.sh`, from a fresh copy of
the project, with no variable the README does not set (no SECRET_KEY, no SESSION_DIR, no BIND: port
8000, gevent, one worker per core). The only stand-in is the upstream: OPENROUTER_BASE_URL points at the
fake OpenRouter, as the README's configuration table allows.

Every request here opens its own connection (`Connection: close`), so a browser's page and its send
land on whichever worker accepts them, as they do from real browsers: a signing key drawn per worker
once failed about half of all first sends and Stops."""

import os
import shutil
import socket
import stat
import subprocess
import time

import pytest
import requests

from tests.conftest import messages
from tests.fake_openrouter import reply
from tests.serving import ROOT, Browser, Gunicorn
from tests.sse import events, until

PORT = 8000  # run.sh's: the README's command sets no BIND
URL = f"http://127.0.0.1:{PORT}"
BROWSERS = 16


def fresh_copy(path):
    """The project's files as a fresh clone has them (untracked ones too, not ignored ones), sharing
    this checkout's venv (run.sh installs requirements.txt into it: already satisfied)."""
    files = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
                           cwd=ROOT, capture_output=True, check=True).stdout
    for name in filter(None, files.decode().split("\0")):
        if os.path.islink(os.path.join(ROOT, name)):
            continue  # a .venv link of a worktree, say: not part of a clone
        target = path / name
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(os.path.join(ROOT, name), target)
    os.symlink(os.path.join(ROOT, ".venv"), path / ".venv")
    return path


class RunSh(Gunicorn):
    """`./run.sh` in `copy`, with the environment the README's command gives it (run.sh execs
    gunicorn, so stopping it stops gunicorn's master)."""

    def __init__(self, copy, fake, log_path):
        self.copy, self.log_path, self.proc = copy, log_path, None
        self.env = {"PATH": os.environ["PATH"], "HOME": os.environ.get("HOME", "/root"),
                    "OPENROUTER_API_KEY": fake.api_key, "OPENROUTER_BASE_URL": fake.base_url}

    def start(self, timeout=120):
        with socket.socket() as probe:
            if probe.connect_ex(("127.0.0.1", PORT)) == 0:
                pytest.fail(f"port {PORT} is in use: the README's command needs it free")
        self.log = open(self.log_path, "ab")
        before = len(self.output())
        self.proc = subprocess.Popen(["./run.sh"], cwd=self.copy, env=self.env, stdout=self.log,
                                     stderr=subprocess.STDOUT)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            assert self.proc.poll() is None, self.output()
            try:
                # Both workers up: run.sh's "Chat ready" line is logged once per worker.
                ready = self.output()[before:].count("Chat ready") >= 2
                if ready and requests.get(URL + "/healthz", timeout=1).ok:
                    return self
            except requests.RequestException:
                pass
            time.sleep(0.2)
        raise AssertionError(f"./run.sh did not serve in {timeout} s: {self.output()}")


def fresh_browser():
    browser = Browser()
    browser.headers["Connection"] = "close"  # each request on its own connection, to any worker
    return browser


@pytest.fixture
def run_sh(fake, tmp_path):
    copy = fresh_copy(tmp_path / "chat")
    server = RunSh(copy, fake, tmp_path / "run.log")
    yield server
    server.stop()


def test_the_readme_command_answers_every_fresh_browser_and_keeps_pages_across_a_restart(run_sh, fake):
    run_sh.start()

    # Many new browsers' very first sends (JS-off and streamed), each page and send on any worker.
    for n in range(BROWSERS):
        browser = fresh_browser()
        if n % 2:
            sent = browser.post(URL + "/c/new", data={"message": f"hello {n}"}, timeout=30)
            assert sent.status_code == 200 and sent.history[0].status_code == 303, sent.text
            assert messages(sent.text)[-1] == ("assistant", f"Reply 1: hello {n}")
            opened = (browser, sent.url)  # a page of a conversation, open in this browser
        else:
            stream = browser.post(URL + "/c/new/turns", data={"message": f"hello {n}"}, stream=True,
                                  headers={"Accept": "text/event-stream"}, timeout=30)
            assert stream.status_code == 200, stream.text
            done, _ = until("done", events(stream))
            assert f"Reply 1: hello {n}" in done["html"]

    # A new browser's Stop, from a page of its own, while its reply is written.
    fake.queue(reply("a long answer that will be stopped", delay=20, keepalive_every=0.5))
    browser = fresh_browser()
    stream = events(browser.post(URL + "/c/new/turns", data={"message": "stop me"}, stream=True,
                                 headers={"Accept": "text/event-stream"}, timeout=30))
    started, _ = until("started", stream)
    stopped = browser.post(URL + started["url"] + "/stop", data={"turn": started["turn"]},
                           headers={"Accept": "application/json"}, timeout=30)
    assert stopped.status_code == 200 and stopped.json() == {"stopped": True}, stopped.text
    done, _ = until("done", stream)
    assert done["stopped"]

    # A page loaded before a restart still sends after it (same key, same store).
    browser, conversation = opened
    browser.tokens.clear()
    assert browser.token(conversation)  # the page's form, loaded now
    run_sh.stop()
    run_sh.start()
    sent = browser.post(conversation, data={"message": "after the restart"}, timeout=30)
    assert sent.status_code == 200, sent.text
    assert messages(sent.text)[-2:] == [("user", "after the restart"),
                                        ("assistant", "Reply 2: after the restart")]

    key_file = run_sh.copy / "instance" / "secret_key"
    assert stat.S_IMODE(key_file.stat().st_mode) == 0o600
    key = key_file.read_text().strip()
    output = run_sh.output()
    assert f"signing key from {key_file}" in output
    assert key not in output and fake.api_key not in output
    assert "security token" not in output and "Traceback" not in output

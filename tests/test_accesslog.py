"""The access log: one request is one line (no log injection) and turn ids are never written."""

import os
import runpy
import socket
import time
from datetime import timedelta
from types import SimpleNamespace

import pytest
from gunicorn import util
from gunicorn.config import Config
from gunicorn.glogging import SafeAtoms

from tests.serving import ROOT
from webapp.accesslog import AccessLogger, escape, mask, safe_path

FORMAT = '%(h)s "%(m)s %(U)s" %(s)s %(B)s %(M)sms'


@pytest.mark.parametrize("raw, logged", [
    ("/plain/path-1.css", "/plain/path-1.css"),
    ("/foo\nINJECTED 200", "/foo\\x0aINJECTED 200"),
    ("/a\rb\tc\x00d\x1fe\x7f", "/a\\x0db\\x09c\\x00d\\x1fe\\x7f"),
    ('/q"uote\\back', "/q\\x22uote\\x5cback"),
    ("/caf\xc3\xa9", "/caf\\xc3\\xa9"),          # UTF-8 bytes, as WSGI's latin-1 string gives them
    ("/next\xc2\x85line", "/next\\xc2\\x85line"),  # U+0085 NEL, a line break to some readers
    ("/wide\u2028", "/wide\\xe2\\x80\\xa8"),      # not from gunicorn, but escaped all the same
])
def test_escape_makes_one_printable_ascii_field(raw, logged):
    assert escape(raw) == logged
    assert logged.isascii() and logged.isprintable() and '"' not in logged


@pytest.mark.parametrize("path, logged", [
    ("/turns/abc123", "/turns/…"),
    ("/turns/abc123/", "/turns/…"),
    ("/turns/a/b/c", "/turns/…"),
    ("//turns//abc123", "//turns/…"),
    ("/turns", "/turns"),           # POST /turns starts a turn: no id in it
    ("/turns/", "/turns/"),
    ("/", "/"),
    ("/static/app.css", "/static/app.css"),
    ("/c/abc123", "/c/…"),          # a conversation's id
    ("/c/abc123/turns/xyz", "/c/…/turns/…"),
    ("/c/abc123/export.md", "/c/…/export.md"),
    ("/c/", "/c/"),
    ("/returns/abc", "/returns/abc"),  # other paths are left alone
    ("/turnsX/abc", "/turnsX/abc"),
])
def test_mask_hides_conversation_and_turn_ids(path, logged):
    assert mask(path) == logged


def test_an_id_with_control_characters_is_masked_whole():
    assert safe_path("/turns/ab\nINJECTED") == "/turns/…"
    assert safe_path(None) == ""


def fake_request(path, raw_uri, query="", headers=()):
    environ = {"REQUEST_METHOD": "GET", "RAW_URI": raw_uri, "SERVER_PROTOCOL": "HTTP/1.1",
               "PATH_INFO": path, "QUERY_STRING": query, "REMOTE_ADDR": "127.0.0.1"}
    environ.update((f"HTTP_{name.upper().replace('-', '_')}", value) for name, value in headers)
    resp = SimpleNamespace(status="200 OK", sent=12, headers=[("Content-Type", "text/html")])
    req = SimpleNamespace(headers=list(headers))
    return resp, req, environ


def line(logger, path, raw_uri, **kw):
    atoms = logger.atoms(*fake_request(path, raw_uri, **kw), timedelta(milliseconds=3))
    return atoms, FORMAT % SafeAtoms(atoms)


def test_atoms_escape_and_mask_every_place_the_path_appears():
    logger = AccessLogger(Config())
    atoms, text = line(logger, "/foo\nINJECTED 200", "/foo%0aINJECTED%20200")
    assert text == '127.0.0.1 "GET /foo\\x0aINJECTED 200" 200 12 3ms'
    atoms, text = line(logger, "/turns/abc123", "/turns/abc%31%323", query="x=1\n",
                       headers=[("User-Agent", 'evil"\r\nINJECTED')])
    assert text == '127.0.0.1 "GET /turns/…" 200 12 3ms'
    assert atoms["r"] == "GET /turns/…?x=1\\x0a HTTP/1.1"
    assert atoms["{raw_uri}e"] == atoms["{path_info}e"] == "/turns/…"
    assert atoms["a"] == atoms["{user-agent}i"] == "evil\\x22\\x0d\\x0aINJECTED"
    assert "abc" not in repr(atoms)


def test_a_request_gunicorn_failed_is_logged_from_its_raw_uri():
    logger = AccessLogger(Config())
    resp, req, environ = fake_request("", "/turns/abc%0a?x=1")
    del environ["PATH_INFO"]
    atoms = logger.atoms(resp, req, environ, timedelta(milliseconds=3))
    assert atoms["U"] == "/turns/…"
    resp, req, environ = fake_request("", "/foo%0aINJECTED")
    del environ["PATH_INFO"]
    assert logger.atoms(resp, req, environ, timedelta(0))["U"] == "/foo\\x0aINJECTED"


def test_gunicorn_conf_selects_the_logger():
    settings = runpy.run_path(os.path.join(ROOT, "gunicorn.conf.py"))
    assert settings["access_log_format"] == FORMAT
    assert util.load_class(settings["logger_class"]) is AccessLogger


# --- under a real gunicorn ------------------------------------------------------------------------

def raw_get(server, target):
    """GET exactly `target` (no client library normalising it); the status code."""
    with socket.create_connection(("127.0.0.1", server.port), timeout=10) as sock:
        sock.sendall(f"GET {target} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n".encode())
        data = b""
        while chunk := sock.recv(65536):
            data += chunk
    return int(data.split(b" ", 2)[1])


def logged(server, marker, timeout=10.0):
    """gunicorn's output once a line containing `marker` is in it (the log is written after the reply)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        output = server.output()
        if marker in output:
            return output
        time.sleep(0.05)
    raise AssertionError(f"{marker!r} never logged:\n{server.output()}")


def test_a_real_gunicorn_logs_one_line_per_request_and_no_turn_id(served):
    assert raw_get(served, "/foo%0aINJECTED%20200") == 404
    assert raw_get(served, "/turns/abc123") == 404  # no conversation in this browser
    assert raw_get(served, "/x%22%5c%0d%7f%c3%a9%00") == 404
    output = logged(served, '"GET /x\\x22\\x5c\\x0d\\x7f\\xc3\\xa9\\x00" 404')
    lines = output.splitlines()
    assert not [ln for ln in lines if ln.startswith("INJECTED")]
    assert any(ln.endswith("ms") and '"GET /foo\\x0aINJECTED 200" 404' in ln for ln in lines)
    assert any('"GET /turns/…" 404' in ln for ln in lines)
    assert "abc123" not in output
